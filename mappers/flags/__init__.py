"""Feature-flag decisions: PostHog first, then the flag database, then the default.

* ``bucketing``: PostHog's hash buckets and variant ranges;
* ``decision``: a decision and its source;
* ``store``: the flag database (PostgreSQL or embedded SQLite) and its migrations;
* ``posthog``: PostHog through its SDK (local evaluation, remote /flags);
* ``service``: the cached, never-blocking decision service the normalize stage uses.
"""

from mappers.flags.bucketing import bucket, pick_variant
from mappers.flags.decision import FlagDecision, default_decision
from mappers.flags.posthog import PostHogFlags, posthog_configured
from mappers.flags.service import FlagService
from mappers.flags.store import FlagStore, StoredFlag, mask_url

__all__ = [
    "FlagDecision",
    "FlagService",
    "FlagStore",
    "PostHogFlags",
    "StoredFlag",
    "bucket",
    "default_decision",
    "mask_url",
    "pick_variant",
    "posthog_configured",
]
