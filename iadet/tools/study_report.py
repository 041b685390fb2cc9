"""The report of the small-scale study (``docs/results_mini.md``), generated from the run
summaries that :mod:`iadet.tools.study_mini` writes; never edited by hand.

    python -m iadet.tools.study_report [--results docs/results_mini] [--out docs/results_mini.md]

Every difference is paired: arm A minus arm B on the same seed (same shared initial weights,
data order and flips), then the mean over seeds with a two-sided 95 % Student-t interval
(:mod:`iadet.tools.study_stats`), and each per-seed value.
"""
import argparse
import datetime
import json
import statistics
from pathlib import Path
from typing import Callable, Dict, List, Optional

from iadet.io import atomic_write_text
from iadet.tools.study_stats import PairedDifference, paired_difference, verdict_greater, verdict_not_worse

COLUMNS = ("AP", "AP50", "AP75", "AP80", "AP90")
CONFIGURED_ALPHA = "0.5"
NOT_HURT_MARGIN = 0.5   # AP: "not hurt" = the whole interval above -0.5 AP
FAR_ABOVE_MARGIN = 2.0  # AP: "far above" = the whole interval above +2 AP
TITLES = {"retinanet": "RetinaNet", "iou_aware": "IoU-aware", "iou_aware_grad": "IoU-aware †",
          "iou_aware_loss_weight0": "IoU branch, loss weight 0",
          "iou_aware_detached_feature": "IoU branch on a detached feature",
          "scratch_retinanet": "RetinaNet (scratch, AdamW)", "scratch_iou_aware": "IoU-aware (scratch, AdamW)",
          "scratch_iou_aware_grad": "IoU-aware † (scratch, AdamW)"}


def load_summaries(results: Path) -> Dict[str, Dict[int, Dict]]:
    """arm -> seed -> summary, from ``results/runs/*.json``."""
    arms: Dict[str, Dict[int, Dict]] = {}
    for path in sorted((Path(results) / "runs").glob("*.json")):
        s = json.loads(path.read_text())
        arms.setdefault(s["arm"], {})[int(s["seed"])] = s
    return arms


def load_pretrained_records(results: Path) -> Dict[str, Dict]:
    """sha256 -> the pretraining record of every pretrained start the study has made, from
    ``results/pretrained/<sha12>.json`` (one per start: another CPU type makes another) and the
    older single ``results/pretrained.json``."""
    results = Path(results)
    paths = sorted((results / "pretrained").glob("*.json"))
    if (results / "pretrained.json").is_file():
        paths.insert(0, results / "pretrained.json")
    records = {}
    for path in paths:
        record = json.loads(path.read_text())
        records[record.get("sha256", path.stem)] = record
    return records


def describe_pretrained_starts(runs: List[Dict], records: Dict[str, Dict]) -> str:
    """``48e7aebb982b (Intel …, 2.5 min, val accuracy 0.943; 30 runs)``, one per start the
    runs used (with the other CPU types that made the same start)."""
    counts: Dict[str, int] = {}
    for s in runs:
        if s.get("pretrained_sha256"):
            counts[s["pretrained_sha256"]] = counts.get(s["pretrained_sha256"], 0) + 1
    parts = []
    for sha, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        r = records.get(sha, {})
        also = "".join(f", also made on {m.get('cpu', '?')} in {(m.get('seconds') or 0) / 60:.1f} min"
                       for m in r.get("also_made_on", []))
        made = (f"{r.get('cpu', '?')}, {r.get('seconds', 0) / 60:.1f} min, val accuracy {r['val_accuracy']:.3f}{also}; "
                if "val_accuracy" in r else "")
        parts.append(f"{sha[:12]} ({made}{n} run{'s' if n != 1 else ''})")
    return ", ".join(parts) or "–"


def sweep_value(summary: Dict, source: str, alpha: str, column: str) -> Optional[float]:
    for row in summary.get("alpha_sweep", []):
        if row["iou_source"] == source and row["alpha"] == alpha:
            return row.get(column)
    return None


def metric(summary: Dict, column: str, alpha: Optional[str] = None, source: str = "predicted") -> Optional[float]:
    """A column at the configured α (``alpha=None``) or from the α sweep. RetinaNet has no
    sweep: its confidence is p at any α, and it has no IoU_truth row."""
    if alpha is None:
        return summary["metrics"].get(column)
    if not summary.get("alpha_sweep"):
        return summary["metrics"].get(column) if source == "predicted" else None
    return sweep_value(summary, source, alpha, column)


