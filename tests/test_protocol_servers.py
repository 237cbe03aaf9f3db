"""The local PostHog / RudderStack servers, driven by the real vendor SDKs.

Expected flag buckets are recomputed here with hashlib, independently of both
the fake server and the SDK, so any of the three disagreeing fails a test.
"""

import base64
import gzip
import hashlib
import json
import threading
import time
import uuid

import pytest
import requests
from posthog import Posthog
from posthog.request import AI_EVENTS_ENDPOINT, APIError, batch_post
from posthog.request import get as posthog_get
from rudderstack.analytics import Client as RudderClient
from rudderstack.analytics.request import APIError as RudderAPIError

try:
    from tests.servers import PostHogServer, RudderStackServer
except ImportError:  # pytest put tests/ (not the repo root) on sys.path
    from servers import PostHogServer, RudderStackServer

PROJECT_KEY = "phc_e2e_project_key"
PERSONAL_KEY = "phx_e2e_personal_key"
WRITE_KEY = "2bXe2eWriteKey"

pytestmark = pytest.mark.timeout(30)


# -- independent reference implementations --------------------------------------------


def bucket(flag_key, identifier, salt=""):
    digest = hashlib.sha1(f"{flag_key}.{identifier}{salt}".encode()).hexdigest()
    return int(digest[:15], 16) / 0xFFFFFFFFFFFFFFF


def expected_variant(flag_key, identifier, variants):
    point = bucket(flag_key, identifier, salt="variant")
    low = 0.0
    for key, pct in variants:
        if low <= point < low + pct / 100:
            return key
        low += pct / 100
    return None


def compact_size(obj):
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def event_of_size(size, event_uuid):
    event = {"event": "big", "distinct_id": "u1", "uuid": event_uuid, "properties": {"blob": ""}}
    event["properties"]["blob"] = "x" * (size - compact_size(event))
    assert compact_size(event) == size
    return event


def make_event(name="order_completed", distinct_id="user_1", **properties):
    return {
        "event": name,
        "distinct_id": distinct_id,
        "uuid": str(uuid.uuid4()),
        "timestamp": "2024-05-01T10:00:00+00:00",
        "properties": properties,
    }


class FakeClock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self):
        return self.now


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert leaked == []


