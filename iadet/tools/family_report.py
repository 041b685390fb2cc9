"""The report of the family study (``docs/results_family.md``, issue 16), generated from the
run summaries that :mod:`iadet.tools.study_family` writes; never edited by hand.

    python -m iadet.tools.family_report [--results docs/results_family] [--out docs/results_family.md]

Every difference is paired by seed (same shared initial weights, data order, flips and
pretrained start), with a two-sided 95 % Student-t interval over seeds and the per-seed values.
"""
import argparse
import datetime
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from iadet.io import atomic_write_text
from iadet.tools.study_report import (_per_seed, _table, describe_pretrained_starts, load_pretrained_records,
                                     load_summaries, metric, paired)
from iadet.tools.study_stats import paired_difference

COLUMNS = ("AP", "AP50", "AP75", "AP90")
CONFIGURED_ALPHA = "0.5"
MIN_SEEDS = 5  # the protocol: at least 5 paired seeds
VARIANT_TITLES = {"soft_nms": "Soft-NMS (Gaussian)", "iou_guided_nms": "IoU-guided NMS"}


def gap_closed(summary: Dict) -> Optional[float]:
    """(AP with the estimate − AP with the class score alone) / (AP with IoU_truth − AP with the
    class score alone), at the configured α; None without a separate estimate (no IoU_truth row)."""
    est, cls = metric(summary, "AP", CONFIGURED_ALPHA), metric(summary, "AP", "1")
    truth = metric(summary, "AP", CONFIGURED_ALPHA, "truth")
    if None in (est, cls, truth) or truth == cls or summary.get("calibration_estimate") == "class score":
        return None
    return (est - cls) / (truth - cls)


def arm_title(name: str) -> str:
    """The title of an arm key (``qfl`` -> ``RetinaNet + QFL``; ``iou_aware_soft_nms`` ->
    ``IoU-aware with Soft-NMS (Gaussian)``); an unknown key is its own title."""
    from iadet.tools.study_family import ATSS_RULES, FAMILY_ARMS

    titles = {a.name: a.title for a in FAMILY_ARMS}
    base = _variant_base(name)
    if base is not None:
        return f"{arm_title(base)} with {VARIANT_TITLES[name[len(base) + 1:]]}"
    prefix, base = _atss_base(name) or (None, None)
    if base in titles:
        return titles[base] + ATSS_RULES[prefix][0]
    return titles.get(name, name)


def in_study_order(arms: Dict[str, Dict]) -> Dict[str, Dict]:
    """The arms in the order the study defines them (RetinaNet, the IoU-aware arms, the other
    estimators, ATSS, then the evaluation-time variants of each base); unknown keys last."""
    from iadet.tools.study_family import ATSS_RULES, EVAL_VARIANTS, FAMILY_ARMS, VARIANT_BASES

    order = [a.name for a in FAMILY_ARMS] + [f"{p}_{a.name}" for p in ATSS_RULES for a in FAMILY_ARMS]
    order += [f"{base}_{v}" for base in VARIANT_BASES for v in EVAL_VARIANTS]
    rank = {name: i for i, name in enumerate(order)}
    return dict(sorted(arms.items(), key=lambda kv: (rank.get(kv[0], len(order)), kv[0])))


def _seed_units(runs: List[Dict]) -> str:
    """``5 (cd3071474805, AMD EPYC (family 26, model 2)); 6, 7 (…)``: which pretrained start and
    machine made each seed's runs (a seed made on two machines of one start is named twice)."""
    units: Dict[tuple, List[int]] = {}
    for s in runs:
        key = ((s.get("pretrained_sha256") or "none")[:12], s.get("cpu", "?"))
        if int(s["seed"]) not in units.setdefault(key, []):
            units[key].append(int(s["seed"]))
    return "; ".join(f"{', '.join(map(str, sorted(seeds)))} ({sha}, {cpu})"
                     for (sha, cpu), seeds in sorted(units.items(), key=lambda kv: min(kv[1])))