def same_start(x: Dict, y: Dict) -> bool:
    """Whether two runs of one seed started from the same pretrained backbone (or none):
    the pretraining is deterministic per CPU type, so a study resumed on another kind of
    machine may have made a different one, and runs across it do not pair."""
    return x.get("pretrained_sha256") is None or y.get("pretrained_sha256") is None or \
        x["pretrained_sha256"] == y["pretrained_sha256"]


def paired(arms, a: str, b: Optional[str], value_a: Callable, value_b: Optional[Callable] = None) -> PairedDifference:
    """value_a(arm a's summary) - value_b(arm b's summary) per common seed (b None: value_a alone)."""
    seeds = sorted(set(arms.get(a, {})) & (set(arms.get(b, {})) if b else set(arms.get(a, {}))))
    values = []
    for seed in seeds:
        if b and not same_start(arms[a][seed], arms[b][seed]):
            continue  # different pretrained backbones (another machine type): not a pair
        x = value_a(arms[a][seed])
        y = value_b(arms[b][seed]) if b else 0.0
        if x is not None and y is not None:
            values.append(x - y)
    return paired_difference(values)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def _table(header: List[str], rows: List[List]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows), ""]


def _per_seed(d: PairedDifference) -> str:
    return ", ".join(f"{v:+.2f}" for v in d.values) or "–"


def _alpha_min(arms, arm: str) -> Optional[str]:
    for s in arms.get(arm, {}).values():
        alphas = [float(r["alpha"]) for r in s.get("alpha_sweep", []) if r["alpha"] != "none"]
        if alphas:
            return f"{min(alphas):g}"
    return None


def verdicts(arms) -> List[List]:
    """The paper's claims, each with the interval that decides it."""
    at = lambda col, alpha=None, source="predicted": (lambda s: metric(s, col, alpha, source))  # noqa: E731
    rows = []
    for arm in ("iou_aware", "iou_aware_grad"):
        d = paired(arms, arm, "retinanet", at("AP"), at("AP"))
        rows.append([f"{TITLES[arm]} > RetinaNet in AP (α {CONFIGURED_ALPHA})", f"ΔAP {TITLES[arm]} − RetinaNet",
                     d, verdict_greater(d)])
    gain_high = paired(arms, "iou_aware", "retinanet", lambda s: metric(s, "AP80") - metric(s, "AP50"),
                       lambda s: metric(s, "AP80") - metric(s, "AP50"))
    rows.append(["the gain sits at AP75 and above, AP50 flat or lower", "ΔAP80 − ΔAP50 (IoU-aware − RetinaNet)",
                 gain_high, verdict_greater(gain_high)])
    grad90 = paired(arms, "iou_aware_grad", "iou_aware", at("AP90"), at("AP90"))
    rows.append(["† adds more at AP80/AP90", "ΔAP90 IoU-aware † − IoU-aware", grad90, verdict_greater(grad90)])
    low = _alpha_min(arms, "iou_aware")
    if low:
        def shift(s):
            a90, b90 = metric(s, "AP90", low), metric(s, "AP90", "1")
            a50, b50 = metric(s, "AP50", low), metric(s, "AP50", "1")
            return None if None in (a90, b90, a50, b50) else (a90 - b90) - (a50 - b50)
        d = paired(arms, "iou_aware", None, shift)
        rows.append([f"lower α favours high IoU thresholds (IoU-aware, α {low} vs 1)",
                     "[AP90(α low) − AP90(α 1)] − [AP50(α low) − AP50(α 1)]", d, verdict_greater(d)])
    for arm in ("iou_aware", "iou_aware_grad"):
        d = paired(arms, arm, "retinanet", at("AP", "1"), at("AP"))
        rows.append([f"the class score alone (α 1) is not hurt by multi-task training ({TITLES[arm]})",
                     f"ΔAP(α 1) {TITLES[arm]} − RetinaNet; reproduced above −{NOT_HURT_MARGIN}",
                     d, verdict_not_worse(d, NOT_HURT_MARGIN)])
    d = paired(arms, "iou_aware", "iou_aware", at("AP", CONFIGURED_ALPHA, "truth"), at("AP", CONFIGURED_ALPHA))
    rows.append(["the IoU_truth upper bound lies far above", f"AP(IoU_truth) − AP(predicted IoU), α {CONFIGURED_ALPHA}; "
                 f"reproduced above +{FAR_ABOVE_MARGIN}", d, verdict_greater(d, FAR_ABOVE_MARGIN)])
    return rows


def difference_rows(arms, pairs, alpha: Optional[str] = None) -> List[List]:
    rows = []
    for a, b in pairs:
        if a not in arms or b not in arms:
            continue
        diffs = [paired(arms, a, b, lambda s, c=c: metric(s, c, alpha), lambda s, c=c: metric(s, c)) for c in COLUMNS]
        rows.append([f"{TITLES[a]} − {TITLES[b]}", diffs[0].n, *(d.text() for d in diffs)])
        rows.append(["  per seed", "", *(_per_seed(d) for d in diffs)])
    return rows


