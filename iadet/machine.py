"""The machine a figure was measured on (benchmarks, studies): no torch import."""
import platform
from pathlib import Path


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
