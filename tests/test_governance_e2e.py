"""Flags and redaction end to end: real broker, real worker processes, the real
PostHog/RudderStack sinks against the local protocol servers, the normalize
worker's flag service reading PostHog flag definitions through the SDK.

``enable_guardrails_tracing`` is a PostHog workspace flag: off for ws_b, then
turned on at run time.  prompt_blocked events of ws_b must reach the
warehouse always, PostHog and RudderStack only while the flag is on; nothing
else is affected.  The prompts are a corpus of emails, API keys, phone and
card numbers, none of which may appear verbatim in any sink payload,
warehouse row or worker log line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import orjson
import pytest

from ops.status import metric_sum
from ops.status import read_samples as scrape
from tests.conftest import warehouse_rows
from tests.servers import PostHogServer, RudderStackServer
from tests.test_redaction import CORPUS, SECRETS

PH_KEY = "phc_governance_e2e_project_key"
PERSONAL_KEY = "phx_governance_e2e_personal_key"
WRITE_KEY = "governance_e2e_write_key"
HMAC_SECRET = "e2e-hmac-secret-never-logged"
TS = "2026-11-20T10:00:00Z"
FLAG = "enable_guardrails_tracing"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


def guardrails_flag(workspaces: list[str]) -> dict:
    return {
        "id": 11,
        "key": FLAG,
        "active": True,
        "filters": {
            "aggregation_group_type_index": 0,
            "groups": [
                {
                    "properties": [
                        {
                            "key": "$group_key",
                            "type": "group",
                            "value": workspaces,
                            "operator": "exact",
                            "group_type_index": 0,
                        }
                    ],
                    "rollout_percentage": 100,
                }
            ],
        },
    }


def batch(phase: int) -> list[bytes]:
    """For each workspace: one prompt_blocked per corpus prompt,
    plus two events gated by other flags and one never gated.
    """
    out = []
    for ws in ("ws_a", "ws_b"):
        for i, prompt in enumerate(CORPUS):
            out.append(
                {
                    "event": "prompt_blocked",
                    "distinct_id": f"{ws}_p{phase}_user_{i}",
                    "uuid": f"0000000{phase}-0000-4000-8000-{ws[-1] * 4}{i:08d}",
                    "timestamp": TS,
                    "properties": {
                        "workspace_id": ws,
                        "match_score": 0.97,
                        "source": "input",
                        "reason": "pii",
                        "prompt_preview": prompt,
                    },
                }
            )
        out.append(
            {
                "event": "$ai_generation",
                "distinct_id": f"{ws}_p{phase}_user_ai",
                "uuid": f"0000000{phase}-1111-4000-8000-{ws[-1] * 12}",
                "timestamp": TS,
                "properties": {"workspace_id": ws, "$ai_model": "m", "$ai_total_cost_usd": 0.01},
            }
        )
        out.append(
            {
                "type": "track",
                "event": "tool_used",
                "userId": f"{ws}_p{phase}_user_tool",
                "messageId": f"tool-{phase}-{ws}",
                "timestamp": TS,
                "properties": {"tool_id": "search", "latency_ms": 12},
                "context": {"groupId": ws},
            }
        )
    return [orjson.dumps(e) for e in out]


def forwarded(
    ph: PostHogServer, rs: RudderStackServer
) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    to_ph = sorted(
        {
            (
                e["event"],
                e["distinct_id"],
                e["properties"].get("workspace_id")
                or e["properties"].get("$groups", {}).get("workspace"),
            )
            for e in ph.events
        }
    )
    to_rs = sorted(
        {
            (
                e["event"],
                e["userId"],
                e["properties"].get("workspace_id") or e.get("context", {}).get("groupId"),
            )
            for e in rs.events
        }
    )
    return to_ph, to_rs


def expected(phase_events: list[bytes], *, ws_b_prompts: bool) -> list[tuple[str, str, str]]:
    rows = []
    for raw in phase_events:
        e = orjson.loads(raw)
        ws = e["properties"].get("workspace_id") or e.get("context", {}).get("groupId")
        if e["event"] == "prompt_blocked" and ws == "ws_b" and not ws_b_prompts:
            continue
        rows.append((e["event"], e.get("distinct_id") or e["userId"], ws))
    return rows


def test_flag_gates_third_parties_per_workspace_and_nothing_sensitive_leaks(
    make_pipeline, tmp_path: Path
) -> None:
    with PostHogServer(PH_KEY, PERSONAL_KEY) as ph, RudderStackServer(WRITE_KEY) as rs:
        ph.set_flags([guardrails_flag(["ws_a"])], group_type_mapping={"0": "workspace"})
        pipeline = make_pipeline(
            sinks=("duckdb", "posthog", "rudderstack"),
            posthog={"api_key": PH_KEY, "host": ph.url},
            rudderstack={"write_key": WRITE_KEY, "data_plane_url": rs.url},
            extra_env={
                "POSTHOG_API_KEY": PH_KEY,
                "POSTHOG_HOST": ph.url,
                "POSTHOG_PERSONAL_API_KEY": PERSONAL_KEY,
                "RUDDERSTACK_WRITE_KEY": WRITE_KEY,
                "RUDDERSTACK_DATA_PLANE_URL": rs.url,
                "ETL_FLAGS__CACHE_TTL": "1",
                "ETL_FLAGS__EMBEDDED_PATH": str(tmp_path / "flags.sqlite3"),
                "ETL_REDACTION__HMAC_SECRET": HMAC_SECRET,
                "ETL_DELIVERY__FLUSH_INTERVAL": "0.2",
                "ETL_LOG_LEVEL": "DEBUG",
            },
        )
        pipeline.start()

        # Phase 1: the flag is off for ws_b.
        first = batch(1)
        # Rejected (match_score out of range): its prompt goes to the dead letters.
        rejected = orjson.dumps(
            {
                "event": "prompt_blocked",
                "distinct_id": "ws_a_p1_rejected",
                "uuid": "00000001-2222-4000-8000-000000000000",
                "timestamp": TS,
                "properties": {
                    "workspace_id": "ws_a",
                    "match_score": 7,
                    "prompt_preview": CORPUS[4],
                },
            }
        )
        pipeline.produce([*first, rejected])
        pipeline.wait_drained(timeout=60)
        to_ph, to_rs = forwarded(ph, rs)
        assert to_ph == sorted(expected(first, ws_b_prompts=False))
        assert to_rs == sorted(expected(first, ws_b_prompts=False))
        for role, sink in (("sink:posthog", "posthog"), ("sink:rudderstack", "rudderstack")):
            samples = scrape(pipeline.worker(role).metrics_url)
            assert metric_sum(samples, "etl_gated_total", sink=sink, flag=FLAG) == len(CORPUS)

        # Phase 2: turned on for ws_b at run time; the change reaches the
        # normalizer with its next definitions poll (within the 1 s TTL).
        polls = len([r for r in ph.requests_to("/flags/definitions") if r.status == 200])
        ph.set_flags([guardrails_flag(["ws_a", "ws_b"])])
        ph.wait_for(
            lambda server: (
                len([r for r in server.requests_to("/flags/definitions") if r.status == 200])
                > polls
            ),
            timeout=5,
        )
        second = batch(2)
        pipeline.produce(second)
        pipeline.wait_drained(timeout=60)
        to_ph, to_rs = forwarded(ph, rs)
        assert to_ph == sorted(
            expected(first, ws_b_prompts=False) + expected(second, ws_b_prompts=True)
        )
        assert to_rs == sorted(
            expected(first, ws_b_prompts=False) + expected(second, ws_b_prompts=True)
        )

        # The warehouse got everything, each gated event with its decision.
        db = pipeline.settings.duckdb.path
        rows = warehouse_rows(
            db,
            "SELECT message_id, workspace_id, json_extract(context, '$.flags') FROM events "
            "WHERE event = 'prompt_blocked' ORDER BY message_id",
        )
        assert len(rows) == 4 * len(CORPUS)
        decisions = {
            (mid[:8], ws, json.dumps(json.loads(flags), sort_keys=True)) for mid, ws, flags in rows
        }

        def recorded(enabled: bool) -> str:
            return json.dumps(
                {FLAG: {"enabled": enabled, "variant": None, "source": "posthog"}}, sort_keys=True
            )

        assert decisions == {
            ("00000001", "ws_a", recorded(True)),
            ("00000001", "ws_b", recorded(False)),
            ("00000002", "ws_a", recorded(True)),
            ("00000002", "ws_b", recorded(True)),
        }
        assert warehouse_rows(
            db, "SELECT count(*) FROM events WHERE event <> 'prompt_blocked'"
        ) == [(8,)]
        assert warehouse_rows(db, "SELECT stage, reason, event FROM rejected_events") == [
            ("normalize", "out_of_range", "prompt_blocked")
        ]
        # Flags PostHog does not define decide by default: open.
        assert {
            json.loads(r[0])["track_model_costs"]["source"]
            for r in warehouse_rows(
                db,
                "SELECT json_extract(context, '$.flags') FROM events "
                "WHERE event = '$ai_generation'",
            )
        } == {"default"}

        # Redacted everywhere; the keyed hash lets analysts count repeats.
        hashes = warehouse_rows(db, "SELECT DISTINCT prompt_preview_hash FROM prompt_blocked")
        assert sorted(h for (h,) in hashes) == sorted(
            hmac.new(HMAC_SECRET.encode(), p.encode(), hashlib.sha256).hexdigest() for p in CORPUS
        )
        dumped = "\n".join(
            str(row)
            for table in ("events", "prompt_blocked", "rejected_events")
            for row in warehouse_rows(db, f"SELECT * FROM {table}")
        )
        payloads = "\n".join(
            r.body.decode("utf-8", "replace") for r in [*ph.requests, *rs.requests]
        )
        pipeline.stop()
        logs = "\n".join(
            p.read_text(errors="replace") for p in (pipeline.work_dir / "logs").glob("*.log")
        )
        assert "[email]" in dumped and "[secret]" in payloads
        for text, where in (
            (dumped, "warehouse"),
            (payloads, "sink payloads"),
            (logs, "worker logs"),
        ):
            for secret in SECRETS:
                assert secret not in text, f"{secret!r} found verbatim in {where}"
        for secret in (HMAC_SECRET, PERSONAL_KEY, PH_KEY, WRITE_KEY):
            assert secret not in logs
        assert ph.errors == [] and rs.errors == []
