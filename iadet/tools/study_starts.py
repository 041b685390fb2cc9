"""Which pretrained start each seed of a study belongs to, across machines of different CPU types.

The shapes pretraining is deterministic on one CPU type, but another type may make another
start: the same recipe, other last bits, and after thousands of steps another network (an Intel
Xeon with AMX made 48e7aebb; two AMD EPYC generations, family 25 and 26, both made cd307147).
Runs pair only when they share a start, so a seed belongs to the start its first paper-regime
run used. A machine that makes another start leaves that seed alone —
its summaries are kept, never redone or overwritten — and works on the seeds that are its own
(no runs yet, or runs from its start); the report pairs within each seed and pools the seeds.
"""
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from iadet.io import atomic_write_text


def seed_starts(folders: Iterable[Optional[Path]]) -> Dict[int, Dict[str, str]]:
    """seed -> {"sha256", "cpu", "run"} of the paper-regime summaries under ``<folder>/runs``
    (the first found per seed, folders in order)."""
    starts: Dict[int, Dict[str, str]] = {}
    for folder in folders:
        if folder is None:
            continue
        for path in sorted((Path(folder) / "runs").glob("*.json")):
            try:
                s = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if s.get("pretrained_sha256") and "seed" in s:
                starts.setdefault(int(s["seed"]), {"sha256": s["pretrained_sha256"], "cpu": s.get("cpu", "?"),
                                                   "run": s.get("run", path.stem)})
    return starts


def foreign_seeds(folders: Iterable[Optional[Path]], sha256: str,
                  asked: Optional[List[int]] = None) -> Dict[int, Dict[str, str]]:
    """The seeds whose runs come from another pretrained start than ``sha256`` (this machine's);
    when every ``asked`` seed is one of them, says which seeds this machine could add."""
    foreign = {seed: s for seed, s in seed_starts(folders).items() if s["sha256"] != sha256}
    hint = own_seeds_hint(foreign, asked or [])
    if hint:
        print(hint)
    return foreign


def left_alone_message(run_name: str, seed: int, start: Dict[str, str], sha256: str, results: Path) -> str:
    return (f"{run_name}: seed {seed} belongs to pretrained start {start['sha256'][:12]} (made on {start['cpu']}, "
            f"e.g. {start['run']}); this machine makes {sha256[:12]}, so it is left for a machine that makes that "
            f"start (its summaries are kept). Use other seeds here, or delete {results}/runs/*_seed{seed}.json "
            "to redo the seed on this machine")


def own_seeds_hint(foreign: Dict[int, Dict[str, str]], seeds: List[int]) -> Optional[str]:
    """A line when every asked seed belongs to another start: which seeds this machine could run."""
    if not seeds or any(s not in foreign for s in seeds):
        return None
    first = max(foreign) + 1
    return (f"every asked seed belongs to another pretrained start; this machine can add seeds "
            f"{first},{first + 1},{first + 2},... (--seeds)")


def write_pretrained_record(results: Path, record: Dict) -> Path:
    """``results/pretrained/<sha12>.json``: one record per start. When a machine of another CPU
    type makes a start that is already recorded (the same sha256: both types computed the same
    bits), the first record is kept and the machine is added to its ``also_made_on``."""
    path = Path(results) / "pretrained" / f"{record['sha256'][:12]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        kept = None
    if kept is None or kept.get("sha256") != record["sha256"]:
        kept = record
    elif record.get("cpu") != kept.get("cpu"):
        also = kept.setdefault("also_made_on", [])
        if record.get("cpu") not in [m.get("cpu") for m in also]:
            also.append({"cpu": record.get("cpu"), "seconds": record.get("seconds")})
    atomic_write_text(json.dumps(kept, indent=1), path)
    return path
