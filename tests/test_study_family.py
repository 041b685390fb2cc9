"""The family study (issue 16): the arms, the gap-closed measure by hand, the report from
hand-made summaries, and `make compare-mini DRY_RUN=1` end to end."""
import json

import pytest

from iadet.tools.family_report import arm_title, gap_closed, in_study_order, plot_points, write_family_report
from iadet.tools.study_family import EVAL_VARIANTS, VARIANT_BASES, arms_of, main, plan, variant_run


def test_the_arms_of_the_issue_and_atss_on_the_chosen_one():
    names = [a.name for a in arms_of("iou_aware")]
    assert names == ["retinanet", "iou_aware", "iou_aware_grad", "aligned", "aligned_grad", "centerness", "qfl", "vfl",
                     "atss_loc_iou_aware", "atss_iou_aware"]
    authors, per_anchor = arms_of("vfl")[-2:]
    assert authors.name == "atss_loc_vfl" and authors.config == "configs/mini/family/vfl.yaml"
    assert authors.opts == ("model.assigner.type=atss", "model.assigner.atss_topk_unit=location")
    # the count of the runs made before atss_topk_unit existed: same options, so the same fingerprint
    assert per_anchor.name == "atss_vfl" and per_anchor.opts == ("model.assigner.type=atss",)
    with pytest.raises(ValueError, match="--atss-with"):
        arms_of("gfl")
    with pytest.raises(ValueError, match="--arms"):
        arms_of("iou_aware", ["gfl"])
    runs = plan([0, 1], arms_of("iou_aware"))
    assert [r.seed for r in runs[:10]] == [0] * 10 and all(r.curve == (r.seed == 0) for r in runs)
    variant = variant_run(runs[1], "iou_guided_nms")
    assert variant.name == "iou_aware_iou_guided_nms_seed0" and variant.arm.opts[-1] == "model.test.alpha=1.0"
    assert set(VARIANT_BASES) == {"iou_aware", "iou_aware_grad"} and set(EVAL_VARIANTS) == {"soft_nms", "iou_guided_nms"}


def _summary(arm, seed, ap, ap1, truth, ap90=5.0, estimate="quality branch"):
    sweep = [{"iou_source": "predicted", "alpha": "1", "AP": ap1, "AP90": ap90},
             {"iou_source": "predicted", "alpha": "0.5", "AP": ap, "AP90": ap90},
             {"iou_source": "truth", "alpha": "0.5", "AP": truth, "AP90": ap90 + 10}]
    return {"run": f"{arm}_seed{seed}", "arm": arm, "seed": seed, "regime": "paper", "role": "family",
            "cpu": "test CPU", "train_seconds": 60.0, "eval_seconds": 6.0, "pretrained_sha256": "f" * 64,
            "metrics": {"AP": ap, "AP50": 70.0, "AP75": ap, "AP90": ap90, "APl": ap + 5, "num_images": 1000},
            "alpha_sweep": sweep, "calibration": {"mae": 0.1, "pearson": 0.5}, "calibration_estimate": estimate,
            "confidence_vs_iou_eval": [{"panel": "Eq. 7, predicted IoU, α=0.5", "pearson": 0.4, "spearman": 0.45}]}


def test_gap_closed_by_hand():
    # estimate 42, class score alone 40, IoU_truth 50: (42 - 40) / (50 - 40) = 0.2
    assert gap_closed(_summary("iou_aware", 0, 42.0, 40.0, 50.0)) == pytest.approx(0.2)
    assert gap_closed(_summary("qfl", 0, 42.0, 42.0, 50.0, estimate="class score")) is None
    no_truth = _summary("retinanet", 0, 40.0, 40.0, 50.0)
    no_truth["alpha_sweep"] = []
    assert gap_closed(no_truth) is None


