"""``report.md`` of a COCO / VOC reproduction: iadet's numbers next to the paper's. Reads each
run's ``eval/metrics.json`` (written by ``python -m iadet.eval``). The small-scale study has
its own report (:mod:`iadet.tools.study_report`)."""
import datetime
import json
from pathlib import Path
from typing import Dict, List, Optional

COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
SWEEP_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP60", "AP70", "AP80", "AP90")
METHOD_TITLES = {"retinanet": "RetinaNet", "iou_aware": "IoU-aware RetinaNet",
                 "iou_aware_grad": "IoU-aware RetinaNet †", "iou_aware_l2": "IoU-aware RetinaNet (L2 IoU loss)"}


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def _table(header: List[str], rows: List[List]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def load_metrics(work: Path, run) -> Optional[Dict]:
    path = Path(work) / run.name / "eval" / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _sweep(metrics: Dict, source: str) -> List[Dict]:
    return [r for r in metrics.get("alpha_sweep", []) if r["iou_source"] == source]


def _best(rows: List[Dict]) -> Optional[Dict]:
    return max(rows, key=lambda r: r["AP"]) if rows else None


def _paper(kind: str, table: str, key):
    from iadet import paper_results
    return paper_results.lookup(kind, table, key)


def _paper_report(kind: str, runs, work: Path) -> List[str]:
    from iadet import paper_results

    out = []
    main_table = "table1" if kind == "coco" else "table5"
    columns = paper_results.COLUMNS[main_table]
    rows = []
    for run in (r for r in runs if not r.variant):
        m = load_metrics(work, run) or {}
        paper = _paper(kind, main_table, (run.backbone, run.method)) or {}
        rows.append([run.backbone, METHOD_TITLES[run.method], *(m.get(c) for c in columns),
                     *(paper.get(c) for c in columns)])
    split = "val2017" if kind == "coco" else "VOC07 test"
    note = (" The paper's Table 1 is on test-dev: submit each run's `test_dev/results.json` to the COCO "
            "server for the same split." if kind == "coco" else "")
    out += [f"## {'Table 1' if kind == 'coco' else 'Table 5'}: iadet ({split}, configured α) vs the paper "
            f"({paper_results.SPLITS[main_table]})", "",
            _table(["backbone", "model", *columns, *(f"paper {c}" for c in columns)], rows), "", note.strip(), ""]
    ablation = {r.method: load_metrics(work, r) for r in runs if r.variant == "600"}
    if ablation.get("iou_aware_l2") and ablation.get("iou_aware"):
        bce = next((r for r in _sweep(ablation["iou_aware"], "predicted") if r["alpha"] == "none"), None)
        t2 = [["L2", *(ablation["iou_aware_l2"].get(c) for c in COLUMNS),
               *(paper_results.TABLE2["l2"][c] for c in COLUMNS)]]
        if bce:
            t2.append(["BCE", *(bce[c] for c in COLUMNS), *(paper_results.TABLE2["bce"][c] for c in COLUMNS)])
        out += ["## Table 2: IoU loss (R50, [600, 1000], val2017, S = p·IoU)", "",
                _table(["IoU loss", *COLUMNS, *(f"paper {c}" for c in COLUMNS)], t2), ""]
    for method, table in (("iou_aware", "table3"), ("iou_aware_grad", "table4")):
        for run in (r for r in runs if r.method == method and r.backbone == "r50"):
            m = load_metrics(work, run)
            if not m:
                continue
            same_setting = run.variant == "600"
            sweep_rows = []
            for r in _sweep(m, "predicted"):
                paper = _paper(kind, table, r["alpha"]) or {}
                sweep_rows.append([r["alpha"], *(r[c] for c in SWEEP_COLUMNS),
                                   *(paper.get(c) for c in ("AP", "AP50", "AP90"))])
            scale = "[600, 1000], the paper's setting" if same_setting else \
                "[800, 1333]; the paper's rows are its [600, 1000] models (run with ABLATIONS=1 for those)"
            out += [f"## Table {table[-1]}: α sweep of {METHOD_TITLES[method]} R50 ({scale})", "",
                    _table(["α", *SWEEP_COLUMNS, "paper AP", "paper AP50", "paper AP90"], sweep_rows), ""]
    bound_rows = []
    for backbone in dict.fromkeys(r.backbone for r in runs):
        base = next((load_metrics(work, r) for r in runs
                     if r.backbone == backbone and r.method == "retinanet" and not r.variant), None)
        for run in (r for r in runs if r.backbone == backbone and r.iou_aware and not r.variant):
            m = load_metrics(work, run)
            if not m:
                continue
            pred, truth = _best(_sweep(m, "predicted")), _best(_sweep(m, "truth"))
            paper = _paper(kind, "table6", (backbone, run.method)) or {}
            bound_rows.append([backbone, METHOD_TITLES[run.method], (base or {}).get("AP"),
                               pred and f"{pred['AP']:.2f} (α {pred['alpha']})",
                               truth and f"{truth['AP']:.2f} (α {truth['alpha']})",
                               paper.get("baseline"), paper.get("predicted"), paper.get("truth")])
    if bound_rows:
        out += ["## Table 6: upper bound (IoU_truth instead of the predicted IoU, best α each)", "",
                _table(["backbone", "model", "RetinaNet AP", "predicted IoU AP", "IoU_truth AP",
                        "paper RetinaNet", "paper predicted", "paper IoU_truth"], bound_rows), ""]
    return out


# Published COCO val2017 AP of each family config's setting (configs/README.md; None: no such number)
FAMILY_TITLES = {"qfl": ("RetinaNet + QFL", None), "vfl": ("RetinaNet + VFL", 37.4),
                 "centerness": ("RetinaNet + centerness", None), "atss": ("RetinaNet + ATSS", None),
                 "aligned": ("aligned IoU-aware RetinaNet", None), "aligned_grad": ("aligned IoU-aware RetinaNet †", None),
                 "soft_nms": ("IoU-aware RetinaNet, Soft-NMS", None),
                 "iou_guided_nms": ("IoU-aware RetinaNet, IoU-guided NMS", None)}


def _family_report(runs, work: Path) -> List[str]:
    """Beyond the paper (issue 15): each family model at its configured score, against the
    RetinaNet and IoU-aware runs of this reproduction, with the IoU_truth bound where it has one."""
    family = [r for r in runs if r.variant == "family"]
    if not family:
        return []
    base = {r.method: load_metrics(work, r) or {} for r in runs if not r.variant and r.backbone == "r50"}
    rows = []
    for run in family:
        m = load_metrics(work, run) or {}
        title, published = FAMILY_TITLES[run.method]
        truth = _best(_sweep(m, "truth"))
        rows.append([title + (f" (checkpoint of {run.evaluates})" if run.evaluates else ""),
                     *(m.get(c) for c in COLUMNS), m.get("AP80"), m.get("AP90"),
                     None if m.get("AP") is None or "retinanet" not in base else m["AP"] - base["retinanet"].get("AP", 0),
                     truth["AP"] if truth else None, published])
    return ["## Beyond the paper: the quality family (R50, val2017, configured score)", "",
            _table(["model", *COLUMNS, "AP80", "AP90", "AP − RetinaNet", "AP with IoU_truth (best α)",
                    "published AP"], rows), ""]


def write_report(kind: str, runs, work: Path, command: str, machine: str, seconds: float,
                 timings: Dict[str, float], dry_run: bool = False) -> Path:
    """Write ``work/report.md`` and return its path."""
    work = Path(work)
    title = {"coco": "COCO (Tables 1, 3, 4, 6)", "voc": "PASCAL VOC (Tables 5, 6)"}[kind]
    lines = [f"# iadet reproduction: {title}", "",
             f"- command: `{command}`", f"- machine: {machine}",
             f"- date: {datetime.date.today().isoformat()}",
             f"- wall clock: {seconds / 60:.1f} min for {len(runs)} models "
             f"({', '.join(f'{k} {v / 60:.1f} min' for k, v in timings.items())})"]
    if dry_run:
        lines.append("- **dry run**: 2 iterations at 128 px on a tiny synthetic dataset laid out like the real one; "
                     "the numbers test the recipe, not the method")
    lines.append("")
    lines += _paper_report(kind, runs, work)
    lines += _family_report(runs, work)
    path = work / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