@pytest.fixture
def ph():
    with PostHogServer(PROJECT_KEY, PERSONAL_KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def rudder():
    with RudderStackServer(WRITE_KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def ph_client(ph):
    # sync_mode: $feature_flag_called events are sent inline, no consumer thread.
    # The flag poller starts on load_feature_flags(); shutdown() stops it.
    client = Posthog(
        PROJECT_KEY,
        secret_key=PERSONAL_KEY,  # 7.x name for personal_api_key
        host=ph.url,
        sync_mode=True,
        poll_interval=3600,
        feature_flags_request_timeout_seconds=5,
    )
    yield client
    client.shutdown()


def statuses(server, path=None):
    reqs = server.requests if path is None else server.requests_to(path)
    return [r.status for r in reqs]


# -- PostHog /batch/ ----------------------------------------------------------------


@pytest.mark.parametrize("use_gzip", [True, False])
def test_batch_post_records_exact_payload(ph, use_gzip):
    events = [
        make_event(amount=12.5, items=["a", "b"], nested={"ok": True}),
        make_event("$identify", "user_2", **{"$set": {"plan": "pro"}}),
    ]
    res = batch_post(PROJECT_KEY, host=ph.url, gzip=use_gzip, batch=events)

    assert res.status_code == 200
    assert res.json() == {"status": 1}
    assert ph.events == [dict(e, historical_migration=False) for e in events]
    assert ph.uuids() == [e["uuid"] for e in events]
    assert ph.events_by_uuid()[events[1]["uuid"]]["event"] == "$identify"

    [req] = ph.requests
    assert (req.method, req.path, req.status) == ("POST", "/batch/", 200)
    assert req.header("content-encoding") == ("gzip" if use_gzip else None)
    assert req.raw_body.startswith(b"\x1f\x8b") is use_gzip
    assert sorted(req.json) == ["api_key", "batch", "sent_at"]
    assert req.json["api_key"] == PROJECT_KEY
    assert req.json["batch"] == events


def test_historical_migration_flag_is_kept_per_batch(ph):
    live, backfill = make_event("live"), make_event("backfill")
    batch_post(PROJECT_KEY, host=ph.url, batch=[live])
    batch_post(PROJECT_KEY, host=ph.url, batch=[backfill], historical_migration=True)

    assert [(e["event"], e["historical_migration"]) for e in ph.events] == [
        ("live", False),
        ("backfill", True),
    ]
    assert ph.batches[1]["historical_migration"] is True


def test_ai_lane_endpoint_is_a_batch_endpoint(ph):
    event = make_event("$ai_generation")
    batch_post(PROJECT_KEY, host=ph.url, path=AI_EVENTS_ENDPOINT, batch=[event])
    assert ph.uuids() == [event["uuid"]]
    assert ph.batches[0]["path"] == "/i/v0/ai/batch/"


def test_posthog_client_capture_in_sync_mode(ph):
    client = Posthog(PROJECT_KEY, host=ph.url, sync_mode=True, gzip=True)
    try:
        event_uuid = str(uuid.uuid4())
        returned = client.capture(
            "signup", distinct_id="user_9", properties={"plan": "pro"}, uuid=event_uuid
        )
    finally:
        client.shutdown()

    assert returned == event_uuid
    [event] = ph.events
    assert (event["event"], event["distinct_id"], event["uuid"]) == ("signup", "user_9", event_uuid)
    assert event["properties"]["plan"] == "pro"
    assert event["properties"]["$lib"] == "posthog-python"
    assert ph.requests[0].header("content-encoding") == "gzip"


def test_wrong_project_key_is_401_with_posthog_error_body(ph):
    with pytest.raises(APIError) as err:
        batch_post("phc_wrong", host=ph.url, batch=[make_event()])

    assert err.value.status == 401
    assert err.value.message.startswith("Project API key invalid")
    assert ph.requests[0].status == 401
    assert ph.events == []


def test_event_without_distinct_id_is_400(ph):
    event = make_event()
    del event["distinct_id"]
    with pytest.raises(APIError) as err:
        batch_post(PROJECT_KEY, host=ph.url, batch=[event])
    assert err.value.status == 400
    assert ph.events == []


@pytest.mark.parametrize("delta,accepted", [(-1, True), (0, True), (1, False)])
def test_per_event_size_limit(ph, delta, accepted):
    assert ph.max_event_bytes == 1024 * 1024  # PostHog's documented 1 MB
    event = event_of_size(ph.max_event_bytes + delta, str(uuid.uuid4()))

    if accepted:
        batch_post(PROJECT_KEY, host=ph.url, gzip=True, batch=[event])
        assert ph.uuids() == [event["uuid"]]
    else:
        with pytest.raises(APIError) as err:
            batch_post(PROJECT_KEY, host=ph.url, gzip=True, batch=[event])
        assert err.value.status == 413
        assert ph.events == []


@pytest.mark.parametrize("extra,status", [(0, 200), (1, 413)])
def test_request_size_limit_counts_decompressed_bytes(ph, extra, status):
    assert ph.max_body_bytes == 20 * 1024 * 1024  # documented 20 MB
    ph.max_body_bytes = 4096
    body = json.dumps({"api_key": PROJECT_KEY, "batch": [make_event()]}).encode()
    body += b" " * (4096 - len(body) + extra)  # whitespace keeps the JSON valid
    wire = gzip.compress(body)
    assert len(wire) < 4096

    res = requests.post(
        ph.url + "/batch/",
        data=wire,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=5,
    )

    assert res.status_code == status
    assert len(ph.events) == (1 if status == 200 else 0)


# -- fault injection ------------------------------------------------------------------


def test_rate_limit_with_retry_after_then_recovers(ph):
    fault = ph.rate_limit_next(retry_after=7)
    event = make_event()

    with pytest.raises(APIError) as err:
        batch_post(PROJECT_KEY, host=ph.url, batch=[event])
    assert err.value.status == 429
    assert err.value.retry_after == 7.0
    assert ph.events == []

    batch_post(PROJECT_KEY, host=ph.url, batch=[event])
    assert ph.uuids() == [event["uuid"]]
    assert statuses(ph) == [429, 200]
    assert fault.hits == 1 and len(ph.faults) == 0


def test_scripted_faults_answer_in_order(ph):
    for status in (500, 503, 401, 403):
        ph.faults.push(status=status, path="/batch")
    ph.faults.push(status=418, path="/flags")  # other endpoint: must not fire

    seen = []
    for _ in range(4):
        with pytest.raises(APIError) as err:
            batch_post(PROJECT_KEY, host=ph.url, batch=[make_event()])
        seen.append(err.value.status)
    batch_post(PROJECT_KEY, host=ph.url, batch=[make_event()])

    assert seen == [500, 503, 401, 403]
    assert statuses(ph) == [500, 503, 401, 403, 200]
    assert len(ph.events) == 1
    assert [f.status for f in ph.faults.pending] == [418]


def test_fail_for_time_window_uses_server_clock():
    clock = FakeClock()
    with PostHogServer(PROJECT_KEY, clock=clock) as server:
        fault = server.fail_for(seconds=30, status=503)

        def send():
            try:
                batch_post(PROJECT_KEY, host=server.url, batch=[make_event()])
                return 200
            except APIError as exc:
                return exc.status

        first = [send(), send()]
        clock.now += 29.9
        inside = send()
        clock.now += 0.1  # window is [start, start + 30)
        after = send()

    assert (first, inside, after) == ([503, 503], 503, 200)
    assert fault.hits == 3
    assert len(server.events) == 1


def test_slow_response_times_out_client_but_server_still_accepts(ph):
    ph.slow_next(0.3)
    event = make_event()

    with pytest.raises(requests.exceptions.Timeout):
        batch_post(PROJECT_KEY, host=ph.url, batch=[event], timeout=0.1)
    # The classic ambiguous delivery: the client gave up, the server kept the event.
    ph.wait_for(lambda s: len(s.events) == 1, timeout=2)
    assert ph.uuids() == [event["uuid"]]

    ph.slow_next(0.2, status=503)
    started = time.monotonic()
    with pytest.raises(APIError) as err:
        batch_post(PROJECT_KEY, host=ph.url, batch=[make_event()], timeout=5)
    assert err.value.status == 503
    assert time.monotonic() - started >= 0.2


def test_dropped_connection_raises_connection_error(ph):
    ph.drop_next(2)

    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(ph.url + "/batch/", json={"api_key": PROJECT_KEY, "batch": []}, timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        batch_post(PROJECT_KEY, host=ph.url, batch=[make_event()])
    batch_post(PROJECT_KEY, host=ph.url, batch=[make_event()])

    assert statuses(ph) == [None, None, 200]
    assert [r.dropped for r in ph.requests] == [True, True, False]
    assert len(ph.events) == 1


def test_poison_event_can_be_found_by_bisection(ph):
    events = [make_event(distinct_id=f"user_{i}") for i in range(5)]
    poison = events[3]["uuid"]
    fault = ph.reject_ids(poison, status=400)

    def send(batch):
        try:
            batch_post(PROJECT_KEY, host=ph.url, batch=batch)
            return []
        except APIError as exc:
            assert exc.status == 400
            if len(batch) == 1:
                return [batch[0]["uuid"]]
            mid = len(batch) // 2
            return send(batch[:mid]) + send(batch[mid:])

    assert send(events) == [poison]
    assert ph.uuids() == [e["uuid"] for i, e in enumerate(events) if i != 3]
    assert statuses(ph) == [400, 200, 400, 200, 400, 400, 200]
    assert fault.hits == 4


def test_posthog_consumer_thread_retries_after_503(ph):
    ph.fail_next(status=503)
    client = Posthog(PROJECT_KEY, host=ph.url, flush_at=1, flush_interval=0.05, max_retries=1)
    try:
        event_uuid = client.capture("retried", distinct_id="user_1")
        ph.wait_for(lambda s: len(s.events) == 1, timeout=10)  # SDK backs off 1 s
    finally:
        client.shutdown()

    assert ph.uuids() == [event_uuid]
    assert statuses(ph) == [503, 200]
    assert [r.json["batch"][0]["uuid"] for r in ph.requests] == [event_uuid] * 2


def test_stop_is_prompt_with_idle_keepalive_and_slow_request():
    server = PostHogServer(PROJECT_KEY).start()
    session = requests.Session()  # leaves a pooled keep-alive connection open
    ok = session.post(
        server.url + "/batch/", json={"api_key": PROJECT_KEY, "batch": [make_event()]}, timeout=5
    )
    assert ok.status_code == 200

    fault = server.slow_next(30)
    outcome = []

    def slow_call():
        try:
            requests.post(
                server.url + "/batch/",
                json={"api_key": PROJECT_KEY, "batch": [make_event()]},
                timeout=10,
            )
            outcome.append("answered")
        except requests.exceptions.ConnectionError:
            outcome.append("dropped")

    caller = threading.Thread(target=slow_call)
    caller.start()
    deadline = time.monotonic() + 5
    while fault.hits == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    url = server.url

    started = time.monotonic()
    server.stop()
    server.stop()  # idempotent
    caller.join(timeout=5)
    session.close()

    assert time.monotonic() - started < 2
    assert outcome == ["dropped"]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, timeout=1)


# -- PostHog flag definitions ----------------------------------------------------------

GROUP_FLAG = {
    "id": 1,
    "key": "workspace-beta",
    "name": "Beta for chosen workspaces",
    "active": True,
    "ensure_experience_continuity": False,
    "filters": {
        "aggregation_group_type_index": 0,
        "groups": [
            {
                "properties": [
                    {
                        "key": "$group_key",
                        "type": "group",
                        "value": ["ws_a"],
                        "operator": "exact",
                        "group_type_index": 0,
                    }
                ],
                "rollout_percentage": 100,
            }
        ],
    },
}
ROLLOUT_FLAG = {
    "id": 2,
    "key": "half-rollout",
    "active": True,
    "filters": {"groups": [{"properties": [], "rollout_percentage": 50}]},
}
VARIANTS = [("control", 34), ("compact", 33), ("wide", 33)]
MULTIVARIATE_FLAG = {
    "id": 3,
    "key": "checkout-layout",
    "active": True,
    "filters": {
        "groups": [
            {
                "properties": [
                    {"key": "email", "type": "person", "value": "vip@acme.com", "operator": "exact"}
                ],
                "rollout_percentage": 100,
                "variant": "wide",
            },
            {"properties": [], "rollout_percentage": 100},
        ],
        "multivariate": {"variants": [{"key": k, "rollout_percentage": p} for k, p in VARIANTS]},
        "payloads": {"compact": '{"columns": 1}'},
    },
}
# Experience continuity cannot be evaluated locally: the SDK must ask /flags.
STICKY_FLAG = {
    "id": 4,
    "key": "sticky-rollout",
    "active": True,
    "ensure_experience_continuity": True,
    "filters": {"groups": [{"properties": [], "rollout_percentage": 50}]},
}
ALL_FLAGS = [GROUP_FLAG, ROLLOUT_FLAG, MULTIVARIATE_FLAG, STICKY_FLAG]
GROUP_TYPES = {"0": "workspace"}
DEFINITIONS_URL = f"/flags/definitions?token={PROJECT_KEY}&send_cohorts"


def test_flag_definitions_auth_body_and_etag(ph):
    ph.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)

    first = posthog_get(PERSONAL_KEY, DEFINITIONS_URL, host=ph.url)
    assert first.data == {"flags": ALL_FLAGS, "group_type_mapping": GROUP_TYPES, "cohorts": {}}
    assert first.etag == ph.definitions_etag and first.not_modified is False

    again = posthog_get(PERSONAL_KEY, DEFINITIONS_URL, host=ph.url, etag=first.etag)
    assert (again.not_modified, again.data, again.etag) == (True, None, first.etag)

    ph.set_flags([ROLLOUT_FLAG])
    changed = posthog_get(PERSONAL_KEY, DEFINITIONS_URL, host=ph.url, etag=first.etag)
    assert changed.not_modified is False
    assert changed.data["flags"] == [ROLLOUT_FLAG]
    assert changed.data["group_type_mapping"] == GROUP_TYPES  # kept when not given
    assert changed.etag != first.etag

    legacy = posthog_get(
        PERSONAL_KEY,
        f"/api/feature_flag/local_evaluation/?token={PROJECT_KEY}&send_cohorts",
        host=ph.url,
    )
    assert legacy.data == changed.data

    with pytest.raises(APIError) as bad_key:
        posthog_get("phx_wrong", DEFINITIONS_URL, host=ph.url)
    assert (bad_key.value.status, bad_key.value.message) == (401, "Invalid personal API key.")
    with pytest.raises(APIError) as bad_token:
        posthog_get(PERSONAL_KEY, "/flags/definitions?token=phc_other&send_cohorts", host=ph.url)
    assert bad_token.value.status == 401

    req = ph.requests[0]
    assert req.header("authorization") == f"Bearer {PERSONAL_KEY}"
    assert req.query == {"token": PROJECT_KEY, "send_cohorts": ""}
    assert ph.requests[1].header("if-none-match") == first.etag
    assert statuses(ph) == [200, 304, 200, 200, 401, 401]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # feature_enabled/get_feature_flag
def test_local_evaluation_group_flag_per_workspace(ph, ph_client):
    ph.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)
    ph_client.load_feature_flags()

    assert (
        ph_client.feature_enabled("workspace-beta", "user_1", groups={"workspace": "ws_a"}) is True
    )
    assert (
        ph_client.feature_enabled("workspace-beta", "user_1", groups={"workspace": "ws_b"}) is False
    )
    assert (
        ph_client.get_feature_flag("workspace-beta", "user_2", groups={"workspace": "ws_a"}) is True
    )
    assert ph_client.feature_enabled("workspace-beta", "user_3") is False  # no group given

    # Decided locally: one definitions fetch, no /flags call.
    assert [r.path for r in ph.requests if r.path != "/batch/"] == ["/flags/definitions"]
    called = {
        (
            e["distinct_id"],
            e["properties"]["$feature_flag_response"],
            e["properties"]["locally_evaluated"],
        )
        for e in ph.events
        if e["event"] == "$feature_flag_called"
    }
    assert {("user_1", True, True), ("user_1", False, True), ("user_2", True, True)} <= called
    # The server's own evaluation agrees.
    assert (
        ph.evaluate_flag("workspace-beta", "user_1", groups={"workspace": "ws_a"}).enabled is True
    )
    assert (
        ph.evaluate_flag("workspace-beta", "user_1", groups={"workspace": "ws_b"}).enabled is False
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rollout_matches_posthog_hash(ph, ph_client):
    ph.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)
    ph_client.load_feature_flags()
    ids = [f"user_{i}" for i in range(40)]
    expected = {i: bucket("half-rollout", i) <= 0.5 for i in ids}
    assert set(expected.values()) == {True, False}  # the sample exercises both sides

    local = {
        i: ph_client.feature_enabled("half-rollout", i, send_feature_flag_events=False) for i in ids
    }
    remote = {i: ph.evaluate_flag("half-rollout", i).enabled for i in ids}

    assert local == expected
    assert remote == expected
    assert ph.requests_to("/flags") == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_multivariate_variant_and_override(ph, ph_client):
    ph.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)
    ph_client.load_feature_flags()
    ids = [f"user_{i}" for i in range(30)]
    expected = {i: expected_variant("checkout-layout", i, VARIANTS) for i in ids}
    assert set(expected.values()) == {"control", "compact", "wide"}

    local = {
        i: ph_client.get_feature_flag("checkout-layout", i, send_feature_flag_events=False)
        for i in ids
    }
    assert local == expected
    assert {i: ph.evaluate_flag("checkout-layout", i).variant for i in ids} == expected

    control_user = next(i for i in ids if expected[i] == "control")
    assert (
        ph_client.get_feature_flag(
            "checkout-layout",
            control_user,
            person_properties={"email": "VIP@acme.com"},
            send_feature_flag_events=False,
        )
        == "wide"
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_remote_evaluation_fallback_posts_flags_v4(ph, ph_client):
    ph.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)
    ph_client.load_feature_flags()
    ids = [f"user_{i}" for i in range(10)]
    expected = {i: bucket("sticky-rollout", i) <= 0.5 for i in ids}
    assert set(expected.values()) == {True, False}

    got = {
        i: ph_client.get_feature_flag("sticky-rollout", i, send_feature_flag_events=False)
        for i in ids
    }

    assert got == expected
    calls = ph.requests_to("/flags")
    assert [(r.path, r.query, r.status) for r in calls] == [("/flags/", {"v": "4"}, 200)] * len(ids)
    assert [r.json["distinct_id"] for r in calls] == ids
    assert {r.json["api_key"] for r in calls} == {PROJECT_KEY}


