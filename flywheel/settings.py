"""The one settings object: where the data lives and how the services behave.

Values come, highest priority first, from keyword arguments, `FLYWHEEL_*` environment variables
(nested with `__`, e.g. `FLYWHEEL_INGEST__MAX_ITEMS=500`) and `<home>/flywheel.toml`.
The data folder is `--data-dir`, else `$FLYWHEEL_HOME`, else `./.flywheel`.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

from flywheel.optimize.options import DTYPES, QUANTIZE, SPECULATIVE

CONFIG_FILE = "flywheel.toml"
DB_FILE = "flywheel.duckdb"
LAKE_FILE = "flywheel.lake"  # the lake's locator (flywheel.store.lake)


class IngestSettings(BaseModel):
    """Limits of the ingestion API; every limit is named in the error a client gets."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    max_body_bytes: int = Field(16 * 1024 * 1024, description="Largest request body accepted (413 above).")
    max_items: int = Field(5_000, description="Most interactions or feedback items in one request.")
    max_text_chars: int = Field(200_000, description="Longest text of one message, prompt or response.")
    max_messages: int = Field(512, description="Most messages in one interaction.")
    max_queue_items: int = Field(100_000, description="Items waiting for the writer; above it new requests get 503.")
    max_batch_items: int = Field(20_000, description="Most items the writer commits at once.")
    max_queue_bytes: int = Field(8 * 1024 * 1024, description=(
        "Bytes of ingestion requests in progress; above it new ones get 503 with Retry-After at once (one "
        "request alone is always admitted). Under overload an accepted request waits about this over the "
        "write throughput (≈2.5 MB/s on 2 cores: ≈3 s); lower it for a tighter latency bound."))
    ack_timeout_s: float = Field(30.0, description="How long a request waits for its items to be committed.")


class RouteSettings(BaseModel):
    """One model the gateway serves, under `[routes.NAME]` in flywheel.toml."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    kind: Literal["local", "upstream", "vllm"] = Field(
        description="local: a Hugging Face model served by our engine; upstream: an OpenAI-compatible "
        "provider; vllm: a vLLM server (upstream plus runtime LoRA loading)."
    )
    path: str | None = Field(None, description="local: the model folder or id for `from_pretrained`.")
    adapters: dict[str, str] = Field(default_factory=dict, description="local: LoRA name -> adapter folder, loaded at start.")
    base_url: str | None = Field(None, description="upstream/vllm: base URL ending in /v1.")
    api_key_env: str | None = Field(None, description="upstream/vllm: environment variable holding the API key.")
    model: str | None = Field(None, description="upstream/vllm: the model name there (default: the route name).")
    fallback: str | None = Field(None, description="Route to use when this one fails.")
    timeout_s: float = Field(60.0, description="upstream/vllm: per-attempt timeout.")
    retries: int = Field(2, ge=0, le=10, description="upstream/vllm: retries on connection errors and 5xx.")
    usd_per_1k_prompt: float = Field(0.0, ge=0, description="Price per 1,000 prompt tokens, for recorded cost.")
    usd_per_1k_completion: float = Field(0.0, ge=0, description="Price per 1,000 completion tokens.")
    max_batch: int = Field(16, ge=1, description="local: most requests generated together.")
    max_wait_ms: float = Field(5.0, ge=0, description="local: how long an idle engine waits for company "
                               "for a first request (later ones join the running batch at the next step).")
    speculative: Literal["off", "ngram"] = Field("off", description="local: speculative decoding of a greedy request "
                                                 "decoding alone: off, or ngram (drafts the tokens that followed the last "
                                                 "occurrence of its latest few tokens; the same output, fewer passes).")
    prefix_cache: bool = Field(True, description="local: compute the keys and values of a prompt prefix that requests "
                               "share (a task's system prompt, its tools) once per model and reuse them: the same "
                               "output, a shorter prefill (serving.prefix).")
    prefix_cache_tokens: int = Field(4096, ge=1, description="local, with prefix_cache: most prefix tokens kept, all "
                                     "models together; the least recently used go first. A token costs layers x 2 x "
                                     "key-value heads x head size x 4 bytes (SmolLM2-135M: 46 KB, so 4096 ≈ 190 MB).")
    projects: list[str] | None = Field(None, description="Projects that may use this route (unset: every project).")
    redact_input: bool = Field(False, description="local: redact PII in prompts before the model sees them, as in "
                               "the (redacted) data it was trained on.")


class GatewaySettings(BaseModel):
    """The OpenAI-compatible gateway."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    max_tokens: int = Field(512, ge=1, description="Cap on `max_tokens` of any request.")
    alias_refresh_s: float = Field(1.0, description="How often aliases are re-read from the deployments table.")


