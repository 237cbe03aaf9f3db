"""/metrics series, health pages, etl status (lag falling to zero), etl offsets show/reset."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl import kafka_tools
from etl.offsets import GroupBusyError, live_members, reset
from streams.supervisor import stop_workers


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(worker) -> dict[tuple[str, tuple], float]:
    _, text = get(f"http://127.0.0.1:{worker.web_port}/metrics")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def wait_metric(
    worker, name: str, labels: dict[str, str], expected: float, timeout: float = 30
) -> None:
    key = (name, tuple(sorted(labels.items())))
    deadline = time.monotonic() + timeout
    while (value := samples(worker).get(key)) != expected:
        assert time.monotonic() < deadline, f"{name}{labels} = {value}, expected {expected}"
        time.sleep(0.5)


def cli_json(p, *args):
    proc = p.cli(*args)
    assert proc.returncode == 0, (
        f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_metrics_health_status_lag_and_offsets(make_pipeline):
    p = make_pipeline(partitions=2)
    s = p.settings
    values = [
        orjson.dumps(
            {
                "event": "tool_used",
                "distinct_id": f"u{i % 5}",
                "uuid": str(uuid.uuid4()),
                "properties": {
                    "tool_id": "t",
                    "tool_type": "search",
                    "status": "ok",
                    "latency_ms": i,
                },
            }
        )
        for i in range(500)
    ] + [b"not json", b"[1]"]
    p.produce(values)

    before = cli_json(p, "status", "--json", "--interval", "0")
    by_name = {g["name"]: g for g in before["groups"]}
    assert by_name["normalize"]["lag"] == 502 and by_name["normalize"]["group"] == s.normalize_group
    assert before["dlq"]["total"] == 0

    normalize, sink = p.start()
    # Before its group join a worker answers /readyz with 503 (the web server
    # starts seconds before the join completes on this broker).
    first = None
    deadline = time.monotonic() + 30
    while first is None and time.monotonic() < deadline:
        try:
            first = get(f"http://127.0.0.1:{normalize.web_port}/readyz")
        except OSError:
            time.sleep(0.05)
    assert first is not None and first[0] == 503 and json.loads(first[1])["ready"] is False
    p.wait_drained(90)

    # Health pages.
    assert get(f"http://127.0.0.1:{normalize.web_port}/healthz") == (
        200,
        json.dumps({"status": "ok", "role": "normalize"}).replace(" ", ""),
    )
    status, body = get(f"http://127.0.0.1:{sink.web_port}/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True
    assert sorted(ready["assigned"]) == sorted(
        f"{t}:{i}" for t in (s.kafka.normalized_topic, s.kafka.dlq_topic) for i in range(2)
    )

    # The named series, with exact values where the input fixes them.
    n = samples(normalize)
    assert n[("etl_messages_in_total", (("stage", "normalize"),))] == 502
    assert n[("etl_events_out_total", (("outcome", "normalized"), ("stage", "normalize")))] == 500
    assert n[("etl_dlq_total", (("reason", "invalid_json"), ("stage", "normalize")))] == 1
    assert n[("etl_dlq_total", (("reason", "not_an_object"), ("stage", "normalize")))] == 1
    assert n[("etl_normalized_by_event_total", (("event", "tool_used"),))] == 500
    for part in range(2):
        wait_metric(
            normalize,
            "etl_consumer_lag",
            {"group": s.normalize_group, "topic": s.kafka.raw_topic, "partition": str(part)},
            0,
        )
    k = samples(sink)
    assert k[("etl_events_in_total", (("stage", "sink:duckdb"),))] == 500
    assert k[("etl_events_out_total", (("outcome", "delivered"), ("stage", "sink:duckdb")))] == 500
    assert (
        k[("etl_batch_size_sum", (("sink", "duckdb"),))] >= 500
    )  # events plus stored dead letters
    assert k[("etl_sink_write_seconds_count", (("sink", "duckdb"),))] >= 1
    wait_metric(
        sink,
        "etl_consumer_lag",
        {"group": s.sink_group("duckdb"), "topic": s.kafka.normalized_topic, "partition": "0"},
        0,
    )
    _, text = get(sink.metrics_url)
    for declared in (
        "etl_sink_retries_total counter",
        "etl_sink_paused_since_seconds gauge",
        "etl_gated_total counter",
        "etl_sink_backpressure_seconds_total counter",
        "etl_sink_write_seconds histogram",
        "etl_batch_size histogram",
    ):
        assert f"# TYPE {declared}" in text

    # etl status: lag down to zero, rates and DLQ reasons, from both workers' /metrics.
    after = cli_json(
        p,
        "status",
        "--json",
        "--interval",
        "1",
        "--metrics",
        f"{normalize.metrics_url},{sink.metrics_url}",
    )
    assert after["total_lag"] == 0
    assert all(part["lag"] == 0 for g in after["groups"] for part in g["partitions"])
    assert after["dlq"]["by_reason"] == {"invalid_json": 1, "not_an_object": 1}
    assert after["metrics"]["unreachable"] == [] and after["metrics"]["paused_since"] == {}
    assert after["metrics"]["dlq_by_reason_since_start"] == {"invalid_json": 1, "not_an_object": 1}
    assert after["metrics"]["events_in_per_second"] == {"sink:duckdb": 0.0}

    # etl offsets: refuse to reset a live group; reset once its worker left.
    shown = cli_json(p, "offsets", "show", "--sink", "duckdb", "--json")
    assert shown["group"] == s.sink_group("duckdb") and shown["lag"] == 0
    ends = {(r["topic"], r["partition"]): r["end"] for r in shown["partitions"]}
    # A partition that never held a record has no commit yet.
    assert all(r["committed"] == (r["end"] if r["end"] else None) for r in shown["partitions"])
    committed_before = {kafka_tools.TopicPartition(t, i): e for (t, i), e in ends.items() if e}
    with pytest.raises(GroupBusyError, match="1 live member"):
        reset(
            s,
            s.sink_group("duckdb"),
            [s.kafka.normalized_topic, s.kafka.dlq_topic],
            to_earliest=True,
        )
    assert kafka_tools.committed_offsets(s, s.sink_group("duckdb")) == committed_before

    stop_workers([sink])
    p.workers.remove(sink)
    # The bundled broker keeps listing a member that left (LeaveGroup, session timeout) as
    # Stable, so here the operator confirms with --force; real Kafka empties the group.
    assert live_members(s, s.sink_group("duckdb"))
    moved = cli_json(
        p, "offsets", "reset", "--sink", "duckdb", "--to-offset", "0:1", "--force", "--json"
    )
    part0 = next(
        r
        for r in moved["partitions"]
        if r["topic"] == s.kafka.normalized_topic and r["partition"] == 0
    )
    assert part0["committed"] == 1 and part0["lag"] == ends[(s.kafka.normalized_topic, 0)] - 1
    reset(
        s,
        s.sink_group("duckdb"),
        [s.kafka.normalized_topic, s.kafka.dlq_topic],
        force=True,
        to_latest=True,
    )  # true ends, not the broker's under-reported "latest"
    assert kafka_tools.committed_offsets(s, s.sink_group("duckdb")) == {
        kafka_tools.TopicPartition(t, i): e for (t, i), e in ends.items()
    }
