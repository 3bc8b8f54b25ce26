"""`flywheel models …`: import a base model into the data folder, list what is there.

A typer sub-app kept beside the functions it calls; `flywheel/cli.py` mounts it with
`app.add_typer(models_app, name="models")`. Bad input (a missing or unreadable source, a bad name)
exits 2 with the reason, as every Flywheel command does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from flywheel.models.catalog import (
    ModelImportError,
    get_model,
    human_count,
    human_size,
    list_models,
)

models_app = typer.Typer(help="Base models: import a GGUF file or a Hugging Face folder, list them.",
                         no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data folder (default: $FLYWHEEL_HOME, else ./.flywheel).", show_default=False),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


def _home(data_dir: Path | None) -> Path:
    from flywheel.settings import load_settings

    try:
        return load_settings(data_dir).home
    except ValueError as exc:  # pydantic's ValidationError (a ValueError) names the setting
        _fail(f"invalid settings: {exc}")


@models_app.command("import")
def import_cmd(
    src: Annotated[Path, typer.Argument(help="A .gguf file or a Hugging Face model folder.", show_default=False)],
    name: Annotated[str | None, typer.Option(help="Name of the base model (default: from the file or folder name).",
                                             show_default=False)] = None,
    data_dir: DataDir = None,
) -> None:
    """Import SRC as a base model under the data folder (once: importing it again is a no-op)."""
    from flywheel.models.importer import default_name, import_model

    home = _home(data_dir)
    existed = src.exists() and get_model(home, name or default_name(src)) is not None
    if not existed and src.is_file() and src.suffix.lower() == ".gguf":
        typer.echo(f"importing {src} (a GGUF is dequantized once; this takes a while)…", err=True)
    try:
        info = import_model(home, src, name=name)
    except ModelImportError as exc:
        _fail(str(exc))
    typer.echo(f"{info.name}: {info.architecture}, {human_count(info.parameters)} parameters, "
               f"{human_size(info.size_bytes)} in {info.path}{' (already imported)' if existed else ''}")


@models_app.command("list")
def list_cmd(data_dir: DataDir = None) -> None:
    """List the base models of the data folder: name, architecture, parameters, size, source."""
    from rich.console import Console
    from rich.table import Table

    home = _home(data_dir)
    models = list_models(home)
    if not models:
        typer.echo(f"no base models in {home} yet: `flywheel models import SRC` adds one "
                   "(the default, smollm2-135m-instruct, is imported on first use)")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("name", "architecture", "parameters", "size", "dtype", "imported (UTC)", "source"):
        table.add_column(column, no_wrap=column != "source", overflow="fold")
    for m in models:
        table.add_row(m.name, m.architecture, human_count(m.parameters), human_size(m.size_bytes), m.dtype,
                      m.imported_at[:19].replace("T", " "), m.source.get("path", "?"))
    Console(width=max(Console().width, 160)).print(table)