class ServingSettings(BaseModel):
    """How `flywheel serve` guards itself: which adapter folders it loads, per-key rates, slow clients."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    adapter_dirs: list[Path] = Field(default_factory=list, description="Folders, besides <home>/models, that "
                                     "runtime adapters (`lora_path`) may be loaded from.")
    key_requests_per_s: float | None = Field(None, gt=0, description="Per-key requests per second (429 with "
                                             "Retry-After above it); unset: no limit.")
    key_items_per_s: float | None = Field(None, gt=0, description="Per-key ingested items per second (429 above "
                                          "it); unset: no limit.")
    client_timeout_s: float = Field(10.0, gt=0, description="A client that has not sent its headers and body "
                                    "within this time is dropped.")


class Price(BaseModel):
    """USD per 1M tokens of a model the benchmarks call outside the routes."""

    model_config = ConfigDict(extra="forbid")

    prompt: float = Field(0.0, ge=0, description="USD per 1M prompt tokens.")
    completion: float = Field(0.0, ge=0, description="USD per 1M completion tokens.")


class EvalsSettings(BaseModel):
    """What the benchmarks charge for what they call, under `[evals]` (see evals.samplers)."""

    model_config = ConfigDict(extra="forbid")

    hardware_usd_per_hour: float = Field(0.0, ge=0, description="Price of this machine, for local models' cost.")
    prices: dict[str, Price] = Field(default_factory=dict, description="Model or route name -> its token prices.")


class OptimizeSettings(BaseModel):
    """The serving options `flywheel optimize` searches and how long it may take, under `[optimize]`
    (flywheel.optimize.options: every valid combination of these values is an option)."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    dtypes: list[Literal[DTYPES]] = Field(list(DTYPES), description="Weight dtypes to try.")
    quantize: list[Literal[QUANTIZE]] = Field(list(QUANTIZE), description="none, and/or int8 dynamic quantization "
                                              "(float32, merged only).")
    merge: list[bool] = Field([False, True], description="Serve the LoRA as an adapter (false) and/or merged into "
                              "a copy of the base (true).")
    # (`model` is not searched unless asked: on a 2-core CPU it decoded slower than no speculation, bench/serve.py)
    speculative: list[Literal[SPECULATIVE]] = Field([m for m in SPECULATIVE if m != "model"],
                                                    description="Speculative decoding to try: off, "
                                                    "ngram (prompt lookup), table (prompt lookup, else a draft table "
                                                    "trained on the task's answers), model (a draft model: the first "
                                                    "layers of the task's model, fine-tuned on its answers; built once "
                                                    "per model, minutes on CPU; not tried unless listed).")
    max_batch: list[int] = Field(default_factory=list, description="Most rows decoded together, to try (empty: the "
                                 "route's max_batch only).")
    threads: list[int] = Field(default_factory=list, description="Threads of a decoding step, to try (empty: "
                               "torch's default only).")
    layers: list[int] = Field(default_factory=list, description="Decoder layers to keep, to try: the merged model cut "
                              "to its first N layers and fine-tuned on the answers it was trained on (other weights: "
                              "its quality must show not worse on the benchmark; built once per model and N, minutes "
                              "on CPU; empty: all layers only).")
    first_rung: int = Field(16, ge=2, description="Benchmark examples every option answers first; the better half "
                            "goes on to twice as many (successive halving), up to the whole benchmark.")
    time_budget_s: float = Field(900.0, gt=0, description="No new round of the search starts after this many seconds; "
                                 "the pick is made among the options measured furthest.")
    concurrency: int | None = Field(None, ge=1, le=256, description="Requests in flight while measuring (unset: "
                                    "the task's observed concurrency, from its recorded traffic).")
    min_saving: float = Field(0.05, ge=0, lt=1, description="The pick must need this share less compute per "
                              "request than the option serving now, or production does not move (a smaller gain is "
                              "within the measurement's noise); unless the option serving now misses the latency "
                              "objective.")
    after_promotion: bool = Field(False, description="The turn flow optimizes a task after promoting a model to its "
                                  "production (off by default: the search takes minutes on a CPU).")


