"""A worker's web pages: ``/metrics`` (Prometheus), ``/healthz`` (alive),
``/readyz`` (joined its group).
"""

from __future__ import annotations

from typing import Any

from streams import metrics
from streams.app import EtlApp


def install(app: EtlApp) -> None:
    role = str(app.role)

    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "role": role})

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        app.joined.set()

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        consumer = app.consumer
        assigned = (
            sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()) if consumer else []
        )
        # Before its first group join a worker consumes nothing, so it is not ready.
        ready = app.joined.is_set() and not app.rebalancing
        return web.json(
            {"ready": ready, "role": role, "assigned": assigned}, status=200 if ready else 503
        )
