"""One pydantic-settings class for the API, the workers and the CLI (env prefix GRADHEALTH_)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

EMBEDDED_BROKER = "embedded"


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/gradhealth, else ~/.local/share/gradhealth: per user, outside any repo."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "gradhealth"


class Settings(BaseSettings):
    """Every knob of the service; each field is the env var GRADHEALTH_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="GRADHEALTH_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    broker_url: str = EMBEDDED_BROKER
    broker_key_prefix: str = ""
    blob_dir: Path | None = None
    # s3://bucket/prefix: blobs in S3-compatible storage (endpoint and credentials from the AWS_* variables);
    # empty: local disk under blob_dir. With S3, blob_dir holds only partial uploads being received.
    blob_url: str = ""
    max_upload_bytes: int = Field(default=512 * 2**20, gt=0)
    max_log_batch_bytes: int = Field(default=64 * 2**20, gt=0)  # one POST /v1/runs/{id}/logs body
    max_json_bytes: int = Field(default=8 * 2**20, gt=0)  # any other body: a run of 100k layers is ~7 MiB
    analysis_time_limit: float = Field(default=900.0, gt=0)
    analysis_memory_limit_mb: int = Field(default=16384, ge=0)
    device: str | None = None
    warm_sandbox: bool = True
    unsafe_no_sandbox: bool = False  # run models without namespaces: only where every upload is trusted
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    requeue_after_seconds: float = Field(default=300.0, gt=0)
    sweep_interval_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    key_cache_seconds: float = Field(default=5.0, ge=0)
    embedded_poll_interval: float = Field(default=0.1, gt=0)
    log_level: str = "INFO"
    audit_tick_seconds: float = Field(default=30.0, gt=0)
    webhook_max_attempts: int = Field(default=5, ge=1)
    webhook_backoff_seconds: float = Field(default=10.0, ge=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # Webhooks: hosts or CIDRs that may receive despite being internal; how long a claimed delivery is held.
    webhook_allow_hosts: str = ""
    public_url: str = ""  # how clients reach the API (https://gradhealth.example.com): webhook links are absolute
    webhook_lease_seconds: float = Field(default=60.0, gt=0)

    @field_validator("database_url", "broker_url", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object) -> object:
        """An empty env var means 'use the default', not 'connect to an empty URL'."""
        return None if value == "" else value

    @field_validator("blob_url")
    @classmethod
    def _valid_blob_url(cls, value: str) -> str:
        """Refuse a malformed s3:// URL at start-up, not at the first upload."""
        if value:
            from .blobs_s3 import parse_s3_url  # plain parsing; boto3 is imported only by the store itself

            parse_s3_url(value)
        return value

    @property
    def resolved_database_url(self) -> str:
        """SQLite under the data dir unless told otherwise; postgresql:// uses psycopg 3."""
        url = self.database_url or f"sqlite:///{self.data_dir / 'gradhealth.db'}"
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url

    def public_link(self, path: str) -> str:
        """An absolute URL for an API path when the public URL is known, else the path itself."""
        return f"{self.public_url.rstrip('/')}{path}" if self.public_url else path

    @property
    def resolved_blob_dir(self) -> Path:
        """Blobs live under the data dir unless a separate (shared) folder is named."""
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def embedded_broker(self) -> bool:
        """True when the broker is kombu's filesystem transport under the data dir."""
        return self.broker_url == EMBEDDED_BROKER

    @property
    def broker_dir(self) -> Path:
        """Where the embedded broker keeps its message files."""
        return self.data_dir / "broker"

    @property
    def hard_time_limit(self) -> float:
        """Celery's hard limit: the child's own limit plus time to load inputs and save the report."""
        return self.analysis_time_limit + 120.0

    @property
    def visibility_timeout(self) -> float:
        """Redis redelivers unacked tasks after this; it must exceed the longest task."""
        return self.hard_time_limit + 600.0


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (override in tests)."""
    return Settings()
