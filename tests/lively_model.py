"""A tiny model whose greedy answers depend on every token of their context, for engine tests.

A freshly initialised tiny Llama (weights of std 0.02) writes much the same few tokens whatever
its prompt, so an answer computed from a wrong cache position, mask or neighbour's row would often
look right. Weights of std 0.15 make each prompt's answer different, a mix of fresh tokens and
loops (so n-gram drafts are both accepted and rejected), and still far from ties, so that
batched and solo decoding agree to the token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TICKETS = [f"ticket {i}: " + "my parcel is late and " * (i % 4) + f"order {i * 37} is missing" for i in range(8)]


def build_lively_model(out: Path, *, seed: int = 0) -> str:
    """A tiny Llama with the demo's tokenizer and weights redrawn with std 0.15 (from `seed`)."""
    import torch
    from transformers import AutoModelForCausalLM

    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    plain = build_tiny_model(out.with_name(out.name + "-plain"), ticket_texts(200), max_length=128)
    model = AutoModelForCausalLM.from_pretrained(plain)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # (the norms keep their ones)
                p.normal_(0, 0.15)
    model.save_pretrained(out)
    for f in plain.iterdir():  # the tokenizer's files and the generation config
        if not (out / f.name).exists():
            shutil.copy2(f, out / f.name)
    return str(out)
