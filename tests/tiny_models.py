"""The tiny local model the serving tests share, with LoRA adapters that change its answers.

The gateway, restart and optimize tests all serve the same tiny base (the demo's tokenizer,
a 96-token context) and adapters of it: built once per session in `tiny_models`, not once per
module. Register with `pytest_plugins = ["tiny_models"]`; the files never change once built.
"""

from __future__ import annotations

import pytest


def make_adapter(base, out, seed: int) -> str:
    """A random LoRA adapter of `base`, scaled up so that it changes the answers for sure."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                      init_lora_weights=False))  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(20)
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Paths: `base`, and `ada-1`..`ada-3` (adapters of it from seeds 1-3), all in one folder."""
    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    root = tmp_path_factory.mktemp("tiny-models")
    base = str(build_tiny_model(root / "base", ticket_texts(200), max_length=96))
    return {"base": base, **{f"ada-{i}": make_adapter(base, root / f"ada-{i}", i) for i in (1, 2, 3)}}
