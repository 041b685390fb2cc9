"""The machine a benchmark ran on, for every figure it prints and every JSON it writes.

No torch import here: scripts/bench_eval.py stays torch-free. Imported by the bench scripts
(scripts/ is on ``sys.path`` when they run).
"""
import os
import platform
from pathlib import Path
from typing import Dict


def cpu_model() -> str:
    """The ``model name`` line of /proc/cpuinfo (e.g. "Intel(R) Xeon(R) Platinum 8488C"), or
    what ``platform`` knows when there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_line() -> str:
    """``CPU: <model> (<n> cores)``, printed next to every benchmark table."""
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def cpu_info() -> Dict:
    """What the JSON outputs store: ``cpu`` (the model) and ``cpu_count``."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