def test_report_from_hand_made_summaries(tmp_path):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for seed, noise in enumerate((0.1, -0.2, 0.05, 0.15, -0.1)):
        for arm, ap, estimate in (("retinanet", 40.0, "class score"), ("iou_aware", 41.0, "quality branch"),
                                  ("qfl", 40.5, "class score")):
            s = _summary(arm, seed, ap + noise, 40.0 + noise, 50.0 + noise, estimate=estimate)
            (runs / f"{arm}_seed{seed}.json").write_text(json.dumps(s))
    text = write_family_report(tmp_path / "results", tmp_path / "family.md").read_text()
    assert "| IoU-aware | 5 | 41.00 | 70.00 | 41.00 | 5.00 |" in text  # means over seeds (the noise sums to 0)
    # every metric paired against RetinaNet (AP50 is 70 in every run, AP75 follows AP): exact per seed
    assert "| IoU-aware | 5 | +1.00 [+1.00, +1.00] | +0.00 [+0.00, +0.00] | +1.00 [+1.00, +1.00] | +0.00 [+0.00, " \
           "+0.00] |" in text
    assert "| RetinaNet | 5 | -1.00 [-1.00, -1.00] | +0.00 [+0.00, +0.00] | -1.00 [-1.00, -1.00] |" in text  # vs IoU-aware
    assert "| IoU-aware | quality branch | +0.10 [" in text  # gap closed (41 - 40) / (50 - 40)
    assert "| RetinaNet + QFL | class score | – (no separate estimate)" in text
    assert "Ranked by the paired AP difference against RetinaNet: IoU-aware (+1.00" in text
    assert "from one pretrained start;" in text
    assert "- It rests on 5 seeds that every arm has (0, 1, 2, 3, 4)." in text  # the protocol's 5: not provisional
    # RetinaNet and IoU-aware have published COCO counterparts (36.5 < 36.9): the same order here
    assert "of the 1 pairs of arms with published counterparts, ordered as on COCO here: RetinaNet < IoU-aware " \
           "(separated); ordered against COCO (as measured here): none." in text
    assert (tmp_path / "images" / "family_ap_vs_ap90.png").is_file()


def test_the_plot_shows_means_and_the_paired_differences_against_retinanet():
    arms = {arm: {seed: _summary(arm, seed, ap + noise, 40.0, 50.0, ap90=ap90 + 2 * noise)
                  for seed, noise in enumerate((0.1, -0.2, 0.3))}
            for arm, ap, ap90 in (("retinanet", 40.0, 5.0), ("iou_aware", 41.5, 6.0))}
    (retina, *_), (iou, ap, ap90, dap, dap90) = plot_points(in_study_order(arms))
    assert retina == "RetinaNet" and plot_points(arms)[0][3:] == (None, None)  # no difference with itself
    assert iou == "IoU-aware" and ap.mean == pytest.approx(41.5 + 0.2 / 3) and ap.low < ap.mean < ap.high
    assert ap90.mean == pytest.approx(6.0 + 0.4 / 3)
    # paired by seed, the noise cancels: exact differences with zero-width intervals
    assert (dap.mean, dap.low, dap.high) == pytest.approx((1.5, 1.5, 1.5))
    assert (dap90.mean, dap90.low, dap90.high) == pytest.approx((1.0, 1.0, 1.0))
    assert plot_points({"iou_aware": arms["iou_aware"]})[0][3:] == (None, None)  # without RetinaNet: means only


def test_a_report_of_fewer_seeds_than_the_protocol_says_so_and_a_reversed_pair_is_named(tmp_path):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for seed, noise in enumerate((0.1, -0.2)):
        for arm, ap in (("retinanet", 40.0), ("vfl", 39.0)):  # COCO has VFL above RetinaNet
            (runs / f"{arm}_seed{seed}.json").write_text(json.dumps(_summary(arm, seed, ap + noise, 40.0, 50.0)))
    text = write_family_report(tmp_path / "results", tmp_path / "family.md").read_text()
    assert "- It rests on 2 seeds that every arm has (0, 1), fewer than the 5 the protocol asks for" in text
    assert "ordered as on COCO here: none; ordered against COCO (as measured here): RetinaNet + VFL ≤ RetinaNet " \
           "(separated)." in text


def _write(tmp_path, summaries):
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for s in summaries:
        (runs / f"{s['run']}.json").write_text(json.dumps(s))
    return write_family_report(tmp_path / "results", tmp_path / "family.md").read_text()