def _learning_curve_plot(arms, path: Path) -> Optional[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    regimes = [("paper", "paper regime (pretrained, frozen BN, SGD)"), ("scratch_adamw", "scratch, AdamW (issue 6)")]
    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    drawn = False
    for i, (regime, title) in enumerate(regimes):
        ax = fig.add_subplot(1, 2, i + 1)
        for arm, seeds in arms.items():
            curves = [s["learning_curve"] for s in seeds.values() if s["regime"] == regime and len(s["learning_curve"]) > 1]
            for curve in curves[:1]:
                ax.plot([p["iteration"] for p in curve], [p["AP"] for p in curve], marker="o", label=TITLES.get(arm, arm))
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel("AP (val, configured α)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not drawn:
        return None
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return path


def _sweep_rows(arms, arm: str) -> List[List]:
    seeds = arms.get(arm, {})
    if not seeds:
        return []
    any_summary = next(iter(seeds.values()))
    rows = []
    for source in ("predicted", "truth"):
        for alpha in dict.fromkeys(r["alpha"] for r in any_summary.get("alpha_sweep", []) if r["iou_source"] == source):
            means = []
            for c in COLUMNS:
                vals = [sweep_value(s, source, alpha, c) for s in seeds.values()]
                vals = [v for v in vals if v is not None]
                means.append(statistics.fmean(vals) if vals else None)
            rows.append([source, alpha, *means])
    return rows


def _previous_command(out: Path) -> str:
    """The study's command in an existing report (kept when a pilot or a bare regeneration
    writes the report again)."""
    try:
        for line in Path(out).read_text().splitlines():
            if line.startswith("- command: `") and line.endswith("`"):
                return line[len("- command: `"):-1]
    except OSError:
        pass
    return ""


def write_study_report(results: Path, out: Path, command: str = "", dry_run: bool = False) -> Path:
    """The report from the summaries; ``command`` is the study's (default: the one the existing
    report names)."""
    results, out = Path(results), Path(out)
    arms = load_summaries(results)
    all_runs = [s for seeds in arms.values() for s in seeds.values()]
    records = load_pretrained_records(results)
    pilots = [json.loads(p.read_text()) for p in sorted((results / "pilot").glob("*.json"))]
    cpus = sorted({s["cpu"] for s in all_runs}) or ["–"]
    commits = sorted({s["git_commit"] or "?" for s in all_runs})
    train_min = sum(s["train_seconds"] + s["eval_seconds"] for s in all_runs) / 60
    lines = ["# Small-scale study of the paper's claim (generated by `iadet.tools.study_report`)", ""]
    if dry_run:
        lines += ["**Dry run**: a few iterations on a tiny set; the numbers test the pipeline, not the method.", ""]
    command = command or _previous_command(out) or "make reproduce-mini"
    lines += [f"- command: `{command}`",
              f"- machine: {'; '.join(cpus)} (CPU model from /proc/cpuinfo)",
              f"- generated: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
              f"code: {', '.join(commits)}",
              f"- runs finished: {len(all_runs)}; their training + evaluation time: {train_min:.1f} min",
              f"- validation images: {_num_val(all_runs)}",
              f"- pretrained starts (sha256, where and how long it was made, its held-out accuracy): study "
              f"{describe_pretrained_starts(all_runs, records)}; pilots {describe_pretrained_starts(pilots, records)} "
              "(runs of one seed pair only when they share a start)", ""]
    per_arm = []
    for a, seeds in arms.items():
        whole = [s for s in seeds.values() if not s.get("resumed")]  # a resumed run's times are partial
        per_arm.append([TITLES.get(a, a), len(seeds), ", ".join(map(str, sorted(seeds))), len(whole),
                        statistics.fmean(s["train_seconds"] for s in whole) / 60 if whole else None,
                        statistics.fmean(s["eval_seconds"] for s in whole) / 60 if whole else None])
    lines += ["## Runs and measured time per arm", "",
              "Time per run is the mean over runs that were not interrupted and resumed; the first seed of "
              "each arm also evaluates after every epoch (its learning curve).", "",
              *_table(["arm", "seeds done", "seeds", "timed runs", "train min / run", "eval min / run"], per_arm)]
    lines += ["## Verdicts", "", "Paired differences, mean over seeds with a 95 % Student-t interval "
              "(paired t, n − 1 degrees of freedom). A claim is *reproduced* when the whole interval lies on its "
              "side of the margin, *not reproduced* when it lies on the other side, *inconclusive* otherwise.", "",
              *_table(["claim of the paper", "measure", "mean [95 % CI]", "n", "per seed", "verdict"],
                      [[c, m, d.text(), d.n, _per_seed(d), v] for c, m, d, v in verdicts(arms)])]
    lines += ["## Paired differences at the configured α (0.5; RetinaNet: p)", "",
              *_table(["difference", "n", *COLUMNS], difference_rows(
                  arms, [("iou_aware", "retinanet"), ("iou_aware_grad", "retinanet"), ("iou_aware_grad", "iou_aware")]))]
    lines += ["## Controls", "", "Class score alone (α 1) against RetinaNet, then at the configured α:", "",
              *_table(["difference", "n", *COLUMNS], difference_rows(
                  arms, [("iou_aware", "retinanet"), ("iou_aware_grad", "retinanet"),
                         ("iou_aware_loss_weight0", "retinanet"), ("iou_aware_detached_feature", "retinanet"),
                         ("scratch_iou_aware", "scratch_retinanet"), ("scratch_iou_aware_grad", "scratch_retinanet")],
                  alpha="1")),
              *_table(["difference", "n", *COLUMNS], difference_rows(
                  arms, [("iou_aware_loss_weight0", "retinanet"), ("iou_aware_detached_feature", "retinanet"),
                         ("iou_aware_detached_feature", "iou_aware"), ("scratch_iou_aware", "scratch_retinanet"),
                         ("scratch_iou_aware_grad", "scratch_retinanet")]))]
    lines += ["## Every run at the configured α", "",
              *_table(["arm", "seed", *COLUMNS, "AP at α 1"],
                      [[TITLES.get(a, a), seed, *(metric(s, c) for c in COLUMNS), metric(s, "AP", "1")]
                       for a, seeds in arms.items() for seed, s in sorted(seeds.items())])]
    for arm in ("iou_aware", "iou_aware_grad"):
        rows = _sweep_rows(arms, arm)
        if rows:
            lines += [f"## α sweep and IoU_truth upper bound: {TITLES[arm]} (mean over seeds)", "",
                      *_table(["IoU", "α", *COLUMNS], rows)]
    if pilots:
        lines += ["## Schedule pilots", "", "A longer schedule of one arm (lr ×0.1 at 80 % and 93 % of it), evaluated "
                  "every 2 epochs on the validation images: how far the study's schedule is from where AP stops "
                  "rising. *Study AP* is the same arm and seed in the study (same pretrained start only; – otherwise). "
                  "Each was made by `python -m iadet.tools.reproduce mini --pilot ITERS --arms ARM --seeds SEED`.",
                  "", *_table(["pilot", "iterations", "seed", "pretrained", "CPU",
                               "AP at each evaluation (iteration: AP)", "final AP", "study AP", "study − pilot",
                               "train min"], [_pilot_row(p, arms) for p in pilots])]
        arms = {**arms, **{p["arm"]: {p["seed"]: p} for p in pilots}}
    plot = _learning_curve_plot(arms, out.parent / "images" / f"{out.stem}_learning_curves.png")
    if plot:
        lines += ["## Learning curves", "", "AP on the validation images after every epoch, first seed of each arm:", "",
                  f"![learning curves]({plot.relative_to(out.parent).as_posix()})", ""]
    atomic_write_text("\n".join(lines) + "\n", out)
    return out


def _pilot_row(pilot: Dict, arms) -> List:
    """One pilot against the study run of its arm and seed (``pilot<ITERS>_<arm>``)."""
    arm = pilot["arm"].split("_", 1)[1] if pilot["arm"].startswith("pilot") else pilot["arm"]
    study = arms.get(arm, {}).get(pilot["seed"])
    study_ap = study["metrics"].get("AP") if study and study.get("pretrained_sha256") == \
        pilot.get("pretrained_sha256") else None
    final = pilot["metrics"].get("AP")
    return [pilot["arm"], pilot["iterations"], pilot["seed"], (pilot.get("pretrained_sha256") or "–")[:12],
            pilot.get("cpu", "–"), ", ".join(f"{q['iteration']}: {q['AP']:.1f}" for q in pilot["learning_curve"]),
            final, study_ap, None if study_ap is None or final is None else study_ap - final,
            pilot["train_seconds"] / 60]


def _num_val(runs) -> str:
    values = sorted({s["metrics"].get("num_images") for s in runs if s["metrics"].get("num_images")})
    return ", ".join(map(str, values)) or "see the configs (data.synthetic.num_val)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default="docs/results_mini")
    p.add_argument("--out", default="docs/results_mini.md")
    p.add_argument("--command", default="")
    args = p.parse_args(argv)
    print(f"report written to {write_study_report(Path(args.results), Path(args.out), args.command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