class TaskSettings(BaseModel):
    """How the loop turns for one task, under `[tasks.NAME]` in flywheel.toml."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    project: str = Field("default", description="The project whose traffic trains this task's models.")
    recipe: str = Field("sft", description="Training recipe: a default's name (sft, sft-full, distill, gkd, dpo) or a file.")
    base_model: str | None = Field(None, description="The student's base model (path or id).")
    teacher: str | None = Field(None, description="A local teacher model for distill/gkd.")
    benchmark: str | None = Field(None, description="Benchmark spec (YAML) that decides promotions.")
    route: str | None = Field(None, description="The local or vllm route that serves this task's candidates.")
    curation: dict = Field(default_factory=dict, description="Curation config (see flywheel.curate.config).")
    gate: dict = Field(default_factory=dict, description="Promotion gate (see flywheel.registry.gate.GateConfig).")
    schedule: str | None = Field("0 3 * * *", description="Cron schedule of the retraining flow (`flywheel up`).")
    min_new_feedback: int | None = Field(None, description="Also turn the loop when this much new feedback arrived.")
    latency_slo_ms: float | None = Field(None, gt=0, description="The task's latency objective: `flywheel optimize` "
                                         "picks only options whose p95 latency is at most this.")

    @model_validator(mode="after")
    def _gate_is_valid(self) -> TaskSettings:
        from dataclasses import fields

        from flywheel.registry.gate import GateConfig  # (the registry imports this module)

        names = [f.name for f in fields(GateConfig)]
        for key in self.gate:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                raise ValueError(f"gate.{key}: unknown gate setting" + (f" (did you mean {close[0]!r}?)" if close else ""))
        GateConfig(**self.gate)  # at load time, not when a turn reaches its gate
        return self


class ProjectSettings(BaseModel):
    """Per-project overrides, under `[projects.NAME]` in flywheel.toml."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset limit

    redact_pii: bool = Field(True, description="Replace PII with typed placeholders before storing.")


