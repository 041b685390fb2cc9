"""The machine a figure was measured on (benchmarks, studies): no torch import."""
import platform
from pathlib import Path
from typing import Optional


def cpu_model(cpuinfo: Optional[str] = None) -> str:
    """The ``model name`` line of /proc/cpuinfo (e.g. "Intel(R) Xeon(R) Platinum 8488C"), with
    the ``cpu family`` and ``model`` numbers when the name carries no model number (a cloud
    "AMD EPYC" can be a Zen 4 or a Zen 5, whose kernels round differently), or what
    ``platform`` knows when there is no /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        text = ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
        if not line.strip():
            break  # the first processor is enough
    name = fields.get("model name")
    if not name:
        return platform.processor() or platform.machine() or "unknown CPU"
    if not any(ch.isdigit() for ch in name) and "cpu family" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name