def _post_flags(ph, version, **body):
    url = ph.url + "/flags/" + (f"?v={version}" if version else "")
    res = requests.post(url, json={"api_key": PROJECT_KEY, **body}, timeout=5)
    payload = res.json()
    payload.pop("requestId", None)
    payload.pop("evaluatedAt", None)
    return res.status_code, payload


def test_flags_endpoint_response_shapes(ph):
    ph.set_flags([GROUP_FLAG, MULTIVARIATE_FLAG], group_type_mapping=GROUP_TYPES)
    compact_user = next(
        f"user_{i}"
        for i in range(100)
        if expected_variant("checkout-layout", f"user_{i}", VARIANTS) == "compact"
    )
    request = {"distinct_id": compact_user, "groups": {"workspace": "ws_b"}}

    status, v4 = _post_flags(ph, 4, **request)
    assert status == 200
    assert v4 == {
        "errorsWhileComputingFlags": False,
        "flags": {
            "workspace-beta": {
                "key": "workspace-beta",
                "enabled": False,
                "variant": None,
                "value": False,
                "reason": {
                    "code": "no_condition_match",
                    "condition_index": None,
                    "description": "No matching condition set",
                },
                "metadata": {
                    "id": 1,
                    "version": None,
                    "description": "Beta for chosen workspaces",
                    "payload": None,
                    "config_version": 1,
                },
            },
            "checkout-layout": {
                "key": "checkout-layout",
                "enabled": True,
                "variant": "compact",
                "value": "compact",
                "reason": {
                    "code": "condition_match",
                    "condition_index": 1,
                    "description": "Matched condition set 2",
                },
                "metadata": {
                    "id": 3,
                    "version": None,
                    "description": None,
                    "payload": '{"columns": 1}',
                    "config_version": 1,
                    "variant_key": "compact",
                },
            },
        },
    }

    status, v2 = _post_flags(ph, 2, **request)
    assert status == 200
    assert v2["flags"]["checkout-layout"] == {
        "key": "checkout-layout",
        "enabled": True,
        "variant": "compact",
        "reason": {
            "code": "condition_match",
            "condition_index": 1,
            "description": "Matched condition set 2",
        },
        "metadata": {"id": 3, "version": None, "description": None, "payload": '{"columns": 1}'},
    }

    status, legacy = _post_flags(ph, None, **request)
    assert status == 200
    assert legacy == {
        "errorsWhileComputingFlags": False,
        "featureFlags": {"workspace-beta": False, "checkout-layout": "compact"},
        "featureFlagPayloads": {"checkout-layout": '{"columns": 1}'},
    }

    res = requests.post(
        ph.url + "/flags/?v=4", json={"api_key": "phc_wrong", "distinct_id": "x"}, timeout=5
    )
    assert res.status_code == 401
    assert res.json()["detail"].startswith("Project API key invalid")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_definitions_fault_then_recovery_and_304(ph, ph_client):
    ph.set_flags(ALL_FLAGS, group_type_mapping=GROUP_TYPES)
    ph.fail_next(status=500, path=PostHogServer.DEFINITIONS_PATHS)

    ph_client.load_feature_flags()
    assert ph_client.feature_flags is None  # nothing published after the 500

    # The SDK refetches lazily when definitions are missing.
    assert (
        ph_client.feature_enabled(
            "workspace-beta",
            "user_1",
            groups={"workspace": "ws_a"},
            only_evaluate_locally=True,
            send_feature_flag_events=False,
        )
        is True
    )
    ph_client.load_feature_flags()  # unchanged definitions: 304

    defs = ph.requests_to("/flags/definitions")
    assert [r.status for r in defs] == [500, 200, 304]
    assert defs[2].header("if-none-match") == ph.definitions_etag


