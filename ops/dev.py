"""``etl dev``: the demo's stack, left running, so every Operations command can be tried.

The bundled broker and the real worker processes (one per role) start as in
``etl demo``, a synthetic stream goes through them, and then they keep
running until Ctrl-C or SIGTERM.  The environment that points the other
commands at this stack is printed as ``export`` lines and written to
``<dir>/env.sh``, so another shell can ``source`` it.
"""

from __future__ import annotations

import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from ops.demo import _wait_ready
from ops.harness.broker import EmbeddedBroker
from ops.harness.local_pipeline import LocalPipeline
from ops.harness.synthetic import Generator
from sinks.settings import Settings

#: The variables another shell needs to reach this stack (the pipeline's own values).
EXPORTED = (
    "ETL_KAFKA__BOOTSTRAP_SERVERS",
    "ETL_KAFKA__PARTITIONS",
    "ETL_KAFKA__RAW_TOPIC",
    "ETL_KAFKA__NORMALIZED_TOPIC",
    "ETL_KAFKA__DLQ_TOPIC",
    "ETL_KAFKA__GROUP_PREFIX",
    "ETL_SINKS",
    "ETL_DUCKDB__PATH",
    "ETL_DATA_DIR",
)


@dataclass
class DevStack:
    broker: EmbeddedBroker
    pipeline: LocalPipeline
    env: dict[str, str] = field(default_factory=dict)
    env_file: Path | None = None

    def exports(self) -> str:
        return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.env.items())

    def stop(self) -> None:
        self.pipeline.stop()
        self.broker.stop()


def start(
    base: Settings, work_dir: Path, *, events: int = 2000, partitions: int = 2, seed: int = 7
) -> DevStack:
    """Broker, workers, ``events`` synthetic events through them; returns once they are in."""
    work_dir = work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(log_path=work_dir / "broker.log").start()
    pipeline: LocalPipeline | None = None
    try:
        settings = base.model_copy(
            update={
                "kafka": base.kafka.model_copy(
                    update={"bootstrap_servers": broker.bootstrap, "partitions": partitions}
                ),
                "duckdb": base.duckdb.model_copy(update={"path": work_dir / "warehouse.duckdb"}),
                "data_dir": work_dir / "state",
            }
        )
        pipeline = LocalPipeline.create(settings, work_dir)
        pipeline.start()
        _wait_ready(pipeline.workers, timeout=60)
        if events:
            pipeline.produce(m.value for m in Generator(seed=seed).messages(events))
            pipeline.wait_drained(120 + events / 500)
    except BaseException:
        if pipeline is not None:
            pipeline.stop()
        broker.stop()
        raise
    stack = DevStack(broker, pipeline, {k: pipeline.env[k] for k in EXPORTED})
    stack.env_file = work_dir / "env.sh"
    stack.env_file.write_text(stack.exports())
    return stack


def run_until_stopped(stack: DevStack, say: Callable[[str], None], poll: float = 1.0) -> int:
    """Keep the stack up until SIGINT/SIGTERM (exit 0) or a worker dies (exit 1)."""
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping:
            try:
                stack.pipeline.check_alive()
            except RuntimeError as exc:
                say(f"etl dev: {str(exc).splitlines()[0]}")
                return 1
            time.sleep(poll)
        say("etl dev: stopping the workers and the broker")
        return 0
    finally:
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def banner(stack: DevStack) -> str:
    workers = ", ".join(
        f"{w.role} (pid {w.process.pid}, {w.metrics_url})" for w in stack.pipeline.workers
    )
    return (
        f"etl dev: broker at {stack.broker.bootstrap}; workers: {workers}\n"
        f"etl dev: in another shell: source {stack.env_file}  (then etl status, etl dlq list...)\n"
        "etl dev: Ctrl-C stops everything"
    )


def print_exports(stack: DevStack) -> None:
    sys.stdout.write(stack.exports())
    sys.stdout.flush()
