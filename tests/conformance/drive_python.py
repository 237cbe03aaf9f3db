"""Drives the real Python SDKs (posthog, rudder-sdk-python) against local recorders.

Every call the conformance test checks is made here; the SDKs build the bodies.
"""

from __future__ import annotations

from datetime import datetime

from posthog import Posthog
from rudderstack.analytics import Client as RudderClient


def drive_posthog(host: str, api_key: str, explicit: datetime) -> None:
    ph = Posthog(api_key, host=host, sync_mode=True, disable_geoip=True, max_retries=0)
    ws = "ws_py"
    ph.capture(
        "tool_used",
        distinct_id="py_user_1",
        properties={"tool_id": "tool_p1", "tool_type": "python", "status": "ok", "latency_ms": 7},
        groups={"workspace": ws},
    )
    ph.capture(
        "flow_executed",
        distinct_id="py_user_1",
        properties={"flow_id": "flow_p1", "success": True, "time_ms": 1500, "workspace_id": ws},
        timestamp=explicit,
    )
    ph.capture(
        "$pageview",
        distinct_id="py_user_1",
        properties={"$current_url": "https://app.example.com/agents", "workspace_id": ws},
    )
    ph.capture("template_viewed", properties={"template": "t1"})  # anonymous: no distinct_id
    ph.set(distinct_id="py_user_1", properties={"email": "p1@example.com", "plan": "enterprise"})
    ph.group_identify("workspace", ws, {"name": "Py WS"})
    ph.alias("py_anon_1", "py_user_1")
    ph.shutdown()


def drive_rudder(url: str, write_key: str, explicit: datetime) -> None:
    rs = RudderClient(write_key, url, sync_mode=True, max_retries=0)
    ws = "ws_rpy"
    rs.track(
        "rpy_user_1",
        "tool_used",
        {"tool_id": "tool_q1", "tool_type": "browser", "latency_ms": 33.5, "workspace_id": ws},
    )
    rs.track(
        "rpy_user_1",
        "flow_executed",
        {"flow_id": "flow_q1", "success": True, "time_ms": 10, "workspace_id": ws},
        timestamp=explicit,
    )
    rs.identify("rpy_user_1", {"email": "q1@example.com", "plan": "team"})
    rs.page("rpy_user_1", "Docs", "Getting started", {"url": "https://example.com/docs"})
    rs.group("rpy_user_1", ws, {"name": "RPy WS"})
    rs.alias("rpy_anon_1", "rpy_user_1")
    rs.flush()  # sync_mode sends each call at once; there is no consumer to shut down
