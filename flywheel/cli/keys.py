"""`flywheel init` and `flywheel keys`: the data folder and who may call the service."""

from __future__ import annotations

from typing import Annotated

import typer

from flywheel import store
from flywheel.cli.common import DataDir, app, database_of, fail, new_key, settings_of
from flywheel.settings import CONFIG_FILE

keys_app = typer.Typer(help="API keys (one project and one role each).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

CONFIG_TEMPLATE = """\
# Flywheel settings. Environment variables FLYWHEEL_* override these
# (nested with __, e.g. FLYWHEEL_INGEST__MAX_ITEMS=500).
host = "127.0.0.1"
port = 8000
redact_pii = true            # default for every project
key_refresh_s = 5.0          # a revoked API key is refused within this time

[ingest]
max_body_bytes = 16777216    # 413 above this
max_items = 5000             # items per request
max_queue_items = 100000     # 503 + Retry-After above this

# [projects.my-project]
# redact_pii = false

# The gateway's models. `local`: the embedded SmolLM2-135M-Instruct, served by our engine (many
# LoRA adapters on one base); imported into models/base/ when the service first starts (≈1 min,
# once). Add providers beside it: kind = "upstream", base_url = "https://…/v1".
[routes.local]
kind = "local"
path = "smollm2-135m-instruct"
"""


@app.command()
def init(data_dir: DataDir = None,
         project: Annotated[str, typer.Option(help="Project of the first API key.")] = "default") -> None:
    """Create the data folder, its config and database, and print a first API key (shown once):
    an admin key, the operator's, that also manages adapters and reads /metrics."""
    settings = settings_of(data_dir)
    settings.home.mkdir(parents=True, exist_ok=True)
    config = settings.home / CONFIG_FILE
    if not config.exists():
        config.write_text(CONFIG_TEMPLATE)
    from flywheel.registry.keys import active_keys

    with store.connect(settings.db_path) as con:
        has_keys = bool(active_keys(con))
    if has_keys:
        typer.echo(f"{settings.home} is already initialised; `flywheel keys create --project P` makes more keys.")
        return
    key = new_key(settings, project, "admin")
    typer.echo(f"initialised {settings.home}")
    typer.echo(f"admin API key for project {project!r} (shown once, store it now; give apps their own "
               f"`flywheel keys create --project {project}`):\n{key}")


@keys_app.command("create")
def keys_create(project: Annotated[str, typer.Option(help="The project the key reads and writes.")],
                data_dir: DataDir = None,
                role: Annotated[str, typer.Option(help="app: ingest, feedback, gateway, read interactions; admin: "
                                                  "also load/unload adapters (promotion) and read /metrics.")] = "app",
                ) -> None:  # fmt: skip
    """Print a new API key for PROJECT (only its hash is stored)."""
    typer.echo(new_key(settings_of(data_dir), project, role))


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List the keys by prefix: project, role, created, revoked (the keys themselves are not stored)."""
    from flywheel.registry.keys import list_keys

    with store.connect(database_of(settings_of(data_dir)), read_only=True) as con:
        rows = list_keys(con)
    typer.echo(f"{'prefix':<12} {'project':<20} {'role':<6} {'created (UTC)':<20} revoked (UTC)")
    for prefix, project, role, created, revoked in rows:
        typer.echo(f"{prefix:<12} {project:<20} {role:<6} {created:%Y-%m-%d %H:%M:%S}  "
                   f"{f'{revoked:%Y-%m-%d %H:%M:%S}' if revoked else '-'}")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="The key, or its prefix as `flywheel keys list` shows it.")],
                data_dir: DataDir = None) -> None:
    """Revoke a key: a running service refuses it within `key_refresh_s` (default 5 s)."""
    from flywheel.registry.keys import revoke_key

    try:
        with store.connect(database_of(settings_of(data_dir))) as con:
            prefix = revoke_key(con, key)
    except ValueError as exc:
        fail(str(exc), 2)
    typer.echo(f"revoked {prefix}")