class StoreSettings(BaseModel):
    """Where the records live, under `[store]`: the DuckDB file in the data folder (one writer
    process), or a DuckLake lake that several `flywheel serve` replicas write at once
    (flywheel.store.lake; S3 keys come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."""

    model_config = ConfigDict(extra="forbid")  # a typo is an error, not a silently unset backend

    kind: Literal["file", "lake"] = Field("file", description="file: <home>/flywheel.duckdb; lake: DuckLake, "
                                          "with `catalog` and `data_path`.")
    catalog: str | None = Field(None, description="lake: the catalog database, `sqlite:/path/catalog.sqlite` "
                                "(one host) or `postgres:dbname=… host=… port=…` (several).")
    data_path: str | None = Field(None, description="lake: where the Parquet files go, a folder or `s3://bucket/prefix/`.")
    s3_endpoint: str | None = Field(None, description="lake on S3: host[:port] of an S3-compatible service "
                                    "(unset: AWS).")
    s3_region: str = Field("us-east-1", description="lake on S3: the bucket's region.")
    s3_use_ssl: bool = Field(True, description="lake on S3: HTTPS to the endpoint.")
    s3_url_style: Literal["vhost", "path"] = Field("vhost", description="lake on S3: `path` for most "
                                                   "S3-compatible servers (MinIO, moto).")
    duplicate_check_hours: float = Field(1.0, gt=0, description="lake: each replica's writer skips an id stored "
                                         "already among the rows received in this many hours (a client's retry comes "
                                         "within minutes; the check reads only those rows); an older duplicate is "
                                         "stored again, and every reader still counts, lists and curates it once.")
    lock_wait_s: float = Field(30.0, gt=0, le=3600, description="How long a command, a flow or a request waits "
                               "for the store while another process holds it (the file store has one writer at a "
                               "time; a lake's catalog may be busy or away) before giving up as busy (exit 1, 503).")
    keep_snapshots_hours: float = Field(24.0, ge=0, description="lake: `flywheel compact` expires snapshots older "
                                        "than this and deletes data files unused for this long; time travel and "
                                        "readers in flight keep working within it.")

    @model_validator(mode="after")
    def _lake_is_located(self) -> StoreSettings:
        if self.kind == "lake":
            if not self.catalog or not self.catalog.startswith(("sqlite:", "postgres:")):
                raise ValueError("store.catalog: a lake needs `sqlite:/path` or `postgres:<libpq connection string>`")
            if not self.data_path:
                raise ValueError("store.data_path: a lake needs a folder or s3:// prefix for its data files")
        return self


class Settings(BaseSettings):
    """Everything configurable in Flywheel."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(Path(".flywheel"), description="The data folder: database, datasets, models, reports.")
    host: str = Field("127.0.0.1", description="Address `flywheel serve` binds.")
    port: int = Field(8000, description="Port `flywheel serve` binds.")
    redact_pii: bool = Field(True, description="Default PII redaction for projects without an override.")
    key_refresh_s: float = Field(5.0, gt=0, description="How often a running service re-reads API keys: a revoked "
                                 "key stops working within this time.")
    projects: dict[str, ProjectSettings] = Field(default_factory=dict, description="Per-project settings.")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    routes: dict[str, RouteSettings] = Field(default_factory=dict, description="Models the gateway serves.")
    tasks: dict[str, TaskSettings] = Field(default_factory=dict, description="Per task: how the loop turns.")
    evals: EvalsSettings = Field(default_factory=EvalsSettings)
    optimize: OptimizeSettings = Field(default_factory=OptimizeSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        # The TOML file lives in the data folder, which is itself a setting: resolve it first.
        home = init_settings.init_kwargs.get("home") or os.environ.get("FLYWHEEL_HOME") or ".flywheel"
        toml = _StrictToml(settings_cls, toml_file=Path(home) / CONFIG_FILE)
        _refuse_unknown_env(settings_cls)
        return (init_settings, env_settings, toml)

    @model_validator(mode="after")
    def _check_routes(self) -> Settings:
        for name, route in self.routes.items():
            if route.kind == "local" and not route.path:
                raise ValueError(f"routes.{name}.path: a local route needs the model folder")
            if route.kind != "local" and not route.base_url:
                raise ValueError(f"routes.{name}.base_url: an {route.kind} route needs the provider's base URL")
            if route.fallback is not None and route.fallback not in self.routes:
                raise ValueError(f"routes.{name}.fallback: no route named {route.fallback!r}")
        for name, task in self.tasks.items():
            if task.route is not None and task.route not in self.routes:
                raise ValueError(f"tasks.{name}.route: no route named {task.route!r}")
        return self

    @property
    def db_path(self) -> Path:
        """What `flywheel.store.connect` opens: the DuckDB file, or for a lake the file that says where the lake is."""
        return self.home / (LAKE_FILE if self.store.kind == "lake" else DB_FILE)

    @property
    def url(self) -> str:
        """Where this data folder's service listens (the loop loads candidates through it)."""
        return f"http://{self.host}:{self.port}"

    def redacts(self, project: str) -> bool:
        override = self.projects.get(project)
        return self.redact_pii if override is None else override.redact_pii


