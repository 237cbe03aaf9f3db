"""Starting and supervising worker processes (one per role) on this machine.

Used by ``etl worker`` with role ``all``, by the local harness (``etl demo``,
``etl dev``, the tests) and by the benchmark.  In production
each role runs as its own deployment (see deploy/); this is the single-host
equivalent: if any role's process dies, the others are stopped and the
supervisor exits non-zero so that the service manager restarts the set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from etl.role import Role

if TYPE_CHECKING:
    from sinks.settings import Settings


@dataclass
class WorkerProcess:
    role: Role
    web_port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/metrics"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


#: The C runtime's environment for a worker, unless the caller's own says otherwise.
#: One glibc malloc arena: each thread that allocates (the stage's pool thread, the
#: lag probe, DuckDB's) otherwise grows an arena of its own and keeps every batch's
#: peak once per arena.  Measured on the normalize worker at 300k events: 2 arenas
#: 279-291 MB peak RSS, 1 arena 240-254 MB, at the same throughput.  Python code
#: allocates under the GIL, so the threads hardly contend for the one arena.
WORKER_RUNTIME_ENV = {"MALLOC_ARENA_MAX": "1"}


def start_worker(
    role: Role | str,
    env: dict[str, str],
    web_port: int,
    log_dir: Path,
    extra_args: list[str] | None = None,
) -> WorkerProcess:
    role = Role.parse(role)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"worker-{role.slug}.log"
    worker_env = {
        **WORKER_RUNTIME_ENV,
        **env,
        "ETL_ROLE": str(role),
        "ETL_WEB_PORT": str(web_port),
    }
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "streams.worker", *(extra_args or [])],
        env=worker_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    return WorkerProcess(role, web_port, log_path, process)


def stop_workers(workers: list[WorkerProcess], timeout: float = 20.0) -> None:
    for w in workers:
        if w.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
    deadline = time.monotonic() + timeout
    for w in workers:
        if w.process is None:
            continue
        try:
            w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.process.pid, signal.SIGKILL)
            w.process.wait(timeout=5)


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL, as a crash would: no shutdown hooks, no final commit."""
    if worker.process is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)


def supervise(settings: Settings, extra_args: list[str]) -> int:
    """Run one worker process per role until a signal or a child's death."""
    env = dict(os.environ)
    workers = [
        start_worker(
            role,
            env,
            settings.web_port + i if settings.web_port else 0,
            settings.data_dir / "logs",
            extra_args,
        )
        for i, role in enumerate(settings.roles())
    ]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    described = ", ".join(
        f"{w.role} (pid {w.process.pid if w.process else '-'}, port {w.web_port}, log {w.log_path})"
        for w in workers
    )
    print(f"etl: supervising {described}", flush=True)
    code = 0
    while not stopping:
        for w in workers:
            if not w.alive():
                code = w.process.returncode or 1  # type: ignore[union-attr]
                print(
                    f"etl: worker {w.role} exited with {code}; "
                    f"stopping the others (see {w.log_path})",
                    file=sys.stderr,
                    flush=True,
                )
                stopping = True
                break
        time.sleep(0.5)
    stop_workers(workers)
    return code
