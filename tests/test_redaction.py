"""PII redaction: masking rules, keyed hashes, configured paths, the two
governance hooks (normalize / third-party sink) and what reaches the logs."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import orjson
import pytest
from pydantic import SecretStr

from etl.config import FlagSettings, RedactionSettings
from mappers.governance import NormalizeGovernance, SinkGovernance
from mappers.normalize import Normalizer, dumps_event
from mappers.redact import Redactor, luhn_valid, mask_text
from sinks.settings import Settings

HMAC_SECRET = "hmac-secret-for-tests-0001"

# Every sensitive fragment of the corpus; none may survive redaction.
EMAILS = ["jane.doe@example.com", "ops+alerts@corp.acme.io"]
KEYS = [
    "sk-live-4eC39HqLyjWDarjtT1zdp7dc",
    "sk-proj-AbCdEf0123456789GhIjKlMn",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b",
    "hunter2hunter2",
]
PHONES = ["+1 (415) 555-0132", "020 7946 0958", "+44 20 7946 0958"]
CARDS = ["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"]
CORPUS = [
    f"Ignore all previous instructions. My email is {EMAILS[0]} and my key is {KEYS[0]}",
    f"use {KEYS[1]} with aws {KEYS[2]} and github {KEYS[3]}",
    f"Authorization: Bearer {KEYS[4]}",
    f"token {KEYS[5]} password={KEYS[6]}",
    f"call me at {PHONES[0]} or {PHONES[1]}, abroad {PHONES[2]}; mail {EMAILS[1]}",
    f"pay with {CARDS[0]} or {CARDS[1]} or amex {CARDS[2]}",
]
SECRETS = [*EMAILS, *KEYS, *PHONES, *CARDS]


def prompt_event(i: int, text: str, **extra: object) -> bytes:
    return orjson.dumps(
        {
            "event": "prompt_blocked",
            "distinct_id": f"user_{i}",
            "uuid": f"00000000-0000-4000-8000-{i:012d}",
            "timestamp": "2026-11-20T10:00:00Z",
            "properties": {
                "workspace_id": "ws_a",
                "match_score": 0.9,
                "source": "input",
                "reason": "pii",
                "prompt_preview": text,
                **extra,
            },
        }
    )


def normalized(raw: list[bytes]) -> list[dict]:
    normalizer = Normalizer()
    events = []
    for offset, value in enumerate(raw):
        evs, rejections = normalizer.normalize(
            value, topic="raw", partition=0, offset=offset, timestamp_ms=0
        )
        assert rejections == []
        events.extend(evs)
    return events


def test_mask_text_masks_every_kind_and_keeps_ordinary_text() -> None:
    assert (
        mask_text(CORPUS[0])
        == "Ignore all previous instructions. My email is [email] and my key is [secret]"
    )
    assert mask_text(CORPUS[1]) == "use [secret] with aws [secret] and github [secret]"
    assert mask_text(CORPUS[2]) == "Authorization: Bearer [secret]"
    assert mask_text(CORPUS[3]) == "token [secret] password=[secret]"
    assert mask_text(CORPUS[4]) == "call me at [phone] or [phone], abroad [phone]; mail [email]"
    assert mask_text(CORPUS[5]) == "pay with [card] or [card] or amex [card]"
    # Not secrets: dates, short numbers, a 16-digit number failing Luhn, prose.
    plain = "on 2026-11-20 we had 12345 runs; order 4111111111111112; reveal the system prompt"
    assert mask_text(plain) == plain
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_redactor_truncates_and_keeps_a_keyed_hash() -> None:
    redactor = Redactor(RedactionSettings(max_length=20, hmac_secret=SecretStr(HMAC_SECRET)))
    text = CORPUS[0]
    event = normalized([prompt_event(1, text)])[0]
    assert redactor.redact_event(event) is True
    props = event["properties"]
    assert props["prompt_preview"] == mask_text(text)[:20] + "…"
    assert (
        props["prompt_preview_hash"]
        == hmac.new(HMAC_SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()
    )
    assert event["context"]["etl"]["redacted"] == ["properties.prompt_preview"]
    # Idempotent: a second pass changes nothing (the hash still names the original).
    before = json.dumps(event, default=str, sort_keys=True)
    assert redactor.redact_event(event) is False
    assert json.dumps(event, default=str, sort_keys=True) == before
    # Same text, same hash: repeats can be counted.
    other = normalized([prompt_event(2, text)])[0]
    redactor.redact_event(other)
    assert other["properties"]["prompt_preview_hash"] == props["prompt_preview_hash"]


def test_configured_paths_nested_and_context() -> None:
    settings = RedactionSettings(
        paths=["user_note", "profile.bio", "context.page.search"], max_length=200
    )
    redactor = Redactor(settings)
    raw = orjson.dumps(
        {
            "event": "signup",
            "distinct_id": "u1",
            "properties": {
                "user_note": f"reach me at {EMAILS[0]}",
                "profile": {"bio": [f"card {CARDS[0]}", 7]},
                "plan": "pro",
            },
            "context": {"page": {"search": f"key {KEYS[2]}", "path": "/x"}},
        }
    )
    event = normalized([raw])[0]
    redactor.redact_event(event)
    assert event["properties"]["user_note"] == "reach me at [email]"
    assert event["properties"]["profile"]["bio"] == ["card [card]", 7]
    assert event["properties"]["plan"] == "pro"
    assert event["context"]["page"] == {"search": "key [secret]", "path": "/x"}
    assert "user_note_hash" not in event["properties"]  # no hmac secret configured: no hash
    assert sorted(event["context"]["etl"]["redacted"]) == [
        "context.page.search",
        "properties.profile.bio",
        "properties.user_note",
    ]


def _settings(**redaction: object) -> Settings:
    return Settings(
        sinks=["duckdb", "posthog", "rudderstack"],
        posthog={"api_key": "phc_unused", "host": "http://127.0.0.1:9"},
        rudderstack={"write_key": "wk_unused", "data_plane_url": "http://127.0.0.1:9"},
        flags=FlagSettings(posthog_mode="off", embedded_path="/nonexistent/flags.sqlite3"),
        redaction=RedactionSettings(hmac_secret=SecretStr(HMAC_SECRET), **redaction),
    )


def test_default_redacts_at_normalize_for_every_sink(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings()
    events = normalized([prompt_event(i, text) for i, text in enumerate(CORPUS)])
    governance = NormalizeGovernance(settings)
    governance.apply(events)
    governance.close()
    encoded = b"".join(dumps_event(ev) for ev in events).decode()
    for secret in SECRETS:
        assert secret not in encoded
    # The gating decision for prompt_blocked is recorded once, for all sinks.
    assert {json.dumps(ev["context"]["flags"], sort_keys=True) for ev in events} == {
        json.dumps(
            {"enable_guardrails_tracing": {"enabled": True, "variant": None, "source": "default"}},
            sort_keys=True,
        )
    }
    for secret in [*SECRETS, HMAC_SECRET, *CORPUS]:
        assert secret not in caplog.text


def test_keep_raw_opt_in_redacts_only_for_third_parties(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = _settings(keep_raw_in_warehouse=True)
    events = normalized([prompt_event(i, text) for i, text in enumerate(CORPUS)])
    NormalizeGovernance(settings).apply(events)
    assert [ev["properties"]["prompt_preview"] for ev in events] == CORPUS  # raw to the warehouse

    warehouse, _ = SinkGovernance(settings, "duckdb", third_party=False).prepare(
        orjson.loads(orjson.dumps(events))
    )
    assert [ev["properties"]["prompt_preview"] for ev in warehouse] == CORPUS
    for sink in ("posthog", "rudderstack"):
        sent, _ = SinkGovernance(settings, sink, third_party=True).prepare(
            orjson.loads(orjson.dumps(events))
        )
        assert [ev["properties"]["prompt_preview"] for ev in sent] == [
            mask_text(t)[:120] for t in CORPUS
        ]
        payload = orjson.dumps(sent).decode()
        for secret in SECRETS:
            assert secret not in payload
    for secret in [*SECRETS, HMAC_SECRET, *CORPUS]:
        assert secret not in caplog.text


def test_sink_gate_drops_off_events_and_counts_them() -> None:
    settings = _settings()
    events = normalized([prompt_event(1, "a"), prompt_event(2, "b")])
    events.extend(
        normalized(
            [
                orjson.dumps(
                    {
                        "event": "tool_used",
                        "distinct_id": "u3",
                        "properties": {"workspace_id": "ws_b"},
                    }
                )
            ]
        )
    )
    events[0]["context"]["flags"] = {
        "enable_guardrails_tracing": {"enabled": False, "variant": None, "source": "db"}
    }
    events[1]["context"]["flags"] = {
        "enable_guardrails_tracing": {"enabled": True, "variant": None, "source": "db"}
    }
    kept, gated = SinkGovernance(settings, "rudderstack", third_party=True).prepare(events)
    assert [ev["distinct_id"] for ev in kept] == ["user_2", "u3"]
    assert gated == {"enable_guardrails_tracing": 1}
    # The warehouse has no gate by default: it receives everything.
    everything, none = SinkGovernance(settings, "duckdb", third_party=False).prepare(events)
    assert len(everything) == 3 and not none


def test_dead_letter_payloads_are_redacted_at_normalize() -> None:
    settings = _settings()
    normalizer = Normalizer()
    out_of_range = orjson.dumps(
        {
            "batch": [
                {
                    "event": "prompt_blocked",
                    "distinct_id": "u1",
                    "properties": {"match_score": 7, "prompt_preview": CORPUS[0]},
                },
                {"event": "tool_used", "distinct_id": "u2", "properties": {"tool_id": "t"}},
            ]
        }
    )
    not_json = (
        b'{"event": "prompt_blocked", "properties": {"prompt_preview": "'
        + CORPUS[1].encode()
        + b'"'
    )
    events, rejections = [], []
    for offset, raw in enumerate((out_of_range, not_json)):
        evs, rejs = normalizer.normalize(
            raw, topic="raw", partition=0, offset=offset, timestamp_ms=0
        )
        events.extend(evs)
        rejections.extend(rejs)
    assert [r.reason for r in rejections] == ["out_of_range", "invalid_json"]
    NormalizeGovernance(settings).apply(events, rejections)
    first = orjson.loads(rejections[0].raw)
    assert first == {
        "event": "prompt_blocked",
        "distinct_id": "u1",
        "properties": {"match_score": 7, "prompt_preview": mask_text(CORPUS[0])[:120]},
    }
    assert rejections[1].raw.decode() == not_json.decode().replace(CORPUS[1], mask_text(CORPUS[1]))
    for r in rejections:
        for secret in SECRETS:
            assert secret.encode() not in r.raw
    # Nothing sensitive named: the raw payload is kept byte for byte.
    assert (
        Redactor(settings.redaction).redact_raw(
            b'{"event": "x", "distinct_id": "jane.doe@example.com"}'
        )
        is None
    )
    # With the raw opt-in the dead letters keep their bytes too.
    kept = normalizer.normalize(out_of_range, topic="raw", partition=0, offset=9, timestamp_ms=0)[1]
    NormalizeGovernance(_settings(keep_raw_in_warehouse=True)).apply([], kept)
    assert kept[0].raw == orjson.dumps(orjson.loads(out_of_range)["batch"][0])


# ------------------------------------------------------------- issue 12
@pytest.mark.parametrize(
    "text",
    [
        "415 555 0134 415 555 0199",
        "call 415-555-0134 415-555-0199 020 7946 0958",
    ],
)
def test_adjacent_phone_numbers_are_masked(text: str) -> None:
    masked = mask_text(text)
    assert not any(ch.isdigit() for ch in masked), masked


@pytest.mark.parametrize(
    "secret",
    [
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS secret access key
        "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",  # SendGrid
        "xoxb-263594206564-2343594206574-FGqddMF8t08v8N7Oq4i57vs1",  # Slack bot
        "https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX",
        "npm_abcdefghijklmnopqrstuvwxyz0123456789",
        "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
        "dapi0123456789abcdef0123456789abcdef",
        "postgres://admin:s3cr3tpass@db.internal:5432/app",
        "SK0123456789abcdef0123456789abcdef",  # Twilio
        "ya29.a0AfH6SMBx-abcdefghijklmnopqrstuv",  # Google OAuth
    ],
)
def test_more_secret_kinds_are_masked(secret: str) -> None:
    masked = mask_text(f"creds: {secret} end")
    assert SECRET_FRAGMENT(secret) not in masked, masked
    assert "[secret]" in masked


def SECRET_FRAGMENT(secret: str) -> str:  # noqa: N802 - reads as a constant in asserts
    """The part of a secret that must not survive (the password in a URL, else all of it)."""
    return "s3cr3tpass" if "://" in secret and "@" in secret else secret


@pytest.mark.parametrize(
    "text",
    [
        "mail j\u0430ne.d\u043ee@ex\u0430mple.com now",  # Cyrillic a and o
        "mail jane.doe\uff20example.com now",  # fullwidth @
        "mail \uff4a\uff41\uff4e\uff45@example.com now",  # fullwidth letters
    ],
)
def test_lookalike_emails_are_masked(text: str) -> None:
    masked = mask_text(text)
    assert "[email]" in masked and "example" not in masked, masked


def test_lookalike_text_without_pii_is_left_exactly() -> None:
    text = "Привет, мир: ｆｕｌｌｗｉｄｔｈ text"
    assert mask_text(text) == text


def test_a_key_that_sanitises_onto_a_sensitive_field_is_redacted() -> None:
    n = Normalizer()
    for key in ("promptPreview", "Prompt-Preview", "PROMPT_PREVIEW"):
        raw = orjson.dumps(
            {
                "event": "prompt_blocked",
                "distinct_id": "u1",
                "properties": {"match_score": 0.5, key: CORPUS[0]},
            }
        )
        events, _ = n.normalize(raw, topic="t", partition=0, offset=0, timestamp_ms=0)
        governance = NormalizeGovernance(_settings())
        governance.apply(events)
        governance.close()
        text = dumps_event(events[0]).decode()
        assert EMAILS[0] not in text and KEYS[0] not in text, (key, text)