class UnknownSetting(ValueError):
    """A key in flywheel.toml or a FLYWHEEL_* variable that names no setting: an error at load, so
    that a typo (`max_itemz`, `[stor]`) never leaves the user believing a limit or backend is set."""


def unknown_settings(data: dict[str, Any], model: type[BaseModel], path: tuple[str, ...] = ()):
    """(path, closest valid name or None) of every key in `data` that `model` has no field for;
    tables of models (`routes.NAME`) are walked, free-form tables (`tasks.T.gate`) are not."""
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1)
            yield (*path, key), (close[0] if close else None)
            continue
        inner, args = field.annotation, typing.get_args(field.annotation)
        if typing.get_origin(inner) is dict and len(args) == 2:
            inner = args[1]
            value = value if isinstance(value, dict) else {}
            for name, item in value.items():
                if isinstance(inner, type) and issubclass(inner, BaseModel) and isinstance(item, dict):
                    yield from unknown_settings(item, inner, (*path, key, name))
        elif isinstance(inner, type) and issubclass(inner, BaseModel) and isinstance(value, dict):
            yield from unknown_settings(value, inner, (*path, key))


def _unknown_message(path: tuple[str, ...], close: str | None, where: str) -> str:
    hint = f" (did you mean {close!r}?)" if close else ""
    return f"{where}: unknown setting {'.'.join(path)!r}{hint}"


class _StrictToml(TomlConfigSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], toml_file: Path):
        super().__init__(settings_cls, toml_file=toml_file)
        for path, close in unknown_settings(self.toml_data, settings_cls):
            raise UnknownSetting(_unknown_message(path, close, f"{toml_file}{_line_of(toml_file, path)}"))


def _line_of(toml_file: Path, path: tuple[str, ...]) -> str:
    """`, line N` of the key or table header that introduces `path` (after its parent's header)."""
    lines = toml_file.read_text().splitlines()
    start = 0
    for depth in range(len(path)):
        dotted = r"\s*\.\s*".join(re.escape(part) for part in path[: depth + 1])
        header = re.compile(rf"^\s*\[+\s*{dotted}\s*[.\]]")  # [a.b] also introduces a
        assignment = re.compile(rf"^\s*[\"']?{re.escape(path[depth])}[\"']?\s*=")
        for i in range(start, len(lines)):
            if header.match(lines[i]) or (depth == len(path) - 1 and assignment.match(lines[i])):
                start = i
                break
        else:
            return ""
    return f", line {start + 1}"


def _refuse_unknown_env(settings_cls: type[BaseSettings]) -> None:
    prefix = settings_cls.model_config["env_prefix"]
    for name in os.environ:
        if not name.upper().startswith(prefix):
            continue
        path = tuple(name[len(prefix):].lower().split("__"))
        nested: dict[str, Any] = {}
        for part in reversed(path):
            nested = {part: nested}
        for bad, close in unknown_settings(nested, settings_cls):
            raise UnknownSetting(_unknown_message(bad, close, f"environment variable {name}"))


def read_config_file(path: Path | str) -> dict:
    """A config mapping from a .toml, .json or .yaml/.yml file (recipes, curation configs)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        return tomllib.loads(text)
    if path.suffix == ".json":
        import json

        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def load_settings(data_dir: Path | str | None = None) -> Settings:
    """Settings for a data folder (`None`: `$FLYWHEEL_HOME` or `./.flywheel`)."""
    if data_dir is not None:
        return Settings(home=Path(data_dir))
    return Settings()
