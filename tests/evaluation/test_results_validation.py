"""``python -m iadet.eval --ann A --results R`` on a malformed results file: one ``error:`` line
naming the file, the entry index and the key, exit code 2 (like the other CLI errors)."""
import json
import math

import pytest

from iadet.eval import main

GT = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
                 {"id": 2, "file_name": "b.jpg", "width": 100, "height": 80}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 20], "area": 600,
                       "iscrowd": 0}],
      "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
GOOD = {"image_id": 1, "category_id": 3, "bbox": [10.0, 10.0, 30.0, 20.0], "score": 0.9}


def without(key):
    return {k: v for k, v in GOOD.items() if k != key}


def with_(**changes):
    return {**GOOD, **changes}


# (case, results, needles in the error line)
CASES = [
    ("no category_id", [GOOD, without("category_id")], ["entry 1", "'category_id'"]),
    ("no bbox", [without("bbox")], ["entry 0", "'bbox'"]),
    ("no score", [GOOD, GOOD, without("score")], ["entry 2", "'score'"]),
    ("no image_id", [without("image_id")], ["entry 0", "'image_id'"]),
    ("not a list", {"annotations": [GOOD]}, ["top level", "an object", "not a list"]),
    ("entry not an object", [GOOD, [1, 2, 3, 4]], ["entry 1", "not an object"]),
    ("bbox of 3 numbers", [with_(bbox=[1, 2, 3])], ["entry 0", "bbox", "4 finite numbers"]),
    ("bbox with a string", [with_(bbox=[1, 2, "3", 4])], ["entry 0", "bbox"]),
    ("bbox not a list", [with_(bbox="10 10 30 20")], ["entry 0", "bbox"]),
    ("bbox with NaN", [with_(bbox=[1, 2, math.nan, 4])], ["entry 0", "bbox"]),
    ("negative width", [with_(bbox=[50, 20, -10, 5])], ["entry 0", "bbox", "negative width"]),
    ("NaN score", [GOOD, with_(score=math.nan)], ["entry 1", "score", "finite"]),
    ("infinite score", [with_(score=math.inf)], ["entry 0", "score"]),
    ("string score", [with_(score="0.9")], ["entry 0", "score"]),
    ("boolean score", [with_(score=True)], ["entry 0", "score"]),
    ("unknown image_id", [GOOD, with_(image_id=42)], ["entry 1", "image_id 42", "not an image"]),
    ("string image_id", [with_(image_id="1")], ["entry 0", "image_id", "integers"]),
    ("float category_id", [with_(category_id=3.0)], ["entry 0", "category_id", "integers"]),
    ("contiguous label", [with_(category_id=0)], ["entry 0", "category_id 0", "not a category", "3 to 7"]),
]


@pytest.fixture()
def gt_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(GT))
    return path


@pytest.mark.parametrize("case, results, needles", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_results_file_is_one_error_line(tmp_path, gt_file, capsys, case, results, needles):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))  # NaN / Infinity as Python's json writes them
    with pytest.raises(SystemExit) as exit_info:
        main(["--ann", str(gt_file), "--results", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_a_binary_results_file_is_named(tmp_path, gt_file, capsys):
    path = tmp_path / "results.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SystemExit) as exit_info:
        main(["--ann", str(gt_file), "--results", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"error: {path}") and err.count("\n") == 1, err


def test_a_valid_results_file_is_still_evaluated(tmp_path, gt_file, capsys):
    path = tmp_path / "results.json"
    extra = with_(category_id=7, bbox=[0, 0, 5, 5], score=0.2, image_id=2, extra_key="ignored")
    path.write_text(json.dumps([GOOD, with_(bbox=[10, 10, 0, 0], score=0), extra]))
    for backend in ("pycocotools", "fast"):
        metrics = main(["--ann", str(gt_file), "--results", str(path), "--backend", backend])
        assert metrics["AP50"] == 100.0
    path.write_text("[]")
    assert main(["--ann", str(gt_file), "--results", str(path)])["AP"] == 0.0
