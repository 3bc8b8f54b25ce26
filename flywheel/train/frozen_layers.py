"""Compute a LoRA student's frozen lower layers once per example instead of once per epoch.

Our LoRA recipes adapt only the top layers (`lora.top_layers`: SmolLM2's default trains 8 of 30).
The layers below them never change during training, so what they make of an example is the same
every time the example comes round again; yet the forward pass recomputes them at each epoch, and
on a CPU that is most of a step (SmolLM2 on 2 cores: the 22 frozen layers are ≈60% of a step's
time). `cached_frozen_layers` wraps `trainer.train()`: the first frozen layer runs all of them and
keeps each example's output (its real tokens only, keyed by their ids and positions, so padding
and batch company do not matter); on the next epochs the example skips them. A batch with an
unseen example runs them for the whole batch.

It is exact up to float rounding (a different batch can round differently), and it applies only
where it is: a recipe whose adapter leaves layers frozen at the bottom, no gradient checkpointing
(whose re-entrant form needs the layers' input to require grad), no dropout in those layers, a
decoder with a `layers` list.
Memory is bounded (`MAX_BYTES`): past it, new examples are computed every time, as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from flywheel.train.recipes import Recipe, lora_layers

log = logging.getLogger("flywheel.train")

MAX_BYTES = 512 * 2**20  # SmolLM2: 66 tokens × 576 floats ≈ 150 kB an example, ≈3,400 examples


@dataclass
class Reuse:
    """How often the frozen layers' output was reused (counted per example)."""

    computed: int = 0
    reused: int = 0
    bytes: int = 0


def reusable_below(recipe: Recipe, model_config) -> int | None:
    """The lowest layer the recipe's adapter trains, when the layers below it may be reused."""
    if recipe.lora is None or not recipe.reuse_frozen_layers or recipe.gradient_checkpointing:
        return None
    layers = lora_layers(recipe, model_config)
    return min(layers) if layers else None


def _decoder(model):
    """The module holding the decoder layers (`model.layers`), under PEFT and task heads."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    return decoder if hasattr(decoder, "layers") else None


@contextlib.contextmanager
def cached_frozen_layers(model, first_trained: int | None) -> Iterator[Reuse]:
    """While inside, layers `[0, first_trained)` of `model`'s decoder run once per example.
    Yields the counts. Without frozen layers (`first_trained` None or 0) or a `layers` list it
    changes nothing."""
    import torch
    from torch import nn

    reuse = Reuse()
    decoder = _decoder(model)
    if not first_trained or decoder is None or len(decoder.layers) <= first_trained:
        yield reuse
        return
    layers = decoder.layers
    frozen = list(layers[:first_trained])
    if any(p.requires_grad for layer in frozen for p in layer.parameters()):
        raise ValueError(f"layers below {first_trained} train: their output cannot be reused")
    if getattr(decoder.config, "attention_dropout", 0) or any(
            isinstance(m, nn.Dropout) and m.p > 0 for layer in frozen for m in layer.modules()):
        yield reuse  # dropout makes each pass through them differ: nothing to reuse
        return
    seen: dict[tuple, torch.Tensor] = {}
    batch: dict[str, torch.Tensor | None] = {}

    def remember_ids(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch.update(ids=ids, mask=kwargs.get("attention_mask"), positions=kwargs.get("position_ids"))

    class FrozenStack(nn.Module):
        """Stands in for the first frozen layer: all of them, or their remembered output."""

        def __init__(self):
            super().__init__()
            self.frozen = nn.ModuleList(frozen)

        def forward(self, hidden_states, **kwargs):
            ids, mask, positions = batch.get("ids"), batch.get("mask"), batch.get("positions")
            # Embeddings that train (nothing is fixed), or a generating pass (GKD's samples): their KV cache needs every layer.
            if ids is None or hidden_states.requires_grad or kwargs.get("cache") is not None or kwargs.get("use_cache"):
                for layer in self.frozen:
                    hidden_states = layer(hidden_states, **kwargs)
                return hidden_states
            real = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)
            if positions is None:
                positions = torch.arange(ids.shape[1], device=ids.device)
            positions = positions.expand_as(ids)
            keys = [(tuple(ids[b][real[b]].tolist()), tuple(positions[b][real[b]].tolist())) for b in range(len(ids))]
            if all(k in seen for k in keys):
                reuse.reused += len(keys)
                out = hidden_states.new_zeros(hidden_states.shape)
                for b, k in enumerate(keys):
                    out[b][real[b]] = seen[k]
                return out
            out = self._run(hidden_states, kwargs)
            for b, k in enumerate(keys):
                if k not in seen and reuse.bytes < MAX_BYTES:
                    seen[k] = out[b][real[b]].detach().clone()
                    reuse.bytes += seen[k].numel() * seen[k].element_size()
                    reuse.computed += 1
            return out

        def _run(self, hidden_states, kwargs):
            with torch.no_grad():
                for layer in self.frozen:
                    hidden_states = layer(hidden_states, **kwargs)
            return hidden_states

    class Skip(nn.Module):
        """The other frozen layers: the stack has run them."""

        def forward(self, hidden_states, **kwargs):
            return hidden_states

    hook = decoder.register_forward_pre_hook(remember_ids, with_kwargs=True)
    # The trained layers keep their index, so their parameter names (what the adapter saves) do not change.
    decoder.layers = nn.ModuleList([FrozenStack(), *(Skip() for _ in frozen[1:]), *layers[first_trained:]])
    try:
        yield reuse
    finally:
        decoder.layers = layers
        hook.remove()
        batch.clear()
        seen.clear()
        log.info("frozen layers 0-%d: computed for %d examples, reused %d times", first_trained - 1, reuse.computed, reuse.reused)
