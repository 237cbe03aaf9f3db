"""Structured logging: JSON lines (or text), one correlation id per batch.

Log lines carry counts, stages, reasons and ids - never property values or
secrets.  ``batch_context`` tags every line logged while a batch is processed
with the same ``batch_id``, so one batch can be followed across retries.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

_batch: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "etl_batch", default=None
)


@contextlib.contextmanager
def batch_context(**fields: Any) -> Iterator[str]:
    batch_id = uuid.uuid4().hex[:12]
    token = _batch.set({"batch_id": batch_id, **fields})
    try:
        yield batch_id
    finally:
        _batch.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = _batch.get()
        if ctx:
            doc.update(ctx)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _batch.get()
        return f"{line} [batch={ctx['batch_id']}]" if ctx else line


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Faust and aiokafka are chatty at INFO about every rebalance step.
    for noisy in ("aiokafka", "faust.transport", "faust.tables", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def dict_config(level: str = "INFO", fmt: str = "text") -> dict[str, Any]:
    """The same setup as :func:`configure`, as a dictConfig for Faust's worker."""
    formatter = "streams.logs.JsonFormatter" if fmt == "json" else "streams.logs.TextFormatter"
    quiet = max(logging.WARNING, logging.getLevelName(level))
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"etl": {"()": formatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "etl",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
        "loggers": {
            name: {"level": quiet}
            for name in ("aiokafka", "faust.transport", "faust.tables", "mode", "kafka")
        },
    }
