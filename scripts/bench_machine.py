"""The machine a benchmark ran on, for every figure it prints and every JSON it writes.

No torch import here: scripts/bench_eval.py stays torch-free. Imported by the bench scripts
(scripts/ is on ``sys.path`` when they run).
"""
import os
import platform
from typing import Dict

from iadet.machine import cpu_model  # noqa: F401  (re-exported)


def cpu_line() -> str:
    """``CPU: <model> (<n> cores)``, printed next to every benchmark table."""
    return f"CPU: {cpu_model()} ({os.cpu_count()} cores)"


def cpu_info() -> Dict:
    """What the JSON outputs store: ``cpu`` (the model) and ``cpu_count``."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
