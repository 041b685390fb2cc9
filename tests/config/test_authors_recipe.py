"""The authors' recipe where the paper is silent (configs/README.md): the keys
``model.test.candidates``, ``data.voc_difficult``, ``data.filter_empty`` and the VOC schedule,
their values in the paper configs and elsewhere, their validation, and the VOC behaviours."""
from pathlib import Path

import pytest
import torch
from PIL import Image

import iadet
from iadet.builder import build_criterion, build_dataset, build_postprocessor
from iadet.config import ConfigError, DataConfig, TestConfig
from iadet.data.voc import VOCDetection
from iadet.models.assigner import IGNORED, NEGATIVE
from iadet.models.box_coder import DeltaBoxCoder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LEAVES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml")
                if "_base_" not in p.relative_to(CONFIGS).parts)
PAPER = [c for c in LEAVES if "/" not in c and c != "quickstart.yaml"]
FAMILY = [c for c in LEAVES if c.startswith("family/")]  # COCO configs on the paper's recipe (issue 15)
OTHERS = [c for c in LEAVES if c not in PAPER and c not in FAMILY]  # quickstart.yaml, mini/*, compat/*


def test_leaves_split():
    assert len(PAPER) >= 25 and "quickstart.yaml" in OTHERS
    assert any(c.startswith("mini/") for c in OTHERS) and any(c.startswith("compat/") for c in OTHERS)


@pytest.mark.parametrize("name", PAPER + FAMILY)
def test_paper_configs_follow_the_authors(name):
    cfg = iadet.load_config(CONFIGS / name)
    assert cfg.model.test.candidates == "anchors"
    assert build_postprocessor(cfg, DeltaBoxCoder()).candidates == "anchors"
    assert (cfg.model.test.topk_per_level, cfg.model.test.score_thr) == (1000, 0.05)
    assert cfg.data.filter_empty is True
    assert (cfg.train.epochs, cfg.train.lr_steps) == (12, [8, 11])
    if "voc0712" in name:
        assert cfg.data.voc_difficult == "negative"
        # the authors' VOC configs: 6 images x 2 GPUs for R50 and R101 (no X101 VOC config)
        assert cfg.train.batch_size == (2 if "x101" in name else 6)
    header = (CONFIGS / name).read_text()
    assert "epoch 9" not in header and "MMDetection's VOC schedule" not in header


@pytest.mark.parametrize("name", OTHERS)
def test_quickstart_mini_and_compat_keep_todays_behaviour(name):
    cfg = iadet.load_config(CONFIGS / name)
    assert cfg.model.test.candidates == "pairs"
    assert cfg.data.filter_empty is False and cfg.data.voc_difficult == "ignore"


def test_voc_schedule_base():
    text = (CONFIGS / "_base_" / "schedules" / "schedule_voc0712.yaml").read_text()
    assert "lr_steps: [8, 11]" in text and "authors" in text


def test_defaults_are_unchanged():
    cfg = iadet.load_config(None)
    assert cfg.model.test.candidates == "pairs"
    assert cfg.data.voc_difficult == "ignore" and cfg.data.filter_empty is False


@pytest.mark.parametrize("opt, key", [("model.test.candidates=boxes", "model.test.candidates"),
                                      ("data.voc_difficult=drop", "data.voc_difficult")])
def test_bad_values_name_the_key(opt, key):
    with pytest.raises(ConfigError) as err:
        iadet.load_config(CONFIGS / "quickstart.yaml", [opt])
    assert err.value.key == key and key in str(err.value)


def test_dataclasses_check_the_values_too():
    with pytest.raises(ConfigError, match="candidates"):
        TestConfig(candidates="boxes")
    with pytest.raises(ConfigError, match="voc_difficult"):
        DataConfig(voc_difficult="drop")


# A tiny VOCdevkit: 2007 trainval with (a) one normal and one difficult object, (b) only a
# difficult object, (c) no object; 2007 test with one normal and one difficult object.
NORMAL, DIFFICULT = (5, 5, 30, 40), (40, 10, 60, 44)