# -- RudderStack ------------------------------------------------------------------------


def basic_auth(key):
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def as_json(obj):
    return json.loads(json.dumps(obj, default=str))


def test_rudder_sdk_sync_batch_with_basic_auth_and_gzip(rudder):
    client = RudderClient(WRITE_KEY, host=rudder.url, sync_mode=True, gzip=True)
    ok, tracked = client.track(
        user_id="user_1", event="Order Completed", properties={"amount": 12.5}, message_id="m-1"
    )
    ok2, identified = client.identify(user_id="user_1", traits={"plan": "pro"}, message_id="m-2")

    assert ok and ok2
    assert rudder.events == [as_json(tracked), as_json(identified)]
    assert rudder.message_ids() == ["m-1", "m-2"]
    assert rudder.events_by_message_id()["m-1"]["event"] == "Order Completed"
    req = rudder.requests[0]
    assert (req.path, req.status) == ("/v1/batch", 200)
    assert req.header("authorization") == basic_auth(WRITE_KEY)
    assert req.header("content-encoding") == "gzip"
    assert sorted(req.json) == ["batch", "sentAt"]


def test_rudder_auth_failures(rudder):
    client = RudderClient("wrong-key", host=rudder.url, sync_mode=True)
    with pytest.raises(RudderAPIError) as err:
        client.track(user_id="u1", event="E")
    assert (err.value.status, err.value.message) == (401, "Invalid Write Key")

    res = requests.post(rudder.url + "/v1/batch", json={"batch": []}, timeout=5)
    assert (res.status_code, res.text) == (401, "Failed to read writeKey from header")
    assert rudder.events == []