def test_every_metric_in_its_column_variants_against_their_base_and_atss_against_its_arm(tmp_path):
    summaries = []
    for seed, noise in enumerate((0.1, -0.2, 0.3, 0.0, -0.1)):
        for arm, delta in (("retinanet", 0.0), ("iou_aware", 1.0), ("vfl", 3.0), ("iou_aware_soft_nms", 0.5),
                           ("atss_iou_aware", 0.25)):
            s = _summary(arm, seed, 40.0 + delta + noise, 40.0 + noise, 50.0 + noise, ap90=5.0 + 4 * delta,
                         estimate="class score" if arm in ("retinanet", "vfl") else "quality branch")
            s["metrics"].update(AP50=70.0 + 2 * delta, AP75=45.0 + 3 * delta)  # each metric its own difference
            if arm == "vfl":
                s["confidence_vs_iou_eval"] = [{"panel": "classification score p", "pearson": 0.6, "spearman": 0.3}]
            summaries.append(s)
    text = _write(tmp_path, summaries)
    assert "## Paired differences against RetinaNet (per seed, mean with its 95 % t interval)\n\n" \
           "| arm | paired seeds | ΔAP | ΔAP50 | ΔAP75 | ΔAP90 |" in text
    assert "| IoU-aware | 5 | +1.00 [+1.00, +1.00] | +2.00 [+2.00, +2.00] | +3.00 [+3.00, +3.00] | +4.00 [" in text
    assert "| RetinaNet + VFL | 5 | +2.00 [+2.00, +2.00] | +4.00 [" in text.split("against IoU-aware")[1]
    # the variant against the checkpoint it re-evaluates, not against RetinaNet
    assert "| IoU-aware with Soft-NMS (Gaussian) − IoU-aware | 5 | -0.50 [-0.50, -0.50] | -1.00 [" in text
    assert "(same checkpoint, ΔAP): IoU-aware with Soft-NMS (Gaussian) − IoU-aware (-0.50 [-0.50, -0.50])." in text
    gap_table = text.split("## How much of the IoU_truth gap")[1].split("##")[0]
    assert "Soft-NMS" not in gap_table  # a variant's network is its base's: not an estimator of its own
    # QFL / VFL: Fig. 4 of their confidence, the class score
    assert "| RetinaNet + VFL | class score | – (no separate estimate) | – | 0.10 | 0.50 | 0.60 | 0.30 | 0.60 |" in text
    assert "- IoU-aware + ATSS (k in anchors) (`--atss-with iou_aware`) against IoU-aware: -0.75 [-0.75, -0.75] AP " \
           "(separated), -3.00 [-3.00, -3.00] AP90, -0.75 [-0.75, -0.75] APl; the share of the IoU_truth gap its " \
           "estimate closes, " in text
    assert "The best arm here is RetinaNet + VFL; ATSS, counted in locations, has not been trained on it." in text
    assert "- At AP90 (the high-IoU end the paper aims at), above RetinaNet with the whole interval: RetinaNet + VFL " \
           "(+12.00 [+12.00, +12.00]); IoU-aware (+4.00" in text


