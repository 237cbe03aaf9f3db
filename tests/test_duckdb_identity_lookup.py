"""An identify call for a known user, in a DuckDB warehouse that holds many.

The sink reads the batch's users' current rows, merges the calls into them and
replaces the rows that changed.  The read is a scan of ``users.user_id``
(random ids: zone maps prune nothing, and the sink keeps no index), and the
replacement used to be a second one, a join on the key: 61 ms at 2M users.
The rows were just read, so the sink deletes them by ``rowid`` and DuckDB
reads only the row groups that hold them.  The test watches the real write's
DELETE in DuckDB's profiler and checks the merged row.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson

from tests.conftest import DeleteProfiles, warehouse_filled_by, warehouse_rows
from tests.test_snowflake_sink import unified

#: Users already stored: five of DuckDB's 122,880-row groups.
HISTORY = 500_000


def _identify(message_id: str, user_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "identify",
            "messageId": message_id,
            "timestamp": "2026-11-20T09:00:00Z",
            "userId": user_id,
            "traits": {"plan": "team"},
        }
    )


def test_an_identify_replaces_its_users_row_reading_only_its_row_group(tmp_path: Path) -> None:
    sink, path = warehouse_filled_by(
        tmp_path,
        "INSERT INTO users (user_id, traits, workspace_id, first_identified_at, "
        "last_identified_at, last_message_id, trait_versions) "
        "SELECT md5(i::VARCHAR), '{\"plan\": \"free\"}', 'ws', "
        "TIMESTAMPTZ '2026-11-01 00:00:00+00', TIMESTAMPTZ '2026-11-01 00:00:00+00', 'm-' || i, "
        '\'{"plan": ["2026-11-01T00:00:00Z", "m-\' || i || \'"]}\' '
        f"FROM range({HISTORY}) t(i)",
    )

    sink.open()
    profiles = DeleteProfiles(sink._con, tmp_path / "profile.json")  # type: ignore[arg-type]
    sink._con = profiles  # type: ignore[assignment]
    known = hashlib.md5(str(HISTORY // 2).encode()).hexdigest()  # random-looking, as real ids
    sink.write(unified([_identify("id-known", known), _identify("id-new", "user-new")]))
    sink.close()

    scans = [s for s in profiles.scans if s["extra_info"].get("Table", "").endswith(".users")]
    assert scans, "the write replaced no users row"
    assert sum(s["row_groups_scanned"] for s in scans) <= 1, scans
    assert warehouse_rows(
        path,
        "SELECT user_id, traits->>'plan', last_message_id, "
        "first_identified_at = TIMESTAMPTZ '2026-11-01 00:00:00+00' FROM users "
        f"WHERE user_id IN ('{known}', 'user-new') ORDER BY 1",
    ) == [(known, "team", "id-known", True), ("user-new", "team", "id-new", False)]
    assert warehouse_rows(path, "SELECT count(*), count(DISTINCT user_id) FROM users") == [
        (HISTORY + 1, HISTORY + 1)
    ]
