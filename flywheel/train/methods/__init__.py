"""Training methods: one name → `Method` table, the only place that knows which methods exist.

A recipe's `method:` is looked up here; recipes (the TRL config), trainers (the TRL trainer),
data (the columns) and the model card (the summary) read the `Method`, never the name.

To add a method (say KTO): write `methods/kto.py` with a `Method` (its TRL config and trainer
classes, the dataset columns it reads, its config fields from the recipe), add it to `METHODS`
below, and test it in tests/test_train_recipes.py (config) and tests/test_train.py (a short run).
A knob of its own that `Recipe` does not name goes through the recipe's `extra` until it earns a field.
"""

from __future__ import annotations

from flywheel.train.methods.base import Method
from flywheel.train.methods.distill import DISTILL
from flywheel.train.methods.dpo import DPO
from flywheel.train.methods.gkd import GKD
from flywheel.train.methods.sft import SFT

METHODS: dict[str, Method] = {m.name: m for m in (SFT, DISTILL, GKD, DPO)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown training method {name!r}: use one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "get_method"]
