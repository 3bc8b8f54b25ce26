"""Is this folder a model our engine can serve, and does this adapter belong on this base?

Checked before the engine touches its model, so a bad folder is a clear error that names it (a
4xx at runtime, a logged, counted 503 on its alias at start) and never a half-loaded adapter:

- a LoRA adapter (a folder with PEFT's `adapter_config.json`) must have been trained on the
  route's base. Its `base_model_name_or_path` is resolved as written, next to the adapter, in
  the data folder and as an imported base model's name (`<home>/models/base/<name>`); a folder
  found there is the same model as the route's when it is the same folder, the folder the base was
  imported from (`flywheel-model.json`), or has the same config and weights. Whatever the name
  says, each LoRA weight must fit the base's module of that name (`check_shapes`), which settles
  the case of a base that is not on this machine.
- a whole model (a fine-tuned student served beside the base) must be a causal LM of an
  architecture transformers knows.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from flywheel.models.catalog import INFO_FILE, base_dir, read_model


class ModelLoadError(ValueError):
    """The folder cannot be served on this route; the message names it and the reason."""

    code = "invalid_model"


class BaseMismatch(ModelLoadError):
    """An adapter trained on another base than the route's; the message names both."""

    code = "base_mismatch"


# --- reading folders -----------------------------------------------------------------------------


def _json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ModelLoadError(f"{path.parent}: cannot read {path.name} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path.parent}: {path.name} is corrupt ({exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.parent}: {path.name} is not a JSON object ({what})")
    return data


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from a .safetensors file's header (no weights read)."""
    try:
        with path.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            if size > 100_000_000 or size > path.stat().st_size:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"{path.parent}: {path.name} is corrupt ({exc})") from None
    return {name: list(meta["shape"]) for name, meta in header.items() if name != "__metadata__"}


def is_adapter(folder: Path | str) -> bool:
    return (Path(folder) / "adapter_config.json").exists()


def check_folder(folder: Path | str, what: str = "model") -> Path:
    path = Path(folder)
    if not path.exists():
        raise ModelLoadError(f"{what} folder {str(folder)!r} does not exist on the serving machine")
    if not path.is_dir():
        raise ModelLoadError(f"{what} folder {str(folder)!r} is not a folder")
    return path


def read_adapter(folder: Path | str) -> tuple[dict, dict[str, list[int]] | None]:
    """(adapter_config, weight name -> shape or None when saved as .bin) of a LoRA adapter folder."""
    path = check_folder(folder, "adapter")
    config = _json(path / "adapter_config.json", "adapter_config.json")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ModelLoadError(f"{path}: a {peft_type} adapter; only LoRA adapters are served")
    if (path / "adapter_model.safetensors").exists():
        return config, safetensors_shapes(path / "adapter_model.safetensors")
    if (path / "adapter_model.bin").exists():
        return config, None
    raise ModelLoadError(f"{path}: no adapter weights (adapter_model.safetensors) in the folder")


def check_whole_model(folder: Path | str) -> dict:
    """The config of a whole causal LM folder; raise `ModelLoadError` unless our engine can load it."""
    path = check_folder(folder)
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: neither a model (config.json) nor a LoRA adapter (adapter_config.json)")
    config = _json(path / "config.json", "config.json")
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        arch = ", ".join(config.get("architectures") or []) or "none named"
        raise ModelLoadError(f"{path}: unsupported architecture (model_type {model_type!r}, {arch}): not a causal LM "
                             "that transformers can load here")  # fmt: skip
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelLoadError(f"{path}: no weights (*.safetensors) in the folder")
    return config


# --- which base an adapter belongs to -------------------------------------------------------------


def resolve_base(name: str | None, adapter: Path, home: Path | None) -> Path | None:
    """The folder an adapter's `base_model_name_or_path` names on this machine, or None."""
    if not name:
        return None
    raw = Path(name).expanduser()
    tries = [raw] if raw.is_absolute() else [raw, adapter / raw, adapter.parent / raw]
    if home is not None and not raw.is_absolute():
        tries += [Path(home) / raw, base_dir(home) / name]
    for candidate in tries:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    return None


def _fingerprint(folder: Path) -> str:
    """The same for two copies of one model: its config (less what a save rewrites) and samples of
    its weight files (size, start, middle, end: whole files are too big to hash on every load)."""
    h = hashlib.sha256()
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        config.pop(key, None)
    h.update(json.dumps(config, sort_keys=True).encode())
    for weights in sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")):
        size = weights.stat().st_size
        h.update(f"{weights.name}:{size}".encode())
        with weights.open("rb") as f:
            for at in (0, size // 2, max(0, size - 65536)):
                f.seek(at)
                h.update(f.read(65536))
    return h.hexdigest()


def same_model(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    for one, other in ((a, b), (b, a)):  # an imported base and the folder it was imported from
        info = read_model(one) if (one / INFO_FILE).exists() else None
        source = (info.source.get("path") if info else None) or ""
        if source and Path(source).resolve() == other.resolve():
            return True
    return _fingerprint(a) == _fingerprint(b)


def describe_base(route_base: str) -> str:
    """The route's base for an error message: its folder, with its imported name when it has one."""
    info = read_model(route_base)
    return f"{route_base!r} ({info.name})" if info else repr(route_base)


def check_adapter_base(adapter: Path | str, config: dict, route: str, route_base: str, home: Path | None) -> None:
    """Raise `BaseMismatch` when the adapter names a base found on this machine that is not the route's."""
    adapter = Path(adapter)
    declared = config.get("base_model_name_or_path")
    found = resolve_base(declared, adapter, home)
    if found is None or not Path(route_base).is_dir():
        return  # unknown here: the shapes decide (check_shapes)
    if not same_model(found, Path(route_base)):
        raise BaseMismatch(f"adapter {str(adapter)!r} was trained on base {declared!r} ({found}), but route {route!r} "
                           f"serves base {describe_base(route_base)}: load it on a route of its base")  # fmt: skip


def _module_dims(module) -> tuple[int | None, int | None]:
    """(in, out) of a Linear-like or Embedding module, PEFT's LoRA wrappers included."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    if hasattr(module, "num_embeddings"):
        return module.num_embeddings, module.embedding_dim
    return None, None


def check_shapes(adapter: Path | str, config: dict, shapes: dict[str, list[int]], base_model, route: str,
                 route_base: str, home: Path | None) -> None:
    """Raise `BaseMismatch` unless every LoRA weight fits the module of the base it adapts
    (same layers, same widths): the test that holds whatever the adapter's config names."""
    declared = config.get("base_model_name_or_path")
    for key, shape in sorted(shapes.items()):
        parts = key.split(".")
        kind = next((p for p in parts if p in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")), None)
        if kind is None or len(shape) != 2:
            continue
        module_path = ".".join(parts[: parts.index(kind)])
        module_path = module_path.removeprefix("base_model.model.")
        try:
            module = base_model.get_submodule(module_path)
        except AttributeError:
            problem = f"it adapts {module_path}, which the base has not"
        else:
            d_in, d_out = _module_dims(module)
            want = {"lora_A": (1, d_in), "lora_B": (0, d_out), "lora_embedding_A": (1, d_in),
                    "lora_embedding_B": (0, d_out)}[kind]  # fmt: skip
            if want[1] is None or shape[want[0]] == want[1]:
                continue
            problem = f"{module_path} is {want[1]} wide in the base, {shape[want[0]]} in the adapter"
        raise BaseMismatch(f"adapter {str(adapter)!r} (trained on base {declared!r}) does not fit route {route!r}'s base "
                           f"{describe_base(route_base)}: {problem}")  # fmt: skip
