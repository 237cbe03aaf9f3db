"""PII redaction of sensitive properties before they leave our hands.

Sensitive paths are the models' sensitive properties (``prompt_preview`` of
``prompt_blocked``) plus ``redaction.paths`` from configuration.  Their text
is masked - emails, API keys and tokens (``sk-...``, ``AKIA...``, ``ghp_...``,
JWTs, bearer tokens, long opaque tokens, ``password=...``), card numbers
(Luhn-checked) and phone numbers - then cut to ``redaction.max_length``.
Beside each redacted value an HMAC-SHA256 of the original (keyed with
``redaction.hmac_secret``) is kept as ``<key>_hash``, so analysts can count
repeats without reading them.

Redaction is recorded in ``context.etl.redacted`` (the paths done), which
makes it idempotent: a redacted event passing a second redactor is left alone
(and its hash still describes the original text).

Where it runs (see mappers/governance.py): in the normalize stage by default,
so the warehouse and every sink get the redacted form.  With
``redaction.keep_raw_in_warehouse`` the normalized events keep the raw text
and only the non-warehouse sinks' delivering agents redact.  Nothing here
ever logs a value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from typing import Any

import orjson

from etl.config import RedactionSettings
from mappers.models import SENSITIVE_PROPERTIES

EMAIL = "[email]"
SECRET = "[secret]"
CARD = "[card]"
PHONE = "[phone]"
ELLIPSIS = "…"

_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers and key=value credentials keep their label.
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/]{8,}=*"), r"\1 " + SECRET),
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token)(\s*[:=]\s*)[\"']?[^\s\"',;]{4,}"
        ),
        r"\1\2" + SECRET,
    ),
    # Vendor key formats.
    (
        re.compile(r"\bsk-(?:live-|test-|proj-|ant-|or-)?[A-Za-z0-9_\-]{8,}"),
        SECRET,
    ),  # OpenAI, Anthropic, ...
    (re.compile(r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"), SECRET),  # Stripe
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[A-Z0-9]{16}\b"), SECRET),  # AWS access key ids
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), SECRET),  # GitHub tokens
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), SECRET),
    (re.compile(r"\bglpat-[A-Za-z0-9_\-]{16,}"), SECRET),  # GitLab
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), SECRET),  # Slack
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), SECRET),  # Google API keys
    (re.compile(r"\b(?:phc|phx|phs)_[A-Za-z0-9]{16,}"), SECRET),  # PostHog
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}"), SECRET),  # JWT
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        SECRET,
    ),
    # Long opaque tokens: 32+ characters mixing letters and digits.
    (
        re.compile(
            r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*\d)(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}"
        ),
        SECRET,
    ),
)
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_CARD_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
_PHONE_CANDIDATE = re.compile(r"(?<![\w+])(\+)?(?:\(?\d{1,4}\)?[\s.\-]?){2,6}\d{2,4}(?!\w)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return CARD if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(ch.isdigit() for ch in text)
    # With "+" an international number; without, 9+ digits so dates and
    # small numbers stay.
    if (match.group(1) and 7 <= digits <= 15) or 9 <= digits <= 15:
        return PHONE
    return text


def mask_text(text: str) -> str:
    """``text`` with secrets, emails, card and phone numbers masked (not cut)."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = _EMAIL.sub(EMAIL, text)
    text = _CARD_CANDIDATE.sub(_card, text)
    return _PHONE_CANDIDATE.sub(_phone, text)


def _parse_path(path: str) -> tuple[str, tuple[str, ...]]:
    parts = tuple(p for p in path.strip().split(".") if p)
    if not parts:
        raise ValueError("empty redaction path")
    if parts[0] in ("properties", "context") and len(parts) > 1:
        return parts[0], parts[1:]
    return "properties", parts


