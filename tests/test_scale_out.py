"""Scale-out: normalize workers in one consumer group share partitions and rebalance
when a worker dies (SIGKILL) or joins, under load, without loss or duplicates."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import orjson

from tests.conftest import warehouse_rows


def readyz(worker) -> dict:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.web_port}/readyz", timeout=2
        ) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while rebalancing: the body still says why
        return json.loads(exc.read())
    except OSError:
        return {"ready": False, "assigned": []}


def wait_assignment(workers, topic: str, partitions: int, timeout: float = 60.0) -> list[set[str]]:
    """Until every worker owns at least one partition of ``topic`` and together exactly all,
    once each.
    """
    deadline = time.monotonic() + timeout
    wanted = {f"{topic}:{p}" for p in range(partitions)}
    while True:
        owned = [
            {a for a in readyz(w).get("assigned", []) if a.startswith(topic + ":")} for w in workers
        ]
        if all(owned) and set().union(*owned) == wanted and sum(map(len, owned)) == partitions:
            return owned
        if time.monotonic() > deadline:
            raise AssertionError(f"assignment did not settle: {owned}")
        time.sleep(0.3)


def drained(p, workers, timeout: float = 90.0) -> None:
    """wait_drained, and on a stall name the stuck partitions and who owns them."""
    from etl import kafka_tools

    try:
        p.wait_drained(timeout)
    except TimeoutError as exc:
        s = p.settings
        committed = kafka_tools.committed_offsets(s, s.normalize_group)
        ends = {
            f"{tp.topic}:{tp.partition}": (committed.get(tp), end)
            for tp, end in p.produced_ends.items()
        }
        owners = {
            w.web_port: (readyz(w)["assigned"], normalized_count(w)) for w in workers if w.alive()
        }
        landed = warehouse_rows(s.duckdb.path, "SELECT count(*) FROM events")[0][0]
        raise AssertionError(
            f"stalled: committed/end {ends}; owners (assigned, normalized) {owners}; "
            f"events in warehouse {landed}\n{str(exc)[:300]}"
        ) from None


def normalized_count(worker) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    prefix = 'etl_events_out_total{outcome="normalized",stage="normalize"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


class Load:
    """Produces ``total`` events in small bursts from a thread, so workers change under load."""

    def __init__(
        self, pipeline, tag: str, total: int, burst: int = 100, pause: float = 0.1
    ) -> None:
        self.ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{i}")) for i in range(total)]
        self.values = [
            orjson.dumps(
                {
                    "event": "scale_out",
                    "distinct_id": f"user-{i % 97}",
                    "uuid": u,
                    "properties": {"i": i},
                }
            )
            for i, u in enumerate(self.ids)
        ]
        self.pipeline, self.burst, self.pause = pipeline, burst, pause
        self.sent = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            for start in range(0, len(self.values), self.burst):
                self.sent += self.pipeline.produce(self.values[start : start + self.burst])
                time.sleep(self.pause)
        except BaseException as exc:  # noqa: BLE001 - surfaced by join()
            self.error = exc

    def start(self) -> Load:
        self.thread.start()
        return self

    def wait_sent(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def join(self) -> None:
        self.thread.join(60)
        assert self.error is None, self.error
        assert self.sent == len(self.values)


def test_workers_share_partitions_and_rebalance_on_crash_and_join(make_pipeline):
    p = make_pipeline(partitions=4)
    s = p.settings
    raw = s.kafka.raw_topic
    first, second, _sink = p.start(["normalize", "normalize", "sink:duckdb"])
    owned = wait_assignment([first, second], raw, 4)
    assert all(len(o) == 2 for o in owned)

    # A worker dies by SIGKILL in the middle of the load: the survivor takes over its partitions.
    load = Load(p, "crash", 3000).start()
    load.wait_sent(1000)
    p.kill("normalize")  # the first alive normalize worker: `first`
    load.join()
    (survivor_owns,) = wait_assignment([second], raw, 4)
    assert len(survivor_owns) == 4
    drained(p, [second])
    ids = set(load.ids)
    assert {r[0] for r in warehouse_rows(s.duckdb.path, "SELECT message_id FROM events")} == ids
    assert warehouse_rows(
        s.duckdb.path, "SELECT count(*), count(DISTINCT message_id) FROM events"
    ) == [(3000, 3000)]

    # A worker added during load gets its share and does work.
    load = Load(p, "join", 3000).start()
    load.wait_sent(500)
    (third,) = p.start(["normalize"])
    owned = wait_assignment([second, third], raw, 4)
    assert all(owned)
    load.join()
    # The load may be over before a slow start completes the join: more once it has.
    after = Load(p, "after-join", 1000).start()
    after.join()
    drained(p, [second, third])
    ids |= set(load.ids) | set(after.ids)
    assert {r[0] for r in warehouse_rows(s.duckdb.path, "SELECT message_id FROM events")} == ids
    assert warehouse_rows(
        s.duckdb.path, "SELECT count(*), count(DISTINCT message_id) FROM events"
    ) == [(7000, 7000)]
    assert normalized_count(third) > 0 and normalized_count(second) > 0