def _previous_commands(out: Path) -> List[str]:
    """The commands an existing report names (kept: each session that added runs adds its own)."""
    try:
        for line in Path(out).read_text().splitlines():
            if line.startswith(("- command: `", "- commands: `")):
                return [c.strip().strip("`") for c in line.split(": ", 1)[1].split("; ")]
    except OSError:
        pass
    return []


def _mean(values: List[float]) -> Optional[float]:
    return statistics.fmean(values) if values else None


def _at(col: str) -> Callable[[Dict], Optional[float]]:
    """A summary's value of one metric (the configured score)."""
    return lambda summary: metric(summary, col)


def _atss_base(arm: str) -> Optional[Tuple[str, str]]:
    """(the ATSS rule's prefix, the arm it trains ATSS on) for an ATSS arm; None otherwise."""
    from iadet.tools.study_family import ATSS_RULES

    return next(((p, arm[len(p) + 1:]) for p in sorted(ATSS_RULES, key=len, reverse=True)
                 if arm.startswith(f"{p}_")), None)


def _variant_base(arm: str) -> Optional[str]:
    """The arm whose checkpoint an evaluation-time variant re-evaluates (None for a trained arm)."""
    return next((arm[:-len(v) - 1] for v in VARIANT_TITLES if arm.endswith(f"_{v}")), None)


def _arm_rows(arms) -> List[List]:
    """Per arm: its number of seeds and the mean of each metric over them."""
    return [[arm_title(arm), len(seeds),
             *(_mean([s["metrics"][c] for s in seeds.values() if s["metrics"].get(c) is not None]) for c in COLUMNS)]
            for arm, seeds in arms.items()]


def _difference_rows(arms, other: Optional[str]) -> List[List]:
    """Per arm: the paired difference of each metric against ``other`` with its interval, and the
    number of seeds it pairs on; ``other`` None: each evaluation-time variant against its base."""
    rows = []
    for arm in arms:
        base = other if other is not None else _variant_base(arm)
        if base is None or arm == base or base not in arms:
            continue
        diffs = [paired(arms, arm, base, _at(c), _at(c)) for c in COLUMNS]
        rows.append([arm_title(arm) if other else f"{arm_title(arm)} − {arm_title(base)}",
                     diffs[0].n, *(d.text() for d in diffs)])
    return rows


def _fig4_mean(seeds, panel: str, key: str) -> Optional[float]:
    return _mean([p[key] for s in seeds.values() for p in (s.get("confidence_vs_iou_eval") or [])
                  if p["panel"].startswith(panel) and p.get(key) is not None])


def _estimator_rows(arms) -> List[List]:
    """Per trained arm with an estimate: the gap it closes, its calibration and Fig. 4. The
    evaluation-time variants are left out: their network is their base's, and their suppression
    (IoU-guided NMS ranks by the estimate, or by IoU_truth in the bound) changes the terms."""
    rows = []
    for arm, seeds in arms.items():
        gaps = [g for g in (gap_closed(s) for s in seeds.values()) if g is not None]
        calib = [s["calibration"] for s in seeds.values() if s.get("calibration")]
        if _variant_base(arm) or (not gaps and not calib):
            continue
        estimate = next((s.get("calibration_estimate") for s in seeds.values() if s.get("calibration_estimate")),
                        "quality branch")
        d = paired_difference(gaps)
        # Fig. 4's confidence: Eq. 7 with the estimate, or the class score where it is the estimate
        confidence = "Eq. 7, predicted" if estimate != "class score" else "classification score p"
        rows.append([arm_title(arm), estimate, d.text() if gaps else "– (no separate estimate)",
                     _per_seed(d) if gaps else "–",
                     _mean([c["mae"] for c in calib if c.get("mae") is not None]),
                     _mean([c["pearson"] for c in calib if c.get("pearson") is not None]),
                     *(_fig4_mean(seeds, confidence, k) for k in ("pearson", "spearman")),
                     _fig4_mean(seeds, "classification score p", "pearson")])
    return rows


