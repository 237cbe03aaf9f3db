"""The Snowflake sink's settings section (apart from the sink, so that reading the
settings does not load Arrow and Parquet into every worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, SecretStr

from sinks.warehouse_sql import LoadPolicySettings


class SnowflakeSettings(LoadPolicySettings):
    model_config = ConfigDict(populate_by_name=True)
    vendor_env: ClassVar[dict[str, str]] = {
        "SNOWFLAKE_ACCOUNT": "account",
        "SNOWFLAKE_USER": "user",
        "SNOWFLAKE_PASSWORD": "password",
        "SNOWFLAKE_PRIVATE_KEY_FILE": "private_key_file",
        "SNOWFLAKE_PRIVATE_KEY_PASSPHRASE": "private_key_passphrase",
        "SNOWFLAKE_ROLE": "role",
        "SNOWFLAKE_WAREHOUSE": "warehouse",
        "SNOWFLAKE_DATABASE": "database",
        "SNOWFLAKE_SCHEMA": "schema",
    }
    required: ClassVar[tuple[str, ...]] = ("account", "user")

    account: str | None = Field(None, description="Account identifier (orgname-account).")
    user: str | None = Field(None, description="Login name.")
    password: SecretStr | None = Field(None, description="Password (or use a private key file).")
    private_key_file: Path | None = Field(
        None, description="PEM private key for key-pair authentication."
    )
    private_key_passphrase: SecretStr | None = Field(
        None, description="Passphrase of the private key file."
    )
    role: str | None = Field(None, description="Role to use.")
    warehouse: str | None = Field(None, description="Virtual warehouse that runs the loads.")
    database: str | None = Field(None, description="Target database.")
    schema_name: str = Field("ANALYTICS", alias="schema", description="Target schema.")
    host: str | None = Field(None, description="Override host (emulators, private link).")
    port: int | None = Field(None, description="Override port (emulators).")
    protocol: Literal["https", "http"] = Field(
        "https", description="https; http only for local emulators."
    )

    def problems(self, section: str) -> list[str]:
        missing = super().problems(section)
        if self.password is None and self.private_key_file is None:
            missing.append(
                f"{self.variables(section, 'password')} or "
                f"{self.variables(section, 'private_key_file')}"
            )
        return missing
