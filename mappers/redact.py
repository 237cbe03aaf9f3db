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
import unicodedata
from collections.abc import Iterable
from typing import Any

import orjson

from etl.config import RedactionSettings
from mappers.identifiers import normalize_identifier
from mappers.models import SENSITIVE_PROPERTIES

EMAIL = "[email]"
SECRET = "[secret]"
CARD = "[card]"
PHONE = "[phone]"
ELLIPSIS = "…"

# Secret kinds, after the rule sets secret scanners maintain (written here,
# not copied): vendor key formats first, then generic credentials.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers and key=value credentials keep their label.
    (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9\-._~+/]{8,}=*"), r"\1 " + SECRET),
    (
        re.compile(
            r"(?i)(password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token"
            r"|client[_-]?secret|private[_-]?key|secret[_-]?access[_-]?key)"
            r"(\s*[:=]\s*)[\"']?[^\s\"',;]{4,}"
        ),
        r"\1\2" + SECRET,
    ),
    # Credentials inside a URL: scheme://user:password@host.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s:/@]+:)[^\s@/]{3,}(@)"), r"\1" + SECRET + r"\2"),
    # Vendor key formats.
    (
        re.compile(r"\bsk-(?:live-|test-|proj-|ant-|or-)?[A-Za-z0-9_\-]{8,}"),
        SECRET,
    ),  # OpenAI, Anthropic, OpenRouter
    (re.compile(r"\b(?:sk|pk|rk|whsec)_(?:live|test)_[A-Za-z0-9]{8,}"), SECRET),  # Stripe
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), SECRET),  # AWS ids
    # AWS secret access keys: 40 characters of base64 with both cases and a digit or / or +.
    (
        re.compile(
            r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])"
            r"(?=[A-Za-z0-9/+]*[0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"
        ),
        SECRET,
    ),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{20,}"), SECRET),  # GitHub tokens
    (re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"), SECRET),
    (re.compile(r"\bglpat-[A-Za-z0-9_\-]{16,}"), SECRET),  # GitLab
    (re.compile(r"\bxox[abposre]-[A-Za-z0-9\-]{10,}"), SECRET),  # Slack tokens
    (re.compile(r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_\-]+"), SECRET),
    (
        re.compile(r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[\w\-]+"),
        SECRET,
    ),
    (re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"), SECRET),  # Google API keys
    (re.compile(r"\bya29\.[0-9A-Za-z_\-]{20,}"), SECRET),  # Google OAuth access tokens
    (re.compile(r"\bGOCSPX-[0-9A-Za-z_\-]{20,}"), SECRET),  # Google OAuth client secrets
    (re.compile(r"\b(?:phc|phx|phs)_[A-Za-z0-9]{16,}"), SECRET),  # PostHog
    (re.compile(r"\bSG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}"), SECRET),  # SendGrid
    (re.compile(r"\b(?:SK|AC)[0-9a-fA-F]{32}\b"), SECRET),  # Twilio
    (re.compile(r"\bkey-[0-9a-zA-Z]{32}\b"), SECRET),  # Mailgun
    (re.compile(r"\bnpm_[A-Za-z0-9]{36}\b"), SECRET),  # npm
    (re.compile(r"\bpypi-[A-Za-z0-9_\-]{50,}"), SECRET),  # PyPI upload tokens
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), SECRET),  # Hugging Face
    (re.compile(r"\bdapi[0-9a-f]{32}\b"), SECRET),  # Databricks
    (re.compile(r"\bdop_v1_[0-9a-f]{64}\b"), SECRET),  # DigitalOcean
    (re.compile(r"\bshp(?:at|ca|pa|ss)_[0-9a-fA-F]{32}\b"), SECRET),  # Shopify
    (re.compile(r"\bsq0(?:atp|csp)-[0-9A-Za-z_\-]{22,}"), SECRET),  # Square
    (re.compile(r"\b(?:gsk|r8|lin_api|glc|glsa|pul|dp\.pt)[_.\-][A-Za-z0-9_\-]{20,}"), SECRET),
    (re.compile(r"\bhv[sb]\.[A-Za-z0-9_\-]{20,}"), SECRET),  # HashiCorp Vault
    (re.compile(r"\bsecret_[A-Za-z0-9]{40,}"), SECRET),  # Notion
    (re.compile(r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}\b"), SECRET),  # Telegram bot tokens
    (re.compile(r"(?i)\bAccountKey=[A-Za-z0-9+/=]{40,}"), SECRET),  # Azure storage
    (re.compile(r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b"), SECRET),
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
# Unicode-aware (\w): an address in look-alike letters is still an address.
_EMAIL = re.compile(r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)*\.[^\W\d_]{2,}")
_CARD_CANDIDATE = re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)")
_PHONE_CANDIDATE = re.compile(r"(?<![\w+])(\+)?(?:\(?\d{1,4}\)?[\s.\-]?){2,6}\d{2,4}(?!\w)")
#: Letters that look Latin but are not (Cyrillic, Greek): folded for matching only.
_LOOKALIKES = str.maketrans(
    "аеорсухіјѕԁԛԝАВЕКМНОРСТУХІЈЅοαειкνρτυχΑΒΕΗΙΚΜΝΟΡΤΥΧΖ",
    "aeopcyxijsdqwABEKMHOPCTYXIJSoaeikvptuxABEHIKMNOPTYXZ",
)


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
    # small numbers stay.  More than 15 digits is several numbers side by side.
    if digits > 15:
        # Several numbers side by side are separate groups; one unbroken
        # run of digits (an order number) is not a phone number.
        return PHONE if len(re.findall(r"\d+", text)) >= 4 else text
    if (match.group(1) and digits >= 7) or digits >= 9:
        return PHONE
    return text


_RULES: tuple[tuple[re.Pattern[str], str], ...] = (*_SECRET_PATTERNS, (_EMAIL, EMAIL))


def mask_text(text: str) -> str:
    """``text`` with secrets, emails, card and phone numbers masked (not cut).

    Matching runs on the NFKC form (fullwidth ``＠`` is ``@``) with look-alike
    letters folded to Latin; the fold is one character for one, so the spans
    found apply to the NFKC text, which is what is returned when something
    was masked.  Rules apply in order; a later match overlapping an earlier
    one is left to it.  Card and phone numbers are masked last, in turn.
    """
    norm = text if text.isascii() else unicodedata.normalize("NFKC", text)
    folded = norm if norm.isascii() else norm.translate(_LOOKALIKES)
    spans: list[tuple[int, int, str]] = []
    for pattern, replacement in _RULES:
        for m in pattern.finditer(folded):
            start, end = m.span()
            if start == end or any(start < e and s < end for s, e, _ in spans):
                continue
            spans.append((start, end, m.expand(replacement)))
    if spans:
        spans.sort()
        parts, last = [], 0
        for start, end, out in spans:
            parts.append(norm[last:start])
            parts.append(out)
            last = end
        parts.append(norm[last:])
        text = "".join(parts)
    # Numbers in sequence: a card first, then phone numbers in what is left.
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
        # A key spelt another way (promptPreview, Prompt-Preview) names the same field.
        self._raw_marker = re.compile(
            "|".join(
                r"[\W_]*".join(map(re.escape, parts[-1].split("_"))) for _, parts in parsed.values()
            ).encode(),
            re.I,
        )
        self._heads = {
            root: frozenset(parts[0] for r, parts in parsed.values() if r == root)
            for root in ("properties", "context")
        }
        #: Keys seen that name no sensitive field in any spelling (a C-speed subset test).
        self._clean_keys: dict[str, set[str]] = {"properties": set(), "context": set()}
        self.max_length = self.settings.max_length
        secret = self.settings.hmac_secret
        self._key = secret.get_secret_value().encode() if secret is not None else None

    def _touches(self, obj: Any, root: str) -> bool:
        """Whether ``obj`` has a key naming a sensitive field under ``root``, in any spelling."""
        heads = self._heads[root]
        if not isinstance(obj, dict) or not heads:
            return False
        clean = self._clean_keys[root]
        if clean.issuperset(obj):
            return False
        if not heads.isdisjoint(obj):
            return True
        if len(clean) > 100_000:
            clean.clear()  # bounded: hostile streams send endless new keys
        for key in obj:
            if key not in clean:
                if normalize_identifier(key.lstrip("$")) in heads:
                    return True
                clean.add(key)
        return False

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
        if not self._touches(props, "properties") and not self._touches(ctx, "context"):
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
            hit = False
            for leaf in same_field_keys(parent, parts[-1]):
                value = parent.get(leaf)
                if value is None:
                    continue
                parent[leaf] = self._redact_value(value)
                digest = self.keyed_hash(value if isinstance(value, str) else _canonical(value))
                if digest is not None:
                    parent[f"{leaf}_hash"] = digest
                hit = True
            if hit:
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
        if self._raw_marker.search(raw) is None:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            text = raw.decode("utf-8", "replace")
            masked = mask_text(text)
            return (masked.encode(), {}) if masked != text else None
        batch = doc.get("batch") if isinstance(doc, dict) else None
        items: list[Any] = batch if isinstance(batch, list) else [doc]
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
            if not isinstance(parent, dict):
                continue
            for leaf in same_field_keys(parent, parts[-1]):
                if parent.get(leaf) is None:
                    continue
                value = parent[leaf]
                digest = self.keyed_hash(value if isinstance(value, str) else _canonical(value))
                if hashes is not None and digest is not None and leaf == parts[-1]:
                    hashes[name] = digest
                parent[leaf] = self._redact_value(value)
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


def same_field_keys(parent: dict[str, Any], leaf: str) -> list[str]:
    """Keys of ``parent`` naming ``leaf``: itself, and keys the identifier rule maps onto it."""
    keys = [leaf] if leaf in parent else []
    keys.extend(
        k
        for k in parent
        if k != leaf and not k.endswith("_hash") and normalize_identifier(k.lstrip("$")) == leaf
    )
    return keys


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