def plot_points(arms) -> List[tuple]:
    """Per arm: (title, AP, AP90, ΔAP, ΔAP90), each a :class:`PairedDifference`: AP and AP90 are the
    means over seeds with their t intervals; ΔAP and ΔAP90 are paired by seed against RetinaNet
    (None for RetinaNet itself or without it)."""
    points = []
    for arm, seeds in arms.items():
        ap = [s["metrics"]["AP"] for s in seeds.values() if s["metrics"].get("AP") is not None]
        ap90 = [s["metrics"]["AP90"] for s in seeds.values() if s["metrics"].get("AP90") is not None]
        if not (ap and ap90):
            continue
        against = arm != "retinanet" and "retinanet" in arms
        deltas = [paired(arms, arm, "retinanet", _at(c), _at(c)) if against else None for c in ("AP", "AP90")]
        points.append((arm_title(arm), paired_difference(ap), paired_difference(ap90), *deltas))
    return points


def _errorbar(ax, x, y, style):
    err = lambda d: None if d.low is None else [[d.mean - d.low], [d.high - d.mean]]  # noqa: E731
    ax.errorbar(x.mean, y.mean, xerr=err(x), yerr=err(y), capsize=3, linestyle="none", **style)


def _plot(arms, path: Path) -> Optional[Path]:
    """Two panels, one marker per arm and one legend (no labels on the points, which overlap):
    the means of AP and AP90 with their intervals, and the paired ΔAP and ΔAP90 against RetinaNet."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = plot_points(arms)
    if not points:
        return None
    fig = Figure(figsize=(12, 6.5))
    FigureCanvasAgg(fig)
    means, deltas = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    colours, markers = colormaps["tab20"].colors, "osD^v<>pPX*hd"
    for i, (title, ap, ap90, dap, dap90) in enumerate(points):
        style = dict(color=colours[(2 * i) % 20 + (i // 10) % 2], marker=markers[i % len(markers)], label=title)
        _errorbar(means, ap, ap90, style)
        if dap is not None and dap.mean is not None and dap90.mean is not None:
            _errorbar(deltas, dap, dap90, style)
    means.set(xlabel="AP (mean over seeds, 95 % t interval)", ylabel="AP90 (mean over seeds, 95 % t interval)",
              title="Means")
    deltas.axhline(0, color="0.5", linewidth=0.8)
    deltas.axvline(0, color="0.5", linewidth=0.8)
    deltas.set(xlabel="ΔAP against RetinaNet (paired by seed, 95 % t interval)",
               ylabel="ΔAP90 against RetinaNet (paired by seed, 95 % t interval)",
               title="Paired differences against RetinaNet (at 0, 0)")
    for ax in (means, deltas):
        ax.grid(alpha=0.3)
    handles, labels = means.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.02 + 0.03 * ((len(points) + 2) // 3), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def write_family_report(results: Path, out: Path, command: str = "", dry_run: bool = False) -> Path:
    from iadet.tools.family_reading import reading

    results, out = Path(results), Path(out)
    arms = in_study_order(load_summaries(results))
    runs = [s for seeds in arms.values() for s in seeds.values()]
    records = load_pretrained_records(results)
    minutes = sum(s["train_seconds"] + s["eval_seconds"] for s in runs) / 60
    images = sorted({s["metrics"].get("num_images") for s in runs if s["metrics"].get("num_images")})
    lines = ["# The quality family ranked at small scale (generated by `iadet.tools.family_report`)", ""]
    if dry_run:
        lines += ["**Dry run**: a few iterations on a tiny set; the numbers test the pipeline, not the methods.", ""]
    commands = _previous_commands(out)
    if command and command not in commands:
        commands.append(command)
    commands = commands or ["make compare-mini"]
    lines += [f"- command{'s' if len(commands) > 1 else ''}: " + "; ".join(f"`{c}`" for c in commands),
              f"- machine: {'; '.join(sorted({s['cpu'] for s in runs})) or '–'} (CPU model from /proc/cpuinfo)",
              f"- generated: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
              f"- runs: {len(runs)}; wall time: {minutes:.1f} min of training and evaluation (the runs ran one "
              "after another, over sessions: the sum of their times; pretraining apart, below); seeds per arm: "
              + "; ".join(f"{arm_title(a)}: {len(s)}" for a, s in arms.items()),
              f"- seeds, with the pretrained start and machine that made their runs (a seed's arms share a start; "
              f"differences pair within a seed, and the seeds are pooled): {_seed_units(runs) or '–'}",
              f"- validation images: {', '.join(map(str, images)) or '–'}; pretrained starts (sha256, where and how "
              f"long it was made, its held-out accuracy): {describe_pretrained_starts(runs, records)}", ""]
    lines += ["## Every arm (configured score; means over seeds)", "",
              "Each arm's mean over its own seeds; arms with other seeds are compared in the paired tables below.", "",
              *_table(["arm", "n", *(f"mean {c}" for c in COLUMNS)], _arm_rows(arms))]
    for other, heading in (("retinanet", "Paired differences against RetinaNet"),
                           ("iou_aware", "Paired differences against IoU-aware"),
                           (None, "Evaluation-time variants against their own model, same checkpoint")):
        rows = _difference_rows(arms, other)
        if rows:
            lines += [f"## {heading} (per seed, mean with its 95 % t interval)", "",
                      *_table(["arm", "paired seeds", *(f"Δ{c}" for c in COLUMNS)], rows)]
    lines += ["## How much of the IoU_truth gap each estimate closes", "",
              "Gap closed = (AP with the estimate − AP with the class score alone) / (AP with IoU_truth − AP "
              f"with the class score alone), at α {CONFIGURED_ALPHA}, per seed, then the mean with its 95 % t "
              "interval; trained arms only (a variant's network is its base's, and IoU-guided NMS would rank by "
              "IoU_truth in the bound). Calibration: mean absolute error and Pearson r of the estimate against "
              "IoU_truth (each detection's largest IoU with any ground-truth box, the paper's Table 6) on the "
              "detections after NMS with IoU_truth ≥ 0.5, at the α of the sweep's best AP; the MAE of a centerness "
              "or class-score estimate is not on the IoU scale. Fig. 4: correlation of the confidence (Eq. 7 with "
              "the estimate; the class score for QFL and VFL) with IoU_eval, and of the class score p alone.", "",
              *_table(["arm", "estimate", "gap closed [95 % CI]", "per seed", "calibration MAE", "calibration r",
                       "Fig. 4 Pearson", "Fig. 4 Spearman", "Fig. 4 Pearson, p alone"], _estimator_rows(arms))]
    plot = _plot(arms, out.parent / "images" / f"{out.stem}_ap_vs_ap90.png")
    if plot:
        lines += ["## AP against AP90", "",
                  "Left: each arm's mean AP and AP90 over its seeds with their 95 % t intervals (these include the "
                  "seed-to-seed spread that pairing removes). Right: the paired differences against RetinaNet, "
                  "the intervals the ranking reads.", "",
                  f"![AP against AP90]({plot.relative_to(out.parent).as_posix()})", ""]
    lines += reading(arms, len({s.get("pretrained_sha256") for s in runs}))
    lines += ["## Every run", "", *_table(["arm", "seed", *COLUMNS, "AP at α 1", "evaluates", "start", "machine"],
                                          [[arm_title(a), seed, *(metric(s, c) for c in COLUMNS),
                                            metric(s, "AP", "1"), s.get("evaluates", ""),
                                            (s.get("pretrained_sha256") or "–")[:12], s.get("cpu", "?")]
                                           for a, seeds in arms.items() for seed, s in sorted(seeds.items())])]
    atomic_write_text("\n".join(lines) + "\n", out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="docs/results_family")
    p.add_argument("--out", default="docs/results_family.md")
    p.add_argument("--command", default="")
    args = p.parse_args(argv)
    print(f"report written to {write_family_report(Path(args.results), Path(args.out), args.command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