def _obj(box, difficult):
    x1, y1, x2, y2 = box
    return (f"<object><name>dog</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x1 + 1}</xmin>"
            f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")


@pytest.fixture()
def voc_root(tmp_path):
    root = tmp_path / "VOCdevkit"
    base = root / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (base / sub).mkdir(parents=True)
    images = {"trainval": {"a": [(NORMAL, False), (DIFFICULT, True)], "b": [(DIFFICULT, True)], "c": []},
              "test": {"t": [(NORMAL, False), (DIFFICULT, True)]}}
    for split, ids in images.items():
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for voc_id, objs in ids.items():
            Image.new("RGB", (64, 48), (90, 120, 150)).save(base / "JPEGImages" / f"{voc_id}.jpg")
            xml = ("<annotation><size><width>64</width><height>48</height><depth>3</depth></size>"
                   + "".join(_obj(*o) for o in objs) + "</annotation>")
            (base / "Annotations" / f"{voc_id}.xml").write_text(xml)
    return root


def _counts(ds):
    return [(len(r.boxes), len(r.ignore_boxes)) for r in ds.records]


def test_voc_difficult_ignore_or_negative(voc_root):
    src = [("2007", "trainval")]
    assert _counts(VOCDetection(voc_root, src)) == [(1, 1), (0, 1), (0, 0)]  # default: ignore regions
    assert _counts(VOCDetection(voc_root, src, train_difficult="negative")) == [(1, 0), (0, 0), (0, 0)]
    for mode in ("ignore", "negative"):  # evaluation keeps them, flagged, whatever the mode
        test = VOCDetection(voc_root, [("2007", "test")], keep_difficult=True, train_difficult=mode)
        assert test[0][1]["difficult"].tolist() == [False, True]
    with pytest.raises(ValueError, match="train_difficult"):
        VOCDetection(voc_root, src, train_difficult="drop")


@pytest.mark.parametrize("mode", ["ignore", "negative"])
def test_voc_filter_empty_leaves_out_images_without_a_box(voc_root, mode):
    ds = VOCDetection(voc_root, [("2007", "trainval")], train_difficult=mode, filter_empty=True)
    assert [voc_id for _, voc_id in ds.voc_ids] == ["a"] and ds.num_empty_left_out == 2
    coco = ds.to_coco_dict()  # stays aligned with the kept images
    assert [im["id"] for im in coco["images"]] == [0] and len(coco["annotations"]) == 2
    assert ds[0][1]["image_id"] == 0


def _cfg(voc_root, *opts):
    return iadet.load_config(CONFIGS / "retinanet_r50_fpn_voc0712.yaml",
                             [f"data.train.voc_root={voc_root}", f"data.val.voc_root={voc_root}",
                              "data.train.voc_sources=[2007/trainval]", *opts])


def test_paper_voc_config_builds_the_authors_training_set(voc_root):
    train = build_dataset(_cfg(voc_root), "train", seed=0)
    assert _counts(train) == [(1, 0)]  # difficult dropped, images without a box left out
    val = build_dataset(_cfg(voc_root), "val")  # evaluation: nothing left out, difficult flagged
    assert len(val) == 1 and val[0][1]["difficult"].tolist() == [False, True]
    todays = build_dataset(_cfg(voc_root, "data.voc_difficult=ignore", "data.filter_empty=false"), "train", seed=0)
    assert _counts(todays) == [(1, 1), (0, 1), (0, 0)]


def test_filter_empty_leaving_nothing_names_the_key(voc_root):
    (voc_root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt").write_text("b\nc\n")
    with pytest.raises(ConfigError, match="filter_empty") as err:
        build_dataset(_cfg(voc_root), "train", seed=0)
    assert err.value.key == "data.train.voc_sources"


@pytest.mark.parametrize("mode, expected", [("ignore", IGNORED), ("negative", NEGATIVE)])
def test_anchors_on_a_difficult_object(voc_root, mode, expected):
    """'ignore': an anchor on the difficult object is ignored; 'negative' (the authors'): it
    is a negative, trained towards background."""
    cfg = _cfg(voc_root, f"data.voc_difficult={mode}", "data.filter_empty=false", "data.flip_prob=0")
    ds = VOCDetection(voc_root, [("2007", "trainval")], train_difficult=mode)
    target = ds.raw_target(0)
    anchors = torch.tensor([list(map(float, DIFFICULT)), list(map(float, NORMAL))])
    criterion = build_criterion(cfg)
    ignore = [target["ignore_boxes"]]
    matched = criterion.assigner.assign(anchors, [target["boxes"]], ignore).matched_idx[0]
    assert matched.tolist() == [expected, 0]
