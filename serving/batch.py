"""A running batch: the rows that decode together on one model, and their KV cache.

Rows come and go between two decoding steps (continuous batching): newcomers are prefilled as a
small batch of their own and merged in (`merge`), finished rows are dropped (`select`). The cache
holds every row's tokens right-aligned: a shorter row is left-padded with zeros that its attention
mask hides, and each row keeps its own position ids, so a row computes the same tokens whatever
joins or leaves around it. Rows prefilled after a cached prompt prefix (serving.prefix) hold that
prefix first, then their own tokens: the padding between the two is masked out too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.prefix import Prefix

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class Batch:
    """`rows` (the engine's rows, each with its `gen`) in the order of the cache's batch dimension."""

    rows: list
    past: object  # a transformers DynamicCache: per layer, keys and values [rows, heads, width, head_dim]
    mask: object  # [rows, width]: 1 where the cache holds a row's token, 0 on its left padding
    positions: object  # [rows, 1]: the position of each row's last cached token
    next_ids: object = None  # [rows, 1]: the token each row feeds next (chosen, not yet in the cache)

    def forward(self, model, ids, logits_to_keep: dict) -> object:
        """Feed `ids` [rows, n] after the cache; the cache grows by n. Returns float logits [rows, k, vocab]
        for the last k = `logits_to_keep` positions (all n when the model cannot skip the others)."""
        import torch

        n = ids.shape[1]
        mask = torch.cat([self.mask, torch.ones_like(ids)], dim=-1)
        positions = self.positions + torch.arange(1, n + 1, device=ids.device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_name(): self.past},
                    use_cache=True, **logits_to_keep, **adapter_names(model, self.rows))  # fmt: skip
        self.mask, self.positions = mask, positions[:, -1:]
        return out.logits.float()

    def select(self, keep: list[int]) -> None:
        """Keep only the rows at `keep`; the cache's columns that no row still uses go too."""
        import torch

        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.past.batch_select_indices(index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        if self.next_ids is not None:
            self.next_ids = self.next_ids[index]
        used = self.mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first:  # a long row left: the others' padding on its behalf is dead weight in every step
            for layer in self.past.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self.mask = self.mask[:, first:]

    def crop(self, n: int) -> None:
        """Forget the last `n` tokens fed (rejected draft tokens; only for a batch of one row)."""
        if n:
            self.past.crop(-n)
            self.mask, self.positions = self.mask[:, :-n], self.positions - n


def context(row) -> list[int]:
    """What a row's prefill runs: its prompt plus any tokens it already has (a retried row goes on)."""
    return row.gen.prompt_ids + row.tokens


def prefill(model, rows: list, pad_id: int, device: str, logits_to_keep: dict,
            prefix: Prefix | None = None) -> tuple[Batch, object]:
    """Run the rows' contexts as one left-padded batch. Returns the batch and the float logits of each
    row's last position [rows, vocab]. After a cached `prefix` that every row's context starts with,
    only the rest is run: the cache starts with the prefix's keys and values in every row, each row's
    own tokens follow it (left-padded: the padding sits between the two, masked out), and their
    positions count on from the prefix's end."""
    import torch
    from transformers import DynamicCache

    start = len(prefix.ids) if prefix is not None else 0
    inputs = [context(row)[start:] for row in rows]
    width = max(len(i) for i in inputs)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row_ids in enumerate(inputs):  # left padding: every row's next token is at the end
        ids[i, width - len(row_ids):] = torch.tensor(row_ids)
        mask[i, width - len(row_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = start + (mask.cumsum(-1) - 1).clamp(min=0)
    past = None
    if prefix is not None:  # (the cache copies the prefix's tensors: later steps never write into the entry)
        every_row = (len(rows), -1, -1, -1)
        past = DynamicCache([(keys.expand(every_row), values.expand(every_row)) for keys, values in prefix.layers])
        mask = torch.cat([torch.ones((len(rows), start), dtype=torch.long, device=device), mask], dim=-1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_name(): past}, use_cache=True,
                **logits_to_keep, **adapter_names(model, rows))  # fmt: skip
    return Batch(rows, getattr(out, cache_name()), mask, positions[:, -1:]), out.logits[:, -1, :].float()


def prefix_layers(model, row, length: int, device: str, logits_to_keep: dict) -> list | None:
    """The keys and values of the first `length` tokens of `row`'s context, run alone on the row's
    model (or adapter): per layer (keys, values) [1, heads, length, head_dim]. None when the model's
    cache has layers other than plain growing ones (a sliding window would drop a prefix's start)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    ids = torch.tensor([context(row)[:length]], dtype=torch.long, device=device)
    positions = torch.arange(length, device=device)[None]
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, use_cache=True,
                **logits_to_keep, **adapter_names(model, [row]))  # fmt: skip
    layers = getattr(out, cache_name()).layers
    return [(layer.keys, layer.values) for layer in layers] if all(type(x) is DynamicLayer for x in layers) else None


def merge(running: Batch | None, new: Batch | None) -> Batch | None:
    """`new`'s rows join `running`: the narrower cache is left-padded to the wider one's width
    (zeros, masked out), then the two are stacked along the batch dimension."""
    import torch
    import torch.nn.functional as F

    if running is None or new is None:
        return new if running is None else running
    width = max(running.mask.shape[1], new.mask.shape[1])

    def pad(t, seq_dim_from_end: int):  # left-pad dimension -seq_dim_from_end up to `width`
        missing = width - t.shape[-seq_dim_from_end]
        return F.pad(t, (0, 0) * (seq_dim_from_end - 1) + (missing, 0)) if missing else t

    for mine, theirs in zip(running.past.layers, new.past.layers, strict=True):
        mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
        mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
    running.mask = torch.cat([pad(running.mask, 1), pad(new.mask, 1)])
    running.positions = torch.cat([running.positions, new.positions])
    running.next_ids = torch.cat([running.next_ids, new.next_ids])
    running.rows = running.rows + new.rows
    return running


@functools.cache
def cache_name() -> str:
    """What the installed transformers calls the KV cache, in a forward's arguments and its output:
    `cache` from 5.2x on (where `past_key_values` warns at every forward until its removal in 5.40),
    `past_key_values` before."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def adapter_names(model, rows: list) -> dict:
    """PEFT's per-row adapters of a mixed batch (nothing for a model without adapters)."""
    from peft import PeftModel

    return {"adapter_names": [row.gen.adapter or BASE for row in rows]} if isinstance(model, PeftModel) else {}


def last_logits_only(model) -> dict:
    """Where the model can skip computing logits it is not asked for: a prefill then computes (and
    holds) no vocabulary's worth of logits per prompt token (≈20% of a SmolLM2 prefill, 49k-token
    vocabulary). The engine asks for the last position's, or a draft's worth when verifying one."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
