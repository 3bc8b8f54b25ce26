"""Which process of a multi-process training this is, and work done by the first one only.

Under `torchrun` or `accelerate launch` every process runs the same `flywheel.train.run.train`;
the trainer shares the steps between them (data-parallel: gloo on CPU, NCCL on GPUs). What must
happen once — registering the candidate in DuckDB (a file with one writer), writing its folder
and card — happens on rank 0, which hands its result (the candidate id) to the others.
Launched as a plain process, there is one rank and nothing here costs anything.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def world_size() -> int:
    """Processes in this training: the launcher's WORLD_SIZE, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0 of the launch (or the only process): the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def _state():
    import torch
    from accelerate import PartialState

    # The same state the trainer's arguments make (cpu → gloo, GPUs → NCCL); the process group it
    # opens stays open when TrainingArguments later sets its own state up.
    return PartialState(cpu=not torch.cuda.is_available())


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0; every rank gets its result. When it fails there, every rank raises:
    rank 0 its own exception, the others a RuntimeError naming it (no rank waits forever)."""
    if world_size() == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    _state()
    box: list = [None]
    error: BaseException | None = None
    if is_main():
        try:
            box = [("ok", fn())]
        except Exception as exc:
            error, box = exc, [("error", f"{exc.__class__.__name__}: {exc}")]
    broadcast_object_list(box, from_process=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value
