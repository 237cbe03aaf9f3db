"""Local fakes of vendor HTTP APIs for end-to-end tests."""

from .base import Fault, FaultQueue, RecordedRequest, RecordingHTTPServer, Response, json_size
from .posthog import FlagEvaluation, PostHogServer, posthog_hash
from .rudderstack import RudderStackServer

__all__ = [
    "Fault",
    "FaultQueue",
    "FlagEvaluation",
    "PostHogServer",
    "RecordedRequest",
    "RecordingHTTPServer",
    "Response",
    "RudderStackServer",
    "json_size",
    "posthog_hash",
]