def test_the_reading_says_whether_atss_is_on_the_best_arm(tmp_path):
    arms = (("retinanet", 40.0), ("vfl", 43.0), ("atss_loc_vfl", 44.0), ("atss_vfl", 42.5), ("iou_aware", 41.0),
            ("atss_iou_aware", 40.5))
    text = _write(tmp_path, [_summary(arm, seed, ap + 0.1 * seed, 40.0, 50.0,
                                      estimate="class score" if arm.endswith("vfl") else "quality branch")
                             for arm, ap in arms for seed in range(2)])
    # VFL ranks by its class score: no separate estimate, so no gap closed to pair
    assert "- RetinaNet + VFL + ATSS (`--atss-with vfl`) against RetinaNet + VFL: +1.00 [+1.00, +1.00] AP (separated)" \
           ", +0.00 [+0.00, +0.00] AP90, +1.00 [+1.00, +1.00] APl.\n" in text
    # gap closed (40.5 - 40) / 10 against (41 - 40) / 10 per seed (the seed's 0.1 cancels): -0.05
    assert "- IoU-aware + ATSS (k in anchors) (`--atss-with iou_aware`) against IoU-aware: -0.50 [-0.50, -0.50] AP " \
           "(separated), +0.00 [+0.00, +0.00] AP90, -0.50 [-0.50, -0.50] APl; the share of the IoU_truth gap its estimate closes, " \
           "-0.05 [-0.05, -0.05] (separated)." in text
    assert "- On RetinaNet + VFL, ATSS's 9 candidates per level counted in locations (the ATSS authors) rather than " \
           "in anchors (mmdetection; one location on 9 anchors): +1.50 [+1.50, +1.50] AP (separated)." in text
    assert "On IoU-aware, ATSS's" not in text  # one count only: nothing to pair
    assert "has not been trained on it" not in text  # VFL is the best arm without ATSS, and has it
    for seed in range(2):
        (tmp_path / "results" / "runs" / f"atss_loc_vfl_seed{seed}.json").unlink()
    text = write_family_report(tmp_path / "results", tmp_path / "family.md").read_text()
    assert "The best arm here is RetinaNet + VFL; ATSS, counted in locations, has not been trained on it." in text


def test_the_reading_pairs_the_top_arm_directly_with_the_arms_it_overlaps(tmp_path):
    # against RetinaNet: VFL +3 [+2.49, +3.51], QFL +2.8 [+2.27, +3.33] overlap; IoU-aware +1 [+1, +1] does not.
    # VFL − QFL per seed: 0.1, 0.1, -0.1, -0.1, 0: +0.20, sd 0.1, half-width 2.776 * 0.1 / sqrt(5) = 0.12
    vfl, qfl = (0.5, -0.5, 0.3, -0.3, 0.0), (0.4, -0.6, 0.4, -0.2, 0.0)
    summaries = [_summary(arm, seed, ap, 40.0, 50.0) for seed in range(5)
                 for arm, ap in (("retinanet", 40.0), ("vfl", 43.0 + vfl[seed]), ("qfl", 42.8 + qfl[seed]),
                                 ("iou_aware", 41.0), ("iou_aware_soft_nms", 42.9 + qfl[seed]))]
    text = _write(tmp_path, summaries)
    line = next(l for l in text.splitlines() if l.startswith("- The top arm"))
    assert line == ("- The top arm, RetinaNet + VFL, paired directly with each arm whose interval against RetinaNet "
                    "overlaps its own (ΔAP): − RetinaNet + QFL +0.20 [+0.08, +0.32] (separated).")  # no variant
    far = [_summary(arm, seed, ap, 40.0, 50.0) for seed in range(2) for arm, ap in (("retinanet", 40.0), ("vfl", 43.0),
                                                                                    ("iou_aware", 41.0))]
    assert "- The top arm, RetinaNet + VFL: its interval against RetinaNet overlaps no other trained arm's." \
        in _write(tmp_path / "far", far)


def test_the_reading_counts_the_seeds_every_arm_shares_from_one_start(tmp_path):
    summaries = [_summary("retinanet", seed, 40.0, 40.0, 50.0) for seed in range(5)]
    summaries += [_summary("iou_aware", seed, 41.0, 40.0, 50.0) for seed in range(1, 6)]
    summaries[2]["pretrained_sha256"] = "e" * 64  # RetinaNet seed 2 from another start: not paired
    text = _write(tmp_path, summaries)
    assert "- It rests on 3 seeds that every arm has (1, 3, 4), fewer than the 5 the protocol asks for" in text
    assert "| IoU-aware | 3 | +1.00 [+1.00, +1.00] |" in text


def test_the_reading_names_the_arms_short_of_the_protocols_seeds(tmp_path):
    summaries = [_summary(arm, seed, 40.0, 40.0, 50.0) for arm in ("retinanet", "iou_aware") for seed in range(6)]
    summaries += [_summary("atss_loc_iou_aware", seed, 42.0, 40.0, 50.0) for seed in (0, 3)]
    text = _write(tmp_path, summaries)
    assert "- It rests on 6 seeds that every arm with 5 or more has (0, 1, 2, 3, 4, 5); still short of them, " \
           "provisional and with wide intervals: IoU-aware + ATSS (n = 2); each difference against RetinaNet " \
           "pairs on 2–6 seeds." in text


