"""What `trainer.train()` runs inside: our training speed-ups, composed in one place.

Two speed-ups change how a step is computed, not what it computes (each module says how and why):
`flywheel.train.frozen_layers` runs a LoRA student's frozen lower layers once per example, and
`flywheel.train.labelled_positions` puts only the labelled positions through the LM head on every
device. `flywheel.train.trainers` trains inside `training_speedups`, and `bench/train.py` measures
it inside the same context, switching one off per setting, so what is measured is what runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flywheel.train.frozen_layers import Reuse, cached_frozen_layers, reusable_below
from flywheel.train.labelled_positions import labelled_positions_only
from flywheel.train.recipes import Recipe


@contextlib.contextmanager
def training_speedups(trainer, recipe: Recipe, *, labelled_positions: bool = True) -> Iterator[Reuse]:
    """While inside, `trainer` trains with the speed-ups that apply to `recipe`; yields the frozen
    layers' reuse counts. The frozen-layer reuse follows the recipe (`reuse_frozen_layers`);
    `labelled_positions=False` leaves TRL's LM head as it ships (every position on a CPU)."""
    head = labelled_positions_only() if labelled_positions else contextlib.nullcontext()
    # `trainer.model.config` is the base's, under a PEFT wrapper too.
    with head, cached_frozen_layers(trainer.model, reusable_below(recipe, trainer.model.config)) as reuse:
        yield reuse