@pytest.mark.parametrize("delta,status", [(-1, 200), (0, 200), (1, 413)])
def test_rudder_per_event_size_limit(rudder, delta, status):
    assert rudder.max_event_bytes == 32 * 1024
    event = {
        "type": "track",
        "event": "big",
        "userId": "u1",
        "messageId": "m-big",
        "properties": {"blob": ""},
    }
    event["properties"]["blob"] = "x" * (rudder.max_event_bytes + delta - compact_size(event))

    res = requests.post(
        rudder.url + "/v1/batch", json={"batch": [event]}, auth=(WRITE_KEY, ""), timeout=5
    )

    assert res.status_code == status
    assert res.text == ("OK" if status == 200 else "Request size exceeds max limit")
    assert rudder.message_ids() == (["m-big"] if status == 200 else [])


def test_rudder_request_size_limit_after_gunzip(rudder):
    assert rudder.max_request_bytes == 4000 * 1024
    rudder.max_request_bytes = 2048
    batch = [
        {"type": "track", "event": "e", "userId": "u1", "messageId": f"m-{i}"} for i in range(40)
    ]
    body = json.dumps({"batch": batch}).encode()
    assert len(body) > 2048

    res = requests.post(
        rudder.url + "/v1/batch",
        data=gzip.compress(body),
        auth=(WRITE_KEY, ""),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=5,
    )

    assert (res.status_code, res.text) == (413, "Request size exceeds max limit")
    assert rudder.events == []


