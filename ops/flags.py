"""``etl flags``: administer the flag database and evaluate a flag."""

from __future__ import annotations

from typing import Any

import orjson

from mappers.flags import FlagService, FlagStore, StoredFlag
from sinks.settings import Settings


class FlagCommandError(ValueError):
    """A wrong `etl flags` invocation (shown as usage error)."""


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def parse_variants(text: str | None) -> tuple[dict[str, Any], ...]:
    """``"control:50,test:50"`` or a JSON list -> variant dicts."""
    if not text:
        return ()
    text = text.strip()
    if text.startswith("["):
        return tuple(dict(v) for v in orjson.loads(text))
    out = []
    for part in _csv(text):
        name, sep, pct = part.partition(":")
        if not sep:
            raise FlagCommandError(f"variant {part!r}: write key:percentage")
        out.append({"key": name.strip(), "rollout_percentage": float(pct)})
    return tuple(out)


def run_flags_command(args: list[str], settings: Settings, **opts: Any) -> str:
    if not args:
        raise FlagCommandError("give an action: list | get KEY | set KEY | delete KEY | migrate")
    action, rest = args[0], args[1:]
    store = FlagStore.from_settings(settings.flags)
    as_json = opts.get("json_output", False)
    if action == "migrate":
        applied = store.migrate()
        return (
            orjson.dumps({"store": store.describe(), "applied": applied}).decode()
            if as_json
            else (
                f"{store.describe()}: applied {applied}"
                if applied
                else f"{store.describe()}: up to date"
            )
        )
    if action == "list":
        flags = sorted(store.load().values(), key=lambda f: f.key)
        if as_json:
            return orjson.dumps([f.as_dict() for f in flags]).decode()
        lines = [f"{'key':32} {'on':3} {'rollout':>7}  variants / targets"]
        for f in flags:
            extra = ", ".join(f"{v['key']}:{v['rollout_percentage']:g}" for v in f.variants)
            if f.target_workspaces:
                extra += f" workspaces={','.join(f.target_workspaces)}"
            if f.target_users:
                extra += f" users={','.join(f.target_users)}"
            rollout = "-" if f.rollout_percentage is None else f"{f.rollout_percentage:g}%"
            lines.append(
                f"{f.key:32} {'yes' if f.enabled else 'no':3} {rollout:>7}  {extra.strip()}"
            )
        return "\n".join(lines)
    if len(rest) != 1:
        raise FlagCommandError(f"{action} needs exactly one flag KEY")
    key = rest[0]
    if action == "set":
        try:
            flag = store.upsert(
                StoredFlag(
                    key=key,
                    enabled=opts["enabled"],
                    rollout_percentage=opts.get("rollout"),
                    variants=parse_variants(opts.get("variants")),
                    target_workspaces=_csv(opts.get("workspaces")),
                    target_users=_csv(opts.get("users")),
                    bucket_by=opts.get("bucket_by") or "user",
                    description=opts.get("description"),
                )
            )
        except ValueError as exc:
            raise FlagCommandError(str(exc)) from None
        return (
            orjson.dumps(flag.as_dict()).decode() if as_json else f"set {key} in {store.describe()}"
        )
    if action == "delete":
        return f"deleted {key}" if store.delete(key) else f"{key} was not stored"
    if action == "get":
        stored = store.load().get(key)
        with FlagService(settings) as service:
            decision = service.decide(key, opts.get("distinct_id"), opts.get("workspace"))
        doc = {
            "stored": stored.as_dict() if stored else None,
            "decision": {"key": key, **decision.as_context()},
        }
        if as_json:
            return orjson.dumps(doc).decode()
        state = "on" if decision.enabled else "off"
        variant = f" variant={decision.variant}" if decision.variant else ""
        return f"{key}: {state}{variant} (source {decision.source})" + (
            "" if stored else " [not in the flag database]"
        )
    raise FlagCommandError(f"unknown action {action!r}: list | get | set | delete | migrate")
