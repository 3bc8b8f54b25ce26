"""Supervised fine-tuning on chats (TRL `SFTTrainer`): the loss on the assistant's turns."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flywheel.train.methods.base import Method

if TYPE_CHECKING:
    from flywheel.train.recipes import Recipe


def sft_args(recipe: Recipe, cpu: bool) -> dict[str, Any]:
    # Packing "auto" (None): bfd packing on CUDA; off on CPU, where sdpa attends each packed row in
    # full and short padded batches measured faster (bench/train.py).
    packing = (not cpu) if recipe.packing is None else recipe.packing
    return {
        "packing": packing,
        # TRL: padding-free without packing requires max_length=None (no truncation then).
        "padding_free": recipe.padding_free or packing,
        "assistant_only_loss": recipe.assistant_only_loss,
    }


SFT = Method(
    name="sft",
    summary="supervised fine-tuning (TRL `SFTTrainer`)",
    config="trl:SFTConfig",
    trainer="trl:SFTTrainer",
    columns=("messages",),
    config_args=sft_args,
)
