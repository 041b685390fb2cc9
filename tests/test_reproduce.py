"""`make reproduce-coco/voc DRY_RUN=1`: the whole recipe (train -> eval -> sweep -> upper bound
-> report) on tiny datasets laid out like COCO and VOC; missing data stops with no side effect."""
import json
import os

import pytest

from iadet.data.voc import VOCDetection
from iadet.tools.dry_run_data import write_coco_layout, write_voc_layout
from iadet.tools.reproduce import main, paper_config, plan, parse_args


def test_every_planned_config_exists():
    for kind in ("coco", "voc"):
        runs = plan(parse_args([kind, "--backbones", "r50,r101 x101", "--ablations"]))
        assert runs and all(r.config.is_file() for r in runs), [str(r.config) for r in runs if not r.config.is_file()]
    assert len(plan(parse_args(["coco", "--ablations"]))) == 3 + 4
    assert paper_config("coco", "iou_aware_grad", "x101").name == "iou_aware_retinanet_x101_32x8d_fpn_1x_coco_grad.yaml"
    with pytest.raises(ValueError, match="--backbones"):
        plan(parse_args(["coco", "--backbones", "r34"]))


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_missing_dataset_exits_nonzero_with_instructions_and_writes_nothing(kind, tmp_path, capsys):
    work = tmp_path / "work"
    code = main([kind, "--root", str(tmp_path / "nothing"), "--work-dir", str(work), "--gpus", "0"])
    assert code == 1
    err = capsys.readouterr().err
    assert "not found" in err and ("cocodataset.org" in err if kind == "coco" else "host.robots.ox.ac.uk" in err)
    assert not work.exists()


def test_dry_run_layouts_read_like_the_real_datasets(tmp_path):
    from iadet.data.coco import CocoDetection

    coco = write_coco_layout(tmp_path / "coco")
    assert CocoDetection(coco / "annotations" / "instances_val2017.json", coco / "val2017").num_classes == 9
    info = json.loads((coco / "annotations" / "image_info_test-dev2017.json").read_text())
    assert "annotations" not in info and len(info["images"]) == 4
    voc = write_voc_layout(tmp_path / "VOCdevkit")
    train = VOCDetection(voc, sources=[("2007", "trainval"), ("2012", "trainval")])
    test = VOCDetection(voc, sources=[("2007", "test")], keep_difficult=True)
    assert len(train) == 8 and len(test) == 4 and train.num_classes == 20


@pytest.mark.parametrize("kind", ["coco", "voc"])
def test_dry_run_runs_the_whole_recipe(kind, tmp_path):
    work = tmp_path / "work"
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        assert main([kind, "--dry-run", "--gpus", "0", "--work-dir", str(work)]) == 0
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    for method in ("retinanet", "iou_aware", "iou_aware_grad"):
        run = work / f"{method}_r50"
        assert (run / "latest.pth").is_file() and (run / "eval" / "metrics.json").is_file()
        if method != "retinanet":
            rows = json.loads((run / "eval" / "metrics.json").read_text())["alpha_sweep"]
            assert len(rows) == 18  # 9 α x (predicted IoU, IoU_truth)
            assert (run / "plots" / "confidence_vs_iou.png").is_file()
    if kind == "coco":
        assert (work / "iou_aware_r50" / "test_dev" / "results.json").is_file()
    report = (work / "report.md").read_text()
    assert "dry run" in report and ("Table 1" in report if kind == "coco" else "Table 5" in report)
    assert "Table 6" in report and "paper" in report


def test_family_methods_are_planned_with_their_configs():
    from iadet.tools.reproduce import FAMILY

    runs = plan(parse_args(["coco", "--methods", "all"]))
    family = [r for r in runs if r.variant == "family"]
    assert [r.method for r in family] == list(FAMILY) and all(r.config.is_file() for r in family)
    assert {r.evaluates for r in family} == {None, "iou_aware_r50"}  # Soft-NMS / IoU-guided: no retraining
    assert not any(r.iou_aware for r in family if r.method in ("qfl", "vfl", "atss"))
    only = plan(parse_args(["coco", "--methods", "soft_nms"]))
    assert [r.name for r in only].count("iou_aware_r50") == 1
    with pytest.raises(ValueError, match="--methods"):
        plan(parse_args(["coco", "--methods", "gfl"]))
    with pytest.raises(ValueError, match="COCO"):
        plan(parse_args(["voc", "--methods", "qfl"]))


def _dry_run(args, work):
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        assert main(["coco", "--dry-run", "--gpus", "0", "--work-dir", str(work), *args]) == 0
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads


def _check_family(work, methods):
    for method in methods:
        run = work / f"{method}_r50"
        assert (run / "eval" / "metrics.json").is_file(), method
    report = (work / "report.md").read_text()
    assert "Beyond the paper" in report


def test_dry_run_of_an_evaluation_variant_and_a_trained_family_model(tmp_path):
    _dry_run(["--methods", "soft_nms,qfl"], tmp_path / "work")
    _check_family(tmp_path / "work", ["soft_nms", "qfl"])
    assert not (tmp_path / "work" / "soft_nms_r50" / "latest.pth").exists()  # evaluates iou_aware_r50's checkpoint


@pytest.mark.slow
def test_dry_run_of_every_family_method(tmp_path):
    from iadet.tools.reproduce import FAMILY

    _dry_run(["--methods", "all"], tmp_path / "work")
    _check_family(tmp_path / "work", list(FAMILY))