class Redactor:
    """Redacts the configured sensitive paths of unified events in place."""

    def __init__(
        self,
        settings: RedactionSettings | None = None,
        sensitive: Iterable[str] = SENSITIVE_PROPERTIES,
    ) -> None:
        self.settings = settings or RedactionSettings()
        paths = [*sorted(sensitive), *self.settings.paths]
        parsed: dict[str, tuple[str, tuple[str, ...]]] = {}
        for path in paths:
            root, parts = _parse_path(path)
            parsed[".".join((root, *parts))] = (root, parts)
        self.paths = parsed
        # First keys under properties/context: most events have none of them,
        # and one set test lets them through untouched.
        self._raw_markers = tuple({parts[-1].encode() for _, parts in parsed.values()})
        self._heads = {
            root: frozenset(parts[0] for r, parts in parsed.values() if r == root)
            for root in ("properties", "context")
        }
        self.max_length = self.settings.max_length
        secret = self.settings.hmac_secret
        self._key = secret.get_secret_value().encode() if secret is not None else None

    # ------------------------------------------------------------------ text
    def redact_text(self, text: str) -> str:
        masked = mask_text(text)
        if len(masked) > self.max_length:
            masked = masked[: self.max_length] + ELLIPSIS
        return masked

    def keyed_hash(self, text: str) -> str | None:
        if self._key is None:
            return None
        return hmac.new(self._key, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._redact_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._redact_value(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            masked = mask_text(str(value))
            return value if masked == str(value) else masked
        return value

    # ----------------------------------------------------------------- events
    def redact_event(self, event: dict[str, Any]) -> bool:
        """Redact ``event`` in place; True when a value was redacted now."""
        props, ctx = event.get("properties"), event.get("context")
        if (not isinstance(props, dict) or self._heads["properties"].isdisjoint(props)) and (
            not isinstance(ctx, dict) or self._heads["context"].isdisjoint(ctx)
        ):
            return False
        context = event.get("context")
        etl_meta = context.get("etl") if isinstance(context, dict) else None
        done = etl_meta.get("redacted", ()) if isinstance(etl_meta, dict) else ()
        redacted_now: list[str] = []
        for name, (root, parts) in self.paths.items():
            if name in done:
                continue
            parent = event.get(root)
            for part in parts[:-1]:
                if not isinstance(parent, dict):
                    break
                parent = parent.get(part)
            if not isinstance(parent, dict):
                continue
            leaf = parts[-1]
            value = parent.get(leaf)
            if value is None:
                continue
            parent[leaf] = self._redact_value(value)
            digest = self.keyed_hash(value if isinstance(value, str) else _canonical(value))
            if digest is not None:
                parent[f"{leaf}_hash"] = digest
            redacted_now.append(name)
        if not redacted_now:
            return False
        context = event.get("context")
        if not isinstance(context, dict):
            context = event["context"] = {}
        meta = context.get("etl")
        if not isinstance(meta, dict):
            meta = context["etl"] = {}
        meta["redacted"] = [*meta.get("redacted", []), *redacted_now]
        return True

    def redact_events(self, events: Iterable[dict[str, Any]]) -> int:
        """Redact every event in place; returns how many were changed."""
        return sum(1 for ev in events if self.redact_event(ev))

    def redact_raw(self, raw: bytes) -> tuple[bytes, dict[str, str]] | None:
        """A raw message (dead letter) with its sensitive paths redacted, or None when it has none.

        Returns the redacted bytes and the keyed hash of each redacted value
        (``{"properties.prompt_preview": hmac}``), taken from the original
        text: a requeue of the dead letter then lands the same hash as the
        live path would have.  JSON events and batch envelopes keep their
        shape; a payload that is not JSON but names a sensitive key is
        masked as a whole.
        """
        if not any(leaf in raw for leaf in self._raw_markers):
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace")
            masked = mask_text(text)
            return (masked.encode(), {}) if masked != text else None
        items = (
            doc.get("batch")
            if isinstance(doc, dict) and isinstance(doc.get("batch"), list)
            else [doc]
        )
        changed = False
        hashes: dict[str, str] = {}
        for item in items:
            if isinstance(item, dict):
                for root in ("properties", "context"):
                    if not isinstance(item.get(root), (dict, type(None))):
                        item[root] = self._redact_value(
                            item[root]
                        )  # malformed, but may hold the text
                        changed = True
                changed = self._redact_paths(item, hashes if len(items) == 1 else None) or changed
        return (orjson.dumps(doc), hashes) if changed else None

    def _redact_paths(self, item: dict[str, Any], hashes: dict[str, str] | None) -> bool:
        changed = False
        for name, (root, parts) in self.paths.items():
            parent = item.get(root)
            for part in parts[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parent.get(parts[-1]) is not None:
                value = parent[parts[-1]]
                digest = self.keyed_hash(value if isinstance(value, str) else _canonical(value))
                if hashes is not None and digest is not None:
                    hashes[name] = digest
                parent[parts[-1]] = self._redact_value(value)
                changed = True
        return changed

    def restore(self, event: dict[str, Any], hashes: dict[str, str]) -> None:
        """Mark an event whose raw payload was redacted before (a requeued dead letter) as redacted.

        Its text is already masked; the keyed hashes of the original text
        travel beside the dead letter, so the event lands exactly as it
        would have from the original payload.
        """
        done: list[str] = []
        for name, digest in hashes.items():
            if name not in self.paths:
                continue
            root, parts = self.paths[name]
            parent = event.get(root)
            for part in parts[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict) and parent.get(parts[-1]) is not None:
                parent[f"{parts[-1]}_hash"] = digest
                done.append(name)
        if done:
            context = event.setdefault("context", {})
            meta = context.setdefault("etl", {})
            meta["redacted"] = [*meta.get("redacted", []), *done]


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