def test_a_report_without_retinanet_has_no_table_against_it(tmp_path):
    text = _write(tmp_path, [_summary("iou_aware", seed, 41.0, 40.0, 50.0) for seed in range(2)])
    assert "against RetinaNet (per seed" not in text and "against IoU-aware (per seed" not in text
    assert "Ranked by the paired AP difference against RetinaNet: no paired run yet." in text
    assert "| IoU-aware | 2 | 41.00 |" in text


def test_arm_titles():
    assert arm_title("qfl") == "RetinaNet + QFL" and arm_title("aligned_grad") == "aligned IoU-aware †"
    assert arm_title("atss_loc_iou_aware") == "IoU-aware + ATSS"
    assert arm_title("atss_iou_aware") == "IoU-aware + ATSS (k in anchors)"
    assert arm_title("atss_loc_aligned_grad") == "aligned IoU-aware † + ATSS"
    assert arm_title("iou_aware_grad_soft_nms") == "IoU-aware † with Soft-NMS (Gaussian)"
    assert arm_title("iou_aware_iou_guided_nms") == "IoU-aware with IoU-guided NMS"
    assert arm_title("something_new") == "something_new"


def test_arms_are_reported_in_the_order_the_study_defines_them():
    keys = ["vfl", "iou_aware_grad_soft_nms", "aligned", "zz_unknown", "atss_iou_aware", "retinanet", "atss_loc_vfl",
            "iou_aware_soft_nms", "iou_aware", "iou_aware_grad_iou_guided_nms", "iou_aware_grad"]
    assert list(in_study_order({k: {} for k in keys})) == [
        "retinanet", "iou_aware", "iou_aware_grad", "aligned", "vfl", "atss_loc_vfl", "atss_iou_aware",
        "iou_aware_soft_nms",
        "iou_aware_grad_soft_nms", "iou_aware_grad_iou_guided_nms", "zz_unknown"]


def test_seeds_of_two_starts_pool_and_the_report_says_which_made_which(tmp_path):
    """Seeds 0, 1 from one start and machine, seed 2 from another: every difference pairs within
    a seed (exact here), the seeds pool, and the report names each seed's start and machine.
    Each session's command is kept in the header."""
    runs = tmp_path / "results" / "runs"
    runs.mkdir(parents=True)
    for seed, sha, cpu in ((0, "f", "CPU one"), (1, "f", "CPU one"), (2, "e", "CPU two")):
        for arm, ap in (("retinanet", 40.0), ("vfl", 42.0)):
            s = dict(_summary(arm, seed, ap + seed, 40.0 + seed, 50.0), pretrained_sha256=sha * 64, cpu=cpu)
            (runs / f"{arm}_seed{seed}.json").write_text(json.dumps(s))
    out = tmp_path / "family.md"
    write_family_report(tmp_path / "results", out, command="cmd one")
    text = write_family_report(tmp_path / "results", out, command="cmd two").read_text()
    assert "- commands: `cmd one`; `cmd two`" in text
    assert f"0, 1 ({'f' * 12}, CPU one); 2 ({'e' * 12}, CPU two)" in text
    assert "| RetinaNet + VFL | 3 |" in text and "+2.00 [+2.00, +2.00]" in text
    assert "from 2 pretrained starts (every difference pairs within a seed" in text
    assert f"| RetinaNet + VFL | 2 | 44.00 | 70.00 | 44.00 | 5.00 | 42.00 |  | {'e' * 12} | CPU two |" in text
    assert write_family_report(tmp_path / "results", out).read_text().count("`cmd one`") == 1  # bare regeneration


