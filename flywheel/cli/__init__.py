"""`flywheel`: the one front door. Each command is a thin call into a plain function;
FastAPI, uvicorn and the other packages are imported inside the commands that need them.
The commands live by what they touch: `keys` (init, API keys), `service` (serve, up, status, compact,
demo), `stages` (curate, train, eval, promote, rollback, settle, optimize, run), and `flywheel.models.commands`
(models import, models list)."""

from __future__ import annotations

import sys

from flywheel import store
from flywheel.cli import keys, service, stages  # noqa: F401  (each module registers its commands on `app`)
from flywheel.cli.common import app, error
from flywheel.models.commands import models_app

app.add_typer(models_app, name="models")

__all__ = ["app", "main"]


def main() -> None:
    try:
        app(prog_name="flywheel")
    except store.StoreBusy as exc:  # another process held the database too long: say so, no traceback
        error(str(exc))
        sys.exit(1)
    except store.StoreMisconfigured as exc:  # flywheel.toml's [store] does not match the store found
        error(str(exc))
        sys.exit(2)
