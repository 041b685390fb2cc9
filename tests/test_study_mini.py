"""The small-scale study (issue 13): paired statistics, verdict rules, the plan, the report
generated from run summaries, and `make reproduce-mini DRY_RUN=1` end to end."""
import json
import math
import os

import pytest

from iadet.tools.pretrain_shapes import cached, make_crops, pretrain
from iadet.tools.study_mini import ARMS, learning_curve, main, parse_seeds, plan
from iadet.tools.study_report import load_summaries, metric, verdicts, write_study_report
from iadet.tools.study_stats import (paired_difference, t_cdf, t_quantile, verdict_greater,
                                     verdict_not_worse)


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (6, 2.4469),
                                          (10, 2.2281), (30, 2.0423)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_t_cdf_known_values():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-6)  # Cauchy: 1/2 + atan(1)/pi
    assert t_cdf(-1.0, 1) == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile(0.3, 4)


def test_paired_difference_by_hand():
    d = paired_difference([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764 * math.sqrt(2.5) / math.sqrt(5)
    assert d.mean == 3.0 and d.n == 5
    assert d.low == pytest.approx(3.0 - half, abs=1e-3) and d.high == pytest.approx(3.0 + half, abs=1e-3)
    one = paired_difference([0.7])
    assert one.mean == 0.7 and one.low is None and one.text() == "+0.70 (n = 1)"
    assert paired_difference([]).text() == "–"


def test_verdict_rules():
    assert verdict_greater(paired_difference([1.0, 1.2, 0.9])) == "reproduced"
    assert verdict_greater(paired_difference([-1.0, -1.2, -0.9])) == "not reproduced"
    assert verdict_greater(paired_difference([-1.0, 1.2, 0.1])) == "inconclusive"
    assert verdict_greater(paired_difference([3.0, 3.2, 2.9]), margin=2.0) == "reproduced"
    assert verdict_greater(paired_difference([1.0])) == "inconclusive"
    assert verdict_not_worse(paired_difference([-0.1, 0.1, 0.0]), 0.5) == "reproduced"
    assert verdict_not_worse(paired_difference([-2.0, -2.2, -1.9]), 0.5) == "not reproduced"
    assert verdict_not_worse(paired_difference([-0.1, -1.4, 0.3]), 0.5) == "inconclusive"


def test_plan_is_seed_major_and_paired():
    runs = plan(parse_seeds("0,1,2,3,4"), parse_seeds("0 1 2"))
    main_runs = [r for r in runs if r.arm.role == "main"]
    assert len(main_runs) == 15 and [r.name for r in runs[:4]] == [
        "retinanet_seed0", "iou_aware_seed0", "iou_aware_grad_seed0", "retinanet_seed1"]
    assert runs.index(main_runs[-1]) == 14, "every main run comes before the controls"
    assert len(runs) == 15 + 2 * 3 + 3 * 3
    assert {r.name for r in runs if r.curve} == {f"{a.name}_seed0" for a in ARMS}
    assert all(os.path.isfile(os.path.join(os.path.dirname(__file__), "..", a.config)) for a in ARMS)


def _summary(arm, seed, ap, ap50, ap80, ap90, sweep=None, regime="paper"):
    m = {"AP": ap, "AP50": ap50, "AP75": ap - 1, "AP80": ap80, "AP90": ap90}
    return {"run": f"{arm}_seed{seed}", "arm": arm, "seed": seed, "regime": regime, "role": "main", "cpu": "test CPU",
            "git_commit": "abc", "train_seconds": 60.0, "eval_seconds": 6.0, "metrics": m,
            "alpha_sweep": sweep or [], "learning_curve": [{"iteration": 10, "AP": ap - 5}, {"iteration": 20, "AP": ap}],
            "pretrained_sha256": "f" * 64}


def _sweep(ap, ap50, ap90, bonus):
    rows = []
    for alpha, shift in (("1", 0.0), ("0.5", bonus), ("0.3", 2 * bonus)):
        rows.append({"iou_source": "predicted", "alpha": alpha, "AP": ap + shift, "AP50": ap50 - shift / 2,
                     "AP75": ap, "AP80": ap, "AP90": ap90 + 3 * shift})
        rows.append({"iou_source": "truth", "alpha": alpha, "AP": ap + 10, "AP50": ap50, "AP75": ap, "AP80": ap,
                     "AP90": ap90 + 10})
    return rows


def test_report_from_hand_made_summaries(tmp_path):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for seed, noise in enumerate((0.1, -0.2, 0.05, 0.15, -0.1)):
        ra = 30.0 + 2 * noise
        rows = {"retinanet": _summary("retinanet", seed, ra, 50.0, 20.0, 5.0)}
        sweep = _sweep(ra + noise, 50.0, 5.0, 1.0)
        rows["iou_aware"] = _summary("iou_aware", seed, ra + 1.0 + noise, 49.5, 22.0 + noise, 8.0, sweep)
        rows["iou_aware_grad"] = _summary("iou_aware_grad", seed, ra + 1.0, 49.0, 23.0, 9.0 + noise, sweep)
        for arm, s in rows.items():
            (runs / f"{arm}_seed{seed}.json").write_text(json.dumps(s))
    arms = load_summaries(tmp_path / "results")
    assert sorted(arms) == ["iou_aware", "iou_aware_grad", "retinanet"] and len(arms["retinanet"]) == 5
    assert metric(arms["iou_aware"][0], "AP", "1") == pytest.approx(30.3)
    assert metric(arms["retinanet"][0], "AP", "1") == arms["retinanet"][0]["metrics"]["AP"]
    assert metric(arms["retinanet"][0], "AP", "0.5", "truth") is None
    table = {row[0]: row for row in verdicts(arms)}
    assert table["IoU-aware > RetinaNet in AP (α 0.5)"][3] == "reproduced"
    assert table["the gain sits at AP75 and above, AP50 flat or lower"][3] == "reproduced"
    assert table["† adds more at AP80/AP90"][3] == "reproduced"
    assert table["the IoU_truth upper bound lies far above"][3] == "reproduced"
    low = [v for k, v in table.items() if k.startswith("lower α")][0]
    assert low[3] == "reproduced"
    out = write_study_report(tmp_path / "results", tmp_path / "report.md", command="make reproduce-mini")
    text = out.read_text()
    assert "| IoU-aware > RetinaNet in AP (α 0.5) |" in text and "test CPU" in text
    assert (tmp_path / "images" / "report_learning_curves.png").is_file()


def test_learning_curve_keeps_the_last_evaluation_of_each_iteration(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [{"mode": "train", "iteration": 5, "loss": 1.0}, {"mode": "val", "iteration": 10, "AP": 1.0},
             {"mode": "val", "iteration": 20, "AP": 2.0}, {"mode": "val", "iteration": 10, "AP": 1.5}]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    assert [(p["iteration"], p["AP"]) for p in learning_curve(path)] == [(10, 1.5), (20, 2.0)]


def test_pretraining_writes_a_torchvision_checkpoint_and_is_cached(tmp_path):
    import torch

    import iadet
    out = tmp_path / "shapes.pth"
    record = pretrain(out, progress=False, num_train=32, num_val=16, epochs=1, batch_size=16, crop_size=32)
    state = torch.load(out, weights_only=True)
    assert "conv1.weight" in state and state["fc.weight"].shape == (9, 512)
    assert cached(out, record["settings"])["sha256"] == record["sha256"]
    mtime = out.stat().st_mtime_ns
    assert pretrain(out, progress=False, num_train=32, num_val=16, epochs=1, batch_size=16, crop_size=32) == record
    assert out.stat().st_mtime_ns == mtime, "a cached result is not recomputed"
    cfg = iadet.load_config("configs/mini/pretrained/iou_aware.yaml", [f"model.backbone.init={out}"])
    model = iadet.build_detector(cfg)  # loads like ImageNet weights
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    x, y = make_crops(4, 1, record["settings"], progress=False)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and y.max() < 9
    with pytest.raises(TypeError, match="unknown"):
        pretrain(out, colour=3)


def test_missing_pretrained_start_names_the_key_and_the_command(tmp_path):
    import iadet
    from iadet.config import ConfigError
    cfg = iadet.load_config("configs/mini/pretrained/retinanet.yaml",
                            [f"model.backbone.init={tmp_path / 'resnet18_shapes.pth'}"])
    with pytest.raises(ConfigError, match="model.backbone.init.*pretrain_shapes"):
        iadet.build_detector(cfg)


def test_dry_run_runs_the_whole_study(tmp_path, monkeypatch):
    """`make reproduce-mini DRY_RUN=1`: pretraining, every arm, evaluation, summaries, report;
    a second call redoes nothing."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    assert main(["--dry-run", "--seeds", "0 1", "--control-seeds", "0", "--work-dir", str(work)]) == 0
    summaries = sorted(p.name for p in (work / "results" / "runs").glob("*.json"))
    assert len(summaries) == 6 + 5
    report = (work / "results" / "report.md").read_text()
    assert "Dry run" in report and "## Verdicts" in report and "IoU branch, loss weight 0" in report
    s = json.loads((work / "results" / "runs" / "iou_aware_seed0.json").read_text())
    assert s["alpha_sweep"] and s["learning_curve"] and s["pretrained_sha256"]
    before = {p: p.stat().st_mtime_ns for p in (work / "results" / "runs").glob("*.json")}
    assert main(["--dry-run", "--seeds", "0 1", "--control-seeds", "0", "--work-dir", str(work)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (work / "results" / "runs").glob("*.json")}


def test_runs_from_different_pretrained_backbones_do_not_pair():
    from iadet.tools.study_report import paired
    arms = {"a": {0: _summary("a", 0, 31.0, 50, 20, 5), 1: _summary("a", 1, 32.0, 50, 20, 5)},
            "b": {0: _summary("b", 0, 30.0, 50, 20, 5), 1: _summary("b", 1, 30.0, 50, 20, 5)}}
    assert paired(arms, "a", "b", lambda s: s["metrics"]["AP"], lambda s: s["metrics"]["AP"]).values == [1.0, 2.0]
    arms["b"][1]["pretrained_sha256"] = "0" * 64  # seed 1 of arm b: made on another machine type
    assert paired(arms, "a", "b", lambda s: s["metrics"]["AP"], lambda s: s["metrics"]["AP"]).values == [1.0]


def test_a_summary_made_with_another_config_is_stale(tmp_path):
    from iadet.tools.study_mini import config_fingerprint, summary_is_current
    run = plan([0], [0])[1]
    current = config_fingerprint(run, [])
    assert current == config_fingerprint(run, []) != config_fingerprint(run, ["train.max_iters=601"])
    assert config_fingerprint(run, ["model.backbone.init=/elsewhere.pth"]) == current  # paths do not count
    assert config_fingerprint(run, ["train.final_eval=false"]) == current  # evaluation only, not training
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"config_sha256": current, "pretrained_sha256": "a" * 64}))
    assert summary_is_current(path, current, "a" * 64) and not summary_is_current(path, "0" * 64, "a" * 64)
    assert not summary_is_current(path, current, "b" * 64)  # another pretrained start (another CPU): redone
    assert not summary_is_current(tmp_path / "absent.json", current, "a" * 64)


def test_the_fingerprint_ignores_a_setting_added_later_at_its_default(tmp_path):
    import yaml

    from iadet.config import dump_config, load_config
    from iadet.tools.study_mini import REPO, settings_fingerprint
    run = plan([0], [0])[1]
    cfg = load_config(REPO / run.arm.config, ["train.seed=0"])
    dump_config(cfg, tmp_path / "config.yaml")
    tree = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del tree["model"]["test"]["nms"]  # a config written before the setting existed
    (tmp_path / "older.yaml").write_text(yaml.safe_dump(tree))
    assert settings_fingerprint(load_config(tmp_path / "older.yaml")) == settings_fingerprint(cfg)
    tree["model"]["test"]["nms"] = "soft_linear"  # the setting changed: another fingerprint
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(tree))
    assert settings_fingerprint(load_config(tmp_path / "changed.yaml")) != settings_fingerprint(cfg)


def test_an_older_summary_is_kept_when_its_run_folder_recorded_the_same_config(tmp_path):
    from iadet.config import dump_config, load_config
    from iadet.tools.study_mini import REPO, config_fingerprint, summary_is_current
    run = plan([0], [0])[1]
    folder = tmp_path / "work" / run.name
    folder.mkdir(parents=True)
    dump_config(load_config(REPO / run.arm.config, ["train.seed=0", "model.backbone.init=/a/b.pth"]),
                folder / "config.yaml")
    (folder / "metrics.jsonl").write_text(json.dumps({"mode": "train", "iteration": 900, "loss": 0.5}) + "\n")
    path = tmp_path / "results" / f"{run.name}.json"
    path.parent.mkdir()
    older = {"run": run.name, "config_sha256": "old" * 21, "pretrained_sha256": "a" * 64, "final_losses": {"loss": 0.5}}
    path.write_text(json.dumps(older))
    current = config_fingerprint(run, [])
    assert not summary_is_current(path, current, "a" * 64)  # no run folder to check it by
    assert not summary_is_current(path, current, "b" * 64, folder)  # another pretrained start
    assert not summary_is_current(path, config_fingerprint(run, ["train.max_iters=601"]), "a" * 64, folder)
    (folder / "metrics.jsonl").write_text(json.dumps({"mode": "train", "iteration": 900, "loss": 0.7}) + "\n")
    assert not summary_is_current(path, current, "a" * 64, folder)  # the folder was trained again since
    (folder / "metrics.jsonl").write_text(json.dumps({"mode": "train", "iteration": 900, "loss": 0.5}) + "\n")
    assert summary_is_current(path, current, "a" * 64, folder)
    rewritten = json.loads(path.read_text())
    assert rewritten["config_sha256"] == current and rewritten["config_sha256_before"] == "old" * 21
    assert summary_is_current(path, current, "a" * 64)  # from now on without the folder


def test_pilot_rows_compare_with_the_study_run_of_the_same_start(tmp_path):
    runs, pilots = tmp_path / "results" / "runs", tmp_path / "results" / "pilot"
    runs.mkdir(parents=True)
    pilots.mkdir()
    (runs / "retinanet_seed0.json").write_text(json.dumps(_summary("retinanet", 0, 40.0, 70.0, 30.0, 5.0)))
    pilot = {**_summary("pilot2400_retinanet", 0, 44.5, 75.0, 35.0, 6.0), "iterations": 2400}
    (pilots / "pilot2400_retinanet_seed0.json").write_text(json.dumps(pilot))
    other = {**pilot, "arm": "pilot1200_iou_aware", "pretrained_sha256": "0" * 64, "iterations": 1200}
    (pilots / "pilot1200_iou_aware_seed0.json").write_text(json.dumps(other))
    text = write_study_report(tmp_path / "results", tmp_path / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| pilot2400_retinanet"))
    assert "| 40.00 | -4.50 |" in row  # the study's 900-iteration-style run against the pilot
    row = next(line for line in text.splitlines() if line.startswith("| pilot1200_iou_aware"))
    assert "| – | – |" in row  # another pretrained start: not compared


def test_the_report_names_every_pretrained_start_with_its_record(tmp_path):
    """One pretraining record per start (another CPU type makes another); the report says which
    start the study's runs and the pilots used, with where and how long each was made."""
    from iadet.tools.study_report import write_study_report
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "pilot").mkdir()
    (results / "pretrained").mkdir()
    for seed in (0, 1):
        for arm, ap in (("retinanet", 30.0), ("iou_aware", 31.0)):
            (results / "runs" / f"{arm}_seed{seed}.json").write_text(json.dumps(_summary(arm, seed, ap, 50, 20, 5)))
    pilot = dict(_summary("pilot900_retinanet", 0, 25.0, 45, 15, 3), role="pilot", iterations=900,
                 pretrained_sha256="e" * 64)
    (results / "pilot" / "pilot900_retinanet_seed0.json").write_text(json.dumps(pilot))
    (results / "pretrained" / ("f" * 12 + ".json")).write_text(json.dumps(
        {"sha256": "f" * 64, "cpu": "CPU one", "seconds": 150.0, "val_accuracy": 0.943}))
    (results / "pretrained" / ("e" * 12 + ".json")).write_text(json.dumps(
        {"sha256": "e" * 64, "cpu": "CPU two", "seconds": 90.0, "val_accuracy": 0.9}))
    text = write_study_report(results, tmp_path / "report.md").read_text()
    assert f"study {'f' * 12} (CPU one, 2.5 min, val accuracy 0.943; 4 runs)" in text
    assert f"pilots {'e' * 12} (CPU two, 1.5 min, val accuracy 0.900; 1 run)" in text


def test_a_start_made_again_on_another_cpu_type_keeps_its_first_record(tmp_path):
    """Two CPU types that compute the same bits make the same start: its record keeps where it
    was first made and adds the other machine (once), and the report says both."""
    from iadet.tools.study_report import describe_pretrained_starts, load_pretrained_records
    from iadet.tools.study_starts import write_pretrained_record
    first = {"sha256": "f" * 64, "cpu": "CPU one", "seconds": 150.0, "val_accuracy": 0.943}
    path = write_pretrained_record(tmp_path, first)
    assert path == tmp_path / "pretrained" / ("f" * 12 + ".json") and json.loads(path.read_text()) == first
    second = dict(first, cpu="CPU two", seconds=240.0)
    for _ in range(2):
        write_pretrained_record(tmp_path, second)
    write_pretrained_record(tmp_path, dict(first, seconds=99.0))  # the first machine again: unchanged
    kept = json.loads(path.read_text())
    assert {k: v for k, v in kept.items() if k != "also_made_on"} == first
    [other] = kept["also_made_on"]  # the second machine, recorded once
    assert other["cpu"] == "CPU two" and other == {k: second[k] for k in other}  # its own record's values
    text = describe_pretrained_starts([{"pretrained_sha256": "f" * 64}], load_pretrained_records(tmp_path))
    assert text == f"{'f' * 12} (CPU one, 2.5 min, val accuracy 0.943, also made on CPU two in 4.0 min; 1 run)"


def test_seeds_from_another_pretrained_start_are_left_alone(tmp_path, monkeypatch, capsys):
    """A seed whose runs come from another CPU type's pretrained start is kept as it is (not
    redone, not overwritten); this machine works on the other seeds."""
    from iadet.tools.study_starts import foreign_seeds, own_seeds_hint, seed_starts
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    runs = work / "results" / "runs"
    runs.mkdir(parents=True)
    other = dict(_summary("retinanet", 0, 30.0, 50, 20, 5), pretrained_sha256="e" * 64, cpu="other CPU")
    (runs / "retinanet_seed0.json").write_text(json.dumps(other))
    before = (runs / "retinanet_seed0.json").read_text()
    assert seed_starts([work / "results", None])[0]["sha256"] == "e" * 64
    assert foreign_seeds([work / "results"], "e" * 64) == {}
    assert own_seeds_hint(foreign_seeds([work / "results"], "f" * 64), [0]).startswith("every asked seed")
    assert main(["--dry-run", "--arms", "retinanet", "--seeds", "0 1", "--control-seeds", "0",
                 "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "retinanet_seed0: seed 0 belongs to pretrained start eeeeeeeeeeee (made on other CPU" in out
    assert (runs / "retinanet_seed0.json").read_text() == before
    assert json.loads((runs / "retinanet_seed1.json").read_text())["pretrained_sha256"] != "e" * 64
