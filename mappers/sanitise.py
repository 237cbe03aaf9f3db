"""Sanitising values before they land: NULs stripped, oversized strings cut,
runaway nesting refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mappers.errors import EventRejected, Reason

TRUNCATION_MARKER = "…[truncated]"


@dataclass(slots=True)
class Sanitised:
    """What sanitising changed in one event (noted in ``context.etl``)."""

    truncated: list[str] = field(default_factory=list)
    nul_stripped: bool = False


#: Shared "nothing was sanitised" state for the common case (never mutated).
CLEAN = Sanitised(truncated=[], nul_stripped=False)


class Sanitiser:
    def __init__(self, max_string_length: int, max_depth: int) -> None:
        self.max_len = max_string_length
        self.max_depth = max_depth

    def needs_cleaning(self, raw: bytes) -> bool:
        """False when the bytes prove there is nothing to sanitise (the common case).

        In valid JSON a NUL can only appear as the escape ``\\u0000``; no string
        can be longer than the whole document; and nesting cannot be deeper
        than the number of brackets.
        """
        return (
            len(raw) > self.max_len
            or b"\\u0000" in raw
            or raw.count(b"{") + raw.count(b"[") > self.max_depth
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
        if kind is dict:
            self._check_depth(depth, path)
            out = {}
            for key, item in value.items():
                if "\x00" in key:
                    key = key.replace("\x00", "")
                    state.nul_stripped = True
                out[key] = self.clean(item, depth + 1, f"{path}.{key}", state)
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
