"""What base models a data folder holds: where they live and the small record beside each.

Every base model is a plain Hugging Face folder `<home>/models/base/<name>/` that loads with
`from_pretrained(path)`; `flywheel-model.json` in it says what it is and where it came from.
This module only reads (no torch, no transformers), so `flywheel models list` is instant.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

INFO_FILE = "flywheel-model.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


class ModelImportError(ValueError):
    """A base model could not be imported; the message names the path and the reason."""


@dataclass(frozen=True)
class ModelInfo:
    """One imported base model (the content of its `flywheel-model.json`, plus its folder)."""

    name: str
    path: Path
    architecture: str  # e.g. LlamaForCausalLM
    model_type: str  # e.g. llama
    parameters: int
    size_bytes: int  # of the whole folder on disk
    dtype: str  # of the saved weights, e.g. float32
    source: dict = field(default_factory=dict)  # kind (gguf|hf-folder), path, sha256 or fingerprint, bytes
    imported_at: str = ""  # ISO 8601, UTC
    chat_template: bool = False  # whether the tokenizer carries one

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("path")
        return data


def base_dir(home: Path | str) -> Path:
    """Where base models live in a data folder."""
    return Path(home) / "models" / "base"


def check_name(name: str) -> str:
    """A model name usable as a folder name: lower case letters, digits, `.`, `_`, `-`."""
    if not NAME_RE.match(name):
        raise ModelImportError(f"--name {name!r}: use lower case letters, digits, '.', '_' or '-' "
                               "(at most 100, starting with a letter or digit)")
    return name


def read_model(folder: Path | str) -> ModelInfo | None:
    """The imported model in `folder`, or None when it holds none (or an unreadable record)."""
    folder = Path(folder)
    try:
        data = json.loads((folder / INFO_FILE).read_text())
        return ModelInfo(path=folder, **data)
    except (OSError, ValueError, TypeError):
        return None


def get_model(home: Path | str, name: str) -> ModelInfo | None:
    """The base model `name` of a data folder, or None."""
    return read_model(base_dir(home) / name)


def list_models(home: Path | str) -> list[ModelInfo]:
    """The base models imported into a data folder, by name (half-written imports are skipped)."""
    root = base_dir(home)
    if not root.is_dir():
        return []
    found = (read_model(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith("."))
    return [info for info in found if info is not None]


def folder_size(folder: Path) -> int:
    """Bytes of all files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def human_size(n: int) -> str:
    """541614977 → '541.6 MB' (decimal units, as disk tools print them)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    """134515008 → '134.5M'."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
