"""PostHog as a flag source, through the posthog SDK.

Local evaluation from the definitions the SDK polls (rollouts, variants,
workspace group flags); the remote ``/flags`` endpoint only for what local
evaluation cannot decide, with a short timeout and a back-off after failure.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from etl.config import CoreSettings, FlagSettings, PostHogSettings
from mappers.flags.decision import FlagDecision

log = logging.getLogger("etl.flags")


class PostHogFlags:
    """Decisions from PostHog through the posthog SDK (local evaluation,
    remote /flags when needed).
    """

    def __init__(self, posthog: PostHogSettings, flags: FlagSettings) -> None:
        from posthog import Posthog

        assert posthog.api_key is not None
        self.api_key = posthog.api_key.get_secret_value()
        self.host = posthog.host
        self.remote_timeout = flags.remote_timeout
        self.remote_backoff = flags.remote_backoff
        personal = posthog.personal_api_key.get_secret_value() if posthog.personal_api_key else None
        # urllib3 logs request URLs at DEBUG; the definitions URL carries the project key.
        url_log = logging.getLogger("urllib3.connectionpool")
        if url_log.getEffectiveLevel() < logging.INFO:
            url_log.setLevel(logging.INFO)
        self.local = personal is not None
        # sync_mode/send=False: this client only evaluates flags; it never
        # queues events (no $feature_flag_called either: send_feature_flag_events=False).
        self.client = Posthog(
            self.api_key,
            host=self.host,
            secret_key=personal,
            sync_mode=True,
            send=False,
            poll_interval=max(0.25, flags.cache_ttl / 2),
            feature_flags_request_timeout_seconds=flags.remote_timeout,
            feature_flags_request_max_retries=0,
            disable_geoip=True,
        )
        self._known_for: Any = None
        self._known: frozenset[str] = frozenset()
        self.remote_blocked_until = 0.0
        self._loaded = threading.Event()

    def start(self, wait: float) -> None:
        """Load definitions (and start the SDK's poller) in the background;
        wait at most ``wait`` seconds.
        """
        if not self.local:
            return

        def load() -> None:
            try:
                self.client.load_feature_flags()
            finally:
                self._loaded.set()

        threading.Thread(target=load, name="posthog-flag-definitions", daemon=True).start()
        self._loaded.wait(wait)

    def close(self) -> None:
        self._loaded.wait(1.0)
        try:
            self.client.shutdown()
        except Exception as exc:  # noqa: BLE001 - shutting down must not fail the worker
            log.warning("posthog flag client shutdown: %s", type(exc).__name__)

    @property
    def definitions(self) -> Any:
        """The definitions list the SDK evaluates with (a new object on each change), or None."""
        return self.client.feature_flags

    def known(self) -> frozenset[str] | None:
        defs = self.client.feature_flags
        if defs is None:
            return None
        if defs is not self._known_for:
            self._known = frozenset(
                str(f["key"]) for f in defs if isinstance(f, dict) and f.get("key") is not None
            )
            self._known_for = defs
        return self._known

    def decide(
        self, key: str, distinct_id: str, workspace_id: str | None, remote_allowed: bool
    ) -> FlagDecision | None:
        groups = {"workspace": workspace_id} if workspace_id else {}
        known = self.known()
        if known is not None:
            if key not in known:
                return None  # PostHog does not define it: the database decides
            result = self.client.get_feature_flag_result(
                key,
                distinct_id,
                groups=groups,
                only_evaluate_locally=True,
                send_feature_flag_events=False,
            )
            if result is not None:
                return FlagDecision(
                    key, bool(result.enabled), result.variant, "posthog", result.payload
                )
        if not remote_allowed or time.monotonic() < self.remote_blocked_until:
            return None
        return self._remote(key, distinct_id, groups)

    def _remote(self, key: str, distinct_id: str, groups: dict[str, str]) -> FlagDecision | None:
        # The SDK's own /flags request (?v=4) and response parsing; called
        # directly, not through Client, because Client swallows errors and we
        # must tell "PostHog is down" (back off) from "flag unknown".
        from posthog.request import flags as flags_request
        from posthog.types import normalize_flags_response

        try:
            response = normalize_flags_response(
                flags_request(
                    self.api_key,
                    self.host,
                    timeout=self.remote_timeout,
                    max_retries=0,
                    distinct_id=distinct_id,
                    groups=groups,
                    person_properties={},
                    group_properties={},
                    geoip_disable=True,
                    flag_keys_to_evaluate=[key],
                )
            )
        except Exception as exc:  # noqa: BLE001 - any failure: back off, fallback decides
            self.remote_blocked_until = time.monotonic() + self.remote_backoff
            log.warning(
                "posthog /flags unavailable (%s); the flag database decides for %.0fs",
                type(exc).__name__,
                self.remote_backoff,
            )
            return None
        quota_limited: Any = response.get("quotaLimited") or []
        if "feature_flags" in quota_limited:
            self.remote_blocked_until = time.monotonic() + self.remote_backoff
            return None
        detail = response["flags"].get(key)
        if detail is None or getattr(detail, "failed", False):
            return None
        payload = detail.metadata.payload if getattr(detail, "metadata", None) else None
        return FlagDecision(key, bool(detail.enabled), detail.variant, "posthog", payload)


def posthog_configured(settings: CoreSettings) -> bool:
    """Whether PostHog is a flag source: a project key, and a personal key unless remote mode."""
    mode = settings.flags.posthog_mode
    if mode == "off" or settings.posthog.api_key is None:
        return False
    return settings.posthog.personal_api_key is not None or mode == "remote"
