"""Run files: each local worker records its role, pid and metrics port in the data dir.

``etl status`` finds the local workers' ``/metrics`` from these files, so it
needs no URLs on one machine (production lists them in ``ETL_METRICS_URLS``).
A file whose process is gone is stale and skipped (and removed).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from etl.role import Role


def run_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "run"


def record(data_dir: Path, role: Role, port: int, host: str = "127.0.0.1") -> Path:
    """Write this process's run file; it is removed again when the process exits."""
    folder = run_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{role.slug}-{os.getpid()}.json"
    doc = {
        "role": str(role),
        "pid": os.getpid(),
        "port": port,
        "metrics_url": f"http://{host}:{port}/metrics",
        "started_at": time.time(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc))
    tmp.replace(path)  # readers never see half a file
    atexit.register(_remove, path)
    return path


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0, ...) would probe our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def discover(data_dir: Path) -> list[dict[str, Any]]:
    """The live local workers' run files, by role."""
    found = []
    for path in sorted(run_dir(data_dir).glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if not isinstance(doc, dict) or not _alive(int(doc.get("pid", 0) or 0)):
            _remove(path)  # stale: a killed worker cannot clean up after itself
            continue
        found.append(doc)
    return sorted(found, key=lambda d: (str(d.get("role")), int(d.get("pid", 0))))
