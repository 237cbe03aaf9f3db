"""Sanitising values before they land: NULs stripped, long strings cut, deep nesting refused.

Two kinds of value cannot land as sent without losing something, so they are
changed *visibly* (noted in ``context.etl``), never silently:

* an integer outside the signed 64-bit range (what every warehouse's integer
  column and JSON reader can hold) becomes its exact decimal text;
* a key that holds a NUL is stripped of it; when the stripped key meets
  another key of the same object, the key as sent wins and the loser's value
  is kept in ``context.etl.key_collisions`` (the sink records a discard row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mappers.errors import EventRejected, Reason

TRUNCATION_MARKER = "…[truncated]"
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: A JSON number with this many digits may not fit in 64 bits (2**63 has 19).
LONG_NUMBER_DIGITS = 19
#: Every ASCII digit -> "0", every other byte -> " ": a run of 19 zeros is a run of 19 digits.
_DIGIT_RUNS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * LONG_NUMBER_DIGITS


class BigInt(str):
    """An integer literal outside int64, kept as its exact digits (the parser's marker)."""

    __slots__ = ()


def has_long_number(raw: bytes) -> bool:
    """Whether ``raw`` holds a run of 19+ ASCII digits (a translate and a find: 4x a regex)."""
    return _LONG_RUN in raw.translate(_DIGIT_RUNS)


def parse_int(text: str) -> int | BigInt:
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else BigInt(text)


@dataclass(slots=True)
class Sanitised:
    """What sanitising changed in one event (noted in ``context.etl``)."""

    truncated: list[str] = field(default_factory=list)
    nul_stripped: bool = False
    #: Paths whose integer was outside int64 and is kept as exact decimal text.
    big_integers: list[str] = field(default_factory=list)
    #: Keys that lost to another key after NUL stripping: {path, key, value}.
    key_collisions: list[dict[str, Any]] = field(default_factory=list)


#: Shared "nothing was sanitised" state for the common case (never mutated).
CLEAN = Sanitised(truncated=[], nul_stripped=False)


class Sanitiser:
    def __init__(self, max_string_length: int, max_depth: int) -> None:
        self.max_len = max_string_length
        self.max_depth = max_depth

    def needs_cleaning(self, raw: bytes, long_numbers: bool = True) -> bool:
        """False when the bytes prove there is nothing to sanitise (the common case).

        In valid JSON a NUL can only appear as the escape ``\\u0000``; no string
        can be longer than the whole document; nesting cannot be deeper than
        the number of brackets; and an integer outside int64 needs 19 digits
        (``long_numbers=False``: the whole message was searched and has none).
        """
        return (
            len(raw) > self.max_len
            or b"\\u0000" in raw
            or raw.count(b"{") + raw.count(b"[") > self.max_depth
            or (long_numbers and has_long_number(raw))
        )

    def clean(self, value: Any, depth: int, path: str, state: Sanitised) -> Any:
        kind = type(value)
        if kind is str:
            if "\x00" in value:
                value = value.replace("\x00", "")
                state.nul_stripped = True
            if len(value) > self.max_len:
                state.truncated.append(path)
                value = value[: self.max_len] + TRUNCATION_MARKER
            return value
        if kind is BigInt:
            state.big_integers.append(path)
            return str(value)
        if kind is int:
            if not INT64_MIN <= value <= INT64_MAX:
                state.big_integers.append(path)
                return str(value)
            return value
        if kind is dict:
            self._check_depth(depth, path)
            out = {}
            later = []
            for key, item in value.items():
                if "\x00" in key:
                    later.append((key, item))
                    continue
                out[key] = self.clean(item, depth + 1, f"{path}.{key}", state)
            # Keys as sent first: a NUL-stripped key never overwrites one of them.
            for key, item in later:
                state.nul_stripped = True
                stripped = key.replace("\x00", "")
                cleaned = self.clean(item, depth + 1, f"{path}.{stripped}", state)
                if stripped in out:
                    state.key_collisions.append(
                        {
                            "path": f"{path}.{stripped}",
                            "key": key.replace("\x00", "\\u0000"),
                            "value": cleaned,
                        }
                    )
                    continue
                out[stripped] = cleaned
            return out
        if kind is list:
            self._check_depth(depth, path)
            return [
                self.clean(item, depth + 1, f"{path}[{i}]", state) for i, item in enumerate(value)
            ]
        return value

    def _check_depth(self, depth: int, path: str) -> None:
        if depth > self.max_depth:
            raise EventRejected(
                Reason.TOO_DEEPLY_NESTED,
                f"{path} is nested deeper than {self.max_depth} levels",
                path,
            )
