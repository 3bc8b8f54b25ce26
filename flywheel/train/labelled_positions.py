"""Put only the labelled positions through the LM head, on a CPU too.

TRL computes the loss with a fused LM head (`add_fused_lm_head`, the distillation trainer's
divergence likewise): each position's hidden state is projected onto the whole vocabulary, in
tiles, and scored against its label. On a Triton device (CUDA, XPU) it first keeps the positions
that have a label; elsewhere it scores every position and masks the rest afterwards, because on
Neuron a varying number of positions recompiles the kernel. A CPU runs eagerly and has no such
cost, yet pays for every position: SmolLM2's head is 576 × 49,152, so a completion-only example
of 66 tokens with a 2-token label spends 33x the head's compute it needs, forward and backward.
Measured (`bench/train.py --settings flywheel,flywheel-all-positions`): the LoRA `sft` recipe on
SmolLM2, 2 CPU cores, trains 2.24x faster (64 tickets: 80.9 → 36.1 s) with the same result.

`labelled_positions_only` makes TRL keep the labelled positions on every device while training
runs. It changes which rows are projected, not the arithmetic: the loss, its gradient and the
logged entropy and token accuracy are the same up to float rounding.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator

log = logging.getLogger("flywheel.train")

# The TRL modules that choose, per call, between the labelled positions and all of them (TRL 1.16:
# `compact = _use_triton(device)`); their kernels' own `_use_triton` (Triton or eager tiles) stays.
CHOOSERS = ("trl.trainer.utils", "trl.trainer.distillation_trainer")


def _every_device(_device) -> bool:
    return True


@contextlib.contextmanager
def labelled_positions_only() -> Iterator[None]:
    """While inside, TRL's fused LM head and distillation loss project the labelled positions only."""
    patched = []
    for name in CHOOSERS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional trainer's dependencies are missing: nothing of it runs
            continue
        if hasattr(module, "_use_triton"):
            patched.append((module, module._use_triton))
            module._use_triton = _every_device
        else:
            log.debug("%s has no _use_triton: its LM head is left as TRL runs it", name)
    try:
        yield
    finally:
        for module, original in patched:
            module._use_triton = original
