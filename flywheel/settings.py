"""The one settings object: where the data lives and how the services behave.

Values come, highest priority first, from keyword arguments, `FLYWHEEL_*` environment variables
(nested with `__`, e.g. `FLYWHEEL_INGEST__MAX_ITEMS=500`) and `<home>/flywheel.toml`.
The data folder is `--data-dir`, else `$FLYWHEEL_HOME`, else `./.flywheel`.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

CONFIG_FILE = "flywheel.toml"
DB_FILE = "flywheel.duckdb"


class IngestSettings(BaseModel):
    """Limits of the ingestion API; every limit is named in the error a client gets."""

    max_body_bytes: int = Field(16 * 1024 * 1024, description="Largest request body accepted (413 above).")
    max_items: int = Field(5_000, description="Most interactions or feedback items in one request.")
    max_text_chars: int = Field(200_000, description="Longest text of one message, prompt or response.")
    max_messages: int = Field(512, description="Most messages in one interaction.")
    max_queue_items: int = Field(100_000, description="Items waiting for the writer; above it new requests get 503.")
    max_batch_items: int = Field(20_000, description="Most items the writer commits at once.")
    ack_timeout_s: float = Field(30.0, description="How long a request waits for its items to be committed.")


class ProjectSettings(BaseModel):
    """Per-project overrides, under `[projects.NAME]` in flywheel.toml."""

    redact_pii: bool = Field(True, description="Replace PII with typed placeholders before storing.")


class Settings(BaseSettings):
    """Everything configurable in Flywheel."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(Path(".flywheel"), description="The data folder: database, datasets, models, reports.")
    host: str = Field("127.0.0.1", description="Address `flywheel serve` binds.")
    port: int = Field(8000, description="Port `flywheel serve` binds.")
    redact_pii: bool = Field(True, description="Default PII redaction for projects without an override.")
    projects: dict[str, ProjectSettings] = Field(default_factory=dict, description="Per-project settings.")
    ingest: IngestSettings = Field(default_factory=IngestSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # The TOML file lives in the data folder, which is itself a setting: resolve it first.
        home = init_settings.init_kwargs.get("home") or os.environ.get("FLYWHEEL_HOME") or ".flywheel"
        toml = TomlConfigSettingsSource(settings_cls, toml_file=Path(home) / CONFIG_FILE)
        return (init_settings, env_settings, toml)

    @property
    def db_path(self) -> Path:
        return self.home / DB_FILE

    def redacts(self, project: str) -> bool:
        override = self.projects.get(project)
        return self.redact_pii if override is None else override.redact_pii


def load_settings(data_dir: Path | str | None = None) -> Settings:
    """Settings for a data folder (`None`: `$FLYWHEEL_HOME` or `./.flywheel`)."""
    if data_dir is not None:
        return Settings(home=Path(data_dir))
    return Settings()
