"""Local emulators of the warehouses the sinks write to, driven by the real vendor clients.

* :mod:`.snowflake` - fakesnow in server mode for ``snowflake-connector-python``.
* :mod:`.bigquery` - bqemulator (own virtualenv) for ``google-cloud-bigquery``.
* :mod:`.fixtures` - session-scoped pytest fixtures built on both.
"""

from .bigquery import (
    BigQueryEmulator,
    BigQueryEmulatorError,
    ensure_bqemulator_venv,
    install_spatial_extension,
)
from .snowflake import FakeSnowflakeServer, FakeSnowflakeStartError, fakesnow_server

__all__ = [
    "BigQueryEmulator",
    "BigQueryEmulatorError",
    "FakeSnowflakeServer",
    "FakeSnowflakeStartError",
    "ensure_bqemulator_venv",
    "fakesnow_server",
    "install_spatial_extension",
]
