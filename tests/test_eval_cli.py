"""`python -m iadet.eval`: model evaluation with α sweep, upper bound and plots; offline
evaluation of a results file; test-dev; clear errors."""
import json

import pytest

from iadet.eval import main

from tests.conftest import COCO128, CONFIGS
from tests.engine.test_train import tiny_opts

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_eval(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A random-weight tiny model evaluated with a 2-α sweep, both IoU sources and plots."""
    tmp = tmp_path_factory.mktemp("eval")
    opts = tiny_opts(tmp / "cache") + ["model.test.score_thr=0.0"]
    report = run_eval("--config", CONFIGS / "quickstart.yaml", "--out", tmp / "out", "--alphas", "1.0,0.5",
                      "--iou-source", "both", "--plots", tmp / "plots", "--no-progress", "--opts", *opts)
    return tmp, opts, report


def test_model_evaluation_writes_results_metrics_sweep_and_plots(swept, capsys):
    tmp, _, report = swept
    out = tmp / "out"
    results = json.loads((out / "results.json").read_text())
    assert results and set(results[0]) == {"image_id", "category_id", "bbox", "score"}  # submission format
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90", "AR100", "per_class"):
        assert key in metrics, key
    assert metrics["alpha"] == "0.5" and metrics["num_detections"] == len(results)
    rows = metrics["alpha_sweep"]
    assert [(r["iou_source"], r["alpha"]) for r in rows] == [
        ("predicted", "1"), ("predicted", "0.5"), ("truth", "1"), ("truth", "0.5")]
    # the reported metrics are those of the primary α: its sweep row (other back-end) agrees
    assert rows[1]["AP"] == pytest.approx(metrics["AP"], abs=0.01)
    # α = 1 uses p alone: predicted IoU or IoU_truth, the same detections
    assert {k: v for k, v in rows[0].items() if k != "iou_source"} == \
        {k: v for k, v in rows[2].items() if k != "iou_source"}
    sweep_md = (out / "alpha_sweep.md").read_text()
    assert "| α | AP | AP50 | AP75 | APs | APm | APl | AP60 | AP70 | AP80 | AP90 |" in sweep_md
    assert "IoU_truth" in sweep_md
    assert len(json.loads((out / "alpha_sweep.json").read_text())) == 4
    panels = metrics["analysis"]["confidence_vs_iou_eval"]
    assert len(panels) == 3 and all({"pearson", "spearman", "n"} <= set(p) for p in panels)
    assert metrics["analysis"]["calibration_estimate"] == "quality branch"
    for name in ("confidence_vs_iou.png", "iou_calibration.png", "alpha_sweep_predicted.png", "alpha_sweep_truth.png"):
        assert (tmp / "plots" / name).read_bytes()[:8] == PNG_MAGIC, name


def test_a_model_without_quality_branch_has_its_class_score_calibrated(tmp_path):
    """QFL / VFL (and RetinaNet) have no separate estimate: the class score is calibrated."""
    opts = tiny_opts(tmp_path / "cache") + ["model.test.score_thr=0.0", "model.head.iou_branch=false",
                                            "model.loss.cls_loss=qfl"]
    report = run_eval("--config", CONFIGS / "quickstart.yaml", "--out", tmp_path / "out", "--iou-source", "both",
                      "--alphas", "1.0,0.0", "--plots", tmp_path / "plots", "--no-progress", "--opts", *opts)
    assert report["analysis"]["calibration_estimate"] == "class score"
    assert report["analysis"]["calibration"]["n"] >= 0
    assert (tmp_path / "plots" / "cls_score_calibration.png").read_bytes()[:8] == PNG_MAGIC
    # IoU_truth in place of the estimate: at α 0 the score is IoU_truth alone, the upper bound
    truth0 = [r for r in report["alpha_sweep"] if r["iou_source"] == "truth" and r["alpha"] == "0"]
    assert truth0 and truth0[0]["AP"] >= 0


def test_offline_evaluation_of_the_written_results_gives_the_same_metrics(swept, tmp_path):
    tmp, _, report = swept
    gt = next((tmp / "cache").glob("synthetic_coco-*")) / "annotations" / "instances_val.json"
    for backend in ("pycocotools", "fast"):
        metrics = run_eval("--ann", gt, "--results", tmp / "out" / "results.json", "--backend", backend,
                           "--json-out", tmp_path / f"{backend}.json")
        assert json.loads((tmp_path / f"{backend}.json").read_text())["AP"] == metrics["AP"]
        assert metrics["AP"] == pytest.approx(report["AP"], abs=0.01)
        assert metrics["AP90"] == pytest.approx(report["AP90"], abs=0.01)


def test_clear_errors(swept, tmp_path, capsys):
    tmp, opts, _ = swept
    gt = next((tmp / "cache").glob("synthetic_coco-*")) / "annotations" / "instances_val.json"
    with pytest.raises(SystemExit) as exit_info:
        run_eval("--ann", gt, "--results", tmp_path / "missing.json")
    assert exit_info.value.code == 2 and "missing.json" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(SystemExit):
        run_eval("--ann", gt, "--results", tmp_path / "bad.json")
    assert "JSON list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_eval("--ann", gt)  # --results missing: argparse error
    with pytest.raises(SystemExit):
        run_eval("--config", CONFIGS / "quickstart.yaml", "--split", "test", "--opts", *opts)
    assert "data.test.ann_file" in capsys.readouterr().err  # the synthetic base config has no test split
    with pytest.raises(SystemExit):
        run_eval("--config", CONFIGS / "quickstart.yaml", "--alphas", "0.5,2", "--opts", *opts)
    assert "outside [0, 1]" in capsys.readouterr().err


def test_test_dev_split_writes_results_only(tmp_path, capsys):
    ann = COCO128 / "annotations" / "instances_val2017.json"
    if not ann.is_file():
        pytest.skip(f"COCO128 sample not found at {COCO128}")
    full = json.loads(ann.read_text())
    info = {"images": full["images"][:2], "categories": full["categories"]}  # like image_info_test-dev2017.json
    (tmp_path / "test_dev.json").write_text(json.dumps(info))
    opts = ["data.test.type=coco", f"data.test.ann_file={tmp_path / 'test_dev.json'}",
            f"data.test.image_dir={COCO128 / 'val2017'}", "model.num_classes=80", "data.num_workers=0",
            "input.min_size=128", "input.max_size=128", "model.test.score_thr=0.0"]
    report = run_eval("--config", CONFIGS / "quickstart.yaml", "--split", "test", "--out", tmp_path / "out",
                      "--no-progress", "--opts", *opts)
    assert report == {}
    assert "no annotations" in capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {r["image_id"] for r in results} <= {im["id"] for im in info["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in full["categories"]}
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_voc_split_reports_coco_style_and_classic_voc_metrics(tmp_path, capsys):
    from tests.data.test_voc import VAL_DIR, write_voc_tree

    if not VAL_DIR.is_dir():
        pytest.skip(f"COCO128 sample not found at {VAL_DIR}")
    write_voc_tree(tmp_path / "VOCdevkit")
    opts = ["data.val.type=voc", f"data.val.voc_root={tmp_path / 'VOCdevkit'}", "data.val.voc_sources=[2007/trainval]",
            "model.num_classes=20", "data.num_workers=0", "input.min_size=128", "input.max_size=128",
            "model.test.score_thr=0.0"]
    report = run_eval("--config", CONFIGS / "quickstart.yaml", "--out", tmp_path / "out", "--no-progress",
                      "--opts", *opts)
    assert report["num_images"] == 3 and "AP90" in report
    for name in ("voc07_11point", "voc_area"):
        assert set(report[name]) >= {"mAP", "per_class"}
        assert 0.0 <= report[name]["mAP"] <= 100.0
    assert "VOC mAP@0.5" in capsys.readouterr().out
