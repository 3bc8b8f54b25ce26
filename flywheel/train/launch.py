"""One training in several processes: `flywheel train --processes N` starts `torchrun` on this module.

Each process (rank) runs the same `flywheel.train.run.train` on the same recipe; the trainer
splits every step's batches between them (data-parallel: gloo on CPU, NCCL on GPUs, one GPU per
rank). Rank 0 alone registers the candidate and writes its folder and card (`flywheel.train.ranks`).
`per_device_train_batch_size` is per process, so the global batch grows with N: lower
`gradient_accumulation_steps` in the recipe to keep it.

Run by hand, on one machine or several (the dataset and data folder on storage every node sees):

    torchrun --nproc_per_node 8 -m flywheel.train.launch --data-dir D --task support-triage
    accelerate launch --num_processes 8 -m flywheel.train.launch --data-dir D --task support-triage

`launch` (what the CLI calls) checks what it can first (the task, its newest dataset, one GPU per
process where there are GPUs) so a bad command fails with exit 2 before the N processes start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from flywheel.settings import Settings
from flywheel.task import Task


def command(settings: Settings, task: Task, *, processes: int, dataset_id: str, dataset_path: str) -> list[str]:
    """The `torchrun` command line: N processes on this machine (`--standalone`: a free port of its
    own), each given the task as resolved here (its project, recipe and models) and the dataset."""
    given = {"--project": task.project, "--recipe": task.recipe, "--base-model": task.base_model, "--teacher": task.teacher,
             "--dataset-id": dataset_id, "--dataset-path": dataset_path}  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "flywheel.train.launch", "--data-dir", str(settings.home.resolve()), "--task", task.name,
            *(x for flag, value in given.items() if value is not None for x in (flag, str(value)))]  # fmt: skip


def launch(settings: Settings, task: Task, *, processes: int) -> int:
    """Train the task's newest dataset in `processes` processes; their output goes to this
    terminal, rank 0's last line names the candidate. Returns torchrun's exit status (0: ready).
    Before anything starts: FileNotFoundError when the task has no curated dataset, ValueError when
    there are GPUs but fewer than processes (each rank takes one)."""
    from flywheel.train.run import latest_dataset

    dataset_id, dataset_path = latest_dataset(settings, task)
    import torch

    gpus = torch.cuda.device_count()
    if 0 < gpus < processes:
        raise ValueError(f"--processes: {processes} processes need one GPU each; this machine has {gpus}")
    return subprocess.run(command(settings, task, processes=processes, dataset_id=dataset_id, dataset_path=dataset_path)).returncode


def main(argv: list[str] | None = None) -> None:
    """One rank: the task's recipe on the given dataset (else the newest one), then rank 0 reports."""
    from flywheel.settings import load_settings
    from flywheel.task import resolve_task
    from flywheel.train import ranks
    from flywheel.train.run import train, train_latest

    parser = argparse.ArgumentParser(description="One rank of a multi-process training (run by torchrun or accelerate launch).")
    parser.add_argument("--data-dir", help="Data folder (default: $FLYWHEEL_HOME, else ./.flywheel).")
    parser.add_argument("--task", required=True, help="The task whose [tasks.NAME] recipe, project and models apply.")
    for name, what in (("project", "the project"), ("recipe", "a default recipe or a recipe file"),
                       ("base-model", "the student's base model"), ("teacher", "a local teacher model"),
                       ("dataset-id", "the dataset's id"), ("dataset-path", "a curated dataset folder")):  # fmt: skip
        parser.add_argument(f"--{name}", help=f"{what} [default: the task's; the dataset: its newest]")
    args = parser.parse_args(argv)
    settings = load_settings(args.data_dir)
    resolved = resolve_task(settings, args.task, project=args.project, recipe=args.recipe, base_model=args.base_model,
                            teacher=args.teacher)  # fmt: skip
    if args.dataset_path:
        candidate = train(settings, project=resolved.project, task=resolved.name, dataset_path=args.dataset_path,
                          dataset_id=args.dataset_id, recipe=resolved.recipe, base_model=resolved.base_model,
                          teacher=resolved.teacher)  # fmt: skip
    else:
        candidate = train_latest(settings, resolved)
    if ranks.is_main():
        print(f"candidate {candidate.id} ({candidate.method}) ready in {candidate.path}, trained by {ranks.world_size()} processes",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
