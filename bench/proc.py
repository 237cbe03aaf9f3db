"""The contenders' processes: the environment they start with, and the one peak-RSS
probe (from /proc) every contender reports.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contender_env() -> dict[str, str]:
    """Environment of a contender's subprocess: this one's, this checkout importable, and the
    C runtime as our workers have it (one malloc arena), so the comparison is of runtimes.
    """
    from streams.supervisor import WORKER_RUNTIME_ENV

    return {
        **WORKER_RUNTIME_ENV,
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def vm_hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB; None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | str = "self") -> float | None:
    """CPU time (user + system, all threads) a live process has used so far, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the ")" of the command name: state is field 0, utime 11, stime 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every core of the machine has spent not idle since boot (from /proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