def test_rudder_single_event_endpoints_and_validation(rudder):
    track = {"type": "track", "event": "Signed Up", "anonymousId": "anon-1", "messageId": "m-t"}
    identify = {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}, "messageId": "m-i"}
    for path, event in (("/v1/track", track), ("/v1/identify", identify)):
        res = requests.post(rudder.url + path, json=event, auth=(WRITE_KEY, ""), timeout=5)
        assert (res.status_code, res.text) == (200, "OK")

    anonymous = {"type": "track", "event": "x", "messageId": "m-x"}
    res = requests.post(
        rudder.url + "/v1/batch", json={"batch": [anonymous]}, auth=(WRITE_KEY, ""), timeout=5
    )
    assert (res.status_code, res.text) == (400, "Request neither has anonymousId nor userId")
    res = requests.post(rudder.url + "/v1/nope", json=track, auth=(WRITE_KEY, ""), timeout=5)
    assert res.status_code == 404

    assert rudder.events == [track, identify]
    assert [b["path"] for b in rudder.batches] == ["/v1/track", "/v1/identify"]


def test_rudder_faults(rudder):
    rudder.rate_limit_next(retry_after=3)
    rudder.drop_next(path="/v1/batch")
    rudder.reject_ids("m-bad", status=400)
    client = RudderClient(WRITE_KEY, host=rudder.url, sync_mode=True, gzip=False)

    with pytest.raises(RudderAPIError) as limited:
        client.track(user_id="u1", event="E", message_id="m-1")
    assert (limited.value.status, limited.value.message) == (429, "Max Requests Limit reached")
    assert rudder.requests[0].status == 429

    with pytest.raises(requests.exceptions.ConnectionError):
        client.track(user_id="u1", event="E", message_id="m-1")
    with pytest.raises(RudderAPIError) as poisoned:
        client.track(user_id="u1", event="E", message_id="m-bad")
    assert poisoned.value.status == 400
    client.track(user_id="u1", event="E", message_id="m-1")

    assert rudder.message_ids() == ["m-1"]
    assert statuses(rudder) == [429, None, 400, 200]