def test_dry_run_runs_the_whole_family_study(tmp_path, monkeypatch):
    """`make compare-mini DRY_RUN=1`: every arm, the evaluation-time variants, the report; a
    second call redoes nothing."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    assert main(["--dry-run", "--seeds", "0", "--work-dir", str(work)]) == 0
    names = sorted(p.stem for p in (work / "results" / "runs").glob("*.json"))
    assert len(names) == 10 + 4 and "iou_aware_grad_soft_nms_seed0" in names and "atss_iou_aware_seed0" in names
    assert "atss_loc_iou_aware_seed0" in names
    authors = json.loads((work / "results" / "runs" / "atss_loc_iou_aware_seed0.json").read_text())
    assert "model.assigner.atss_topk_unit=location" in authors["opts"]
    variant = json.loads((work / "results" / "runs" / "iou_aware_iou_guided_nms_seed0.json").read_text())
    assert variant["evaluates"] == "iou_aware_seed0" and variant["learning_curve"] == []  # evaluated, not trained
    assert "model.test.nms=iou_guided" in variant["opts"]
    report = (work / "results" / "report.md").read_text()
    assert "Dry run" in report and "IoU_truth gap" in report and "Reading" in report
    before = {p: p.stat().st_mtime_ns for p in (work / "results" / "runs").glob("*.json")}
    assert main(["--dry-run", "--seeds", "0", "--work-dir", str(work)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in (work / "results" / "runs").glob("*.json")}


def test_runs_shared_with_the_study_of_the_paper_claim_are_taken_over(tmp_path, monkeypatch):
    """RetinaNet and IoU-aware are the same runs in both studies (same config and pretrained
    start): their summaries are copied and the variants evaluate that study's checkpoints."""
    from iadet.tools import study_mini
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mini, family = tmp_path / "mini", tmp_path / "family"
    assert study_mini.main(["--dry-run", "--seeds", "0", "--control-seeds", "", "--arms", "retinanet,iou_aware",
                            "--work-dir", str(mini)]) == 0
    args = ["--dry-run", "--seeds", "0", "--arms", "retinanet,iou_aware,centerness", "--work-dir", str(family),
            "--reuse", str(mini / "results"), "--reuse-work", str(mini)]
    assert main(args) == 0
    runs = family / "results" / "runs"
    for name in ("retinanet_seed0", "iou_aware_seed0"):
        taken = json.loads((runs / f"{name}.json").read_text())
        assert taken["taken_over_from"] == str(mini / "results" / "runs" / f"{name}.json")
        assert taken["metrics"] == json.loads((mini / "results" / "runs" / f"{name}.json").read_text())["metrics"]
        assert not (family / name / "latest.pth").exists()  # not trained again
    assert "taken_over_from" not in json.loads((runs / "centerness_seed0.json").read_text())
    assert (runs / "iou_aware_soft_nms_seed0.json").is_file() and (family / "iou_aware_seed0" / "eval_soft_nms").is_dir()
    # without the other study's checkpoint a variant trains the run again (same model on one CPU type)
    (runs / "iou_aware_soft_nms_seed0.json").unlink()
    assert main(args[:-2] + ["--reuse-work", str(tmp_path / "absent")]) == 0
    assert (family / "iou_aware_seed0" / "latest.pth").is_file() and (runs / "iou_aware_soft_nms_seed0.json").is_file()


def test_seeds_of_another_pretrained_start_are_left_alone(tmp_path, monkeypatch, capsys):
    """A seed whose runs in the study of the paper's claim come from another CPU type's start
    is neither taken over nor trained here: its partners would not pair."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    mini = tmp_path / "mini" / "runs"
    mini.mkdir(parents=True)
    (mini / "retinanet_seed0.json").write_text(json.dumps(
        {"run": "retinanet_seed0", "arm": "retinanet", "seed": 0, "cpu": "other CPU", "pretrained_sha256": "e" * 64}))
    work = tmp_path / "family"
    assert main(["--dry-run", "--seeds", "0", "--arms", "retinanet,centerness", "--work-dir", str(work),
                 "--reuse", str(tmp_path / "mini"), "--reuse-work", str(tmp_path / "none")]) == 0
    out = capsys.readouterr().out
    assert "every asked seed belongs to another pretrained start" in out
    assert "centerness_seed0: seed 0 belongs to pretrained start eeeeeeeeeeee (made on other CPU" in out
    assert not list((work / "results" / "runs").glob("*.json"))
