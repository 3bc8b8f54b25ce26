"""`flywheel train --processes 2`: one recipe trained by two torchrun processes (gloo on CPU),
registered once, by rank 0, with its card."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import Dataset, DatasetDict

from flywheel.demo.tiny import build_tiny_model, ticket_examples, ticket_texts
from flywheel.settings import load_settings
from flywheel.store import connect
from flywheel.train.recipes import Recipe, dump_recipe

TRAIN_ROWS, BATCH, STEPS = 64, 8, 4


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A data folder with a tiny base, a curated dataset registered as curation does, and a task
    whose recipe trains a few steps."""
    root = tmp_path_factory.mktemp("train-processes")
    base = build_tiny_model(root / "base", ticket_texts(), hidden=32, layers=1, max_length=64)
    data = root / "ds"
    DatasetDict(train=Dataset.from_list(ticket_examples(TRAIN_ROWS, seed=1)),
                eval=Dataset.from_list(ticket_examples(16, seed=2))).save_to_disk(data)  # fmt: skip
    home = root / "home"
    settings = load_settings(home)
    with connect(settings.db_path) as con:
        con.execute("INSERT INTO datasets (id, project, task, path, config, query, counts)"
                    " VALUES ('ds-v1', 'acme', 'triage', ?, '{}', 'SELECT 1', '{}')", [str(data.resolve())])  # fmt: skip
    recipe = Recipe(base_model=str(base), max_length=64, per_device_train_batch_size=BATCH, max_steps=STEPS,
                    logging_steps=1, save_steps=1000, exact_match_samples=4, max_new_tokens=4)  # fmt: skip
    path = dump_recipe(recipe, root / "quick.yaml")
    (home / "flywheel.toml").write_text(f'[tasks.triage]\nproject = "acme"\nrecipe = "{path}"\n')
    return home


def models(home):
    with connect(load_settings(home).db_path, read_only=True) as con:
        cols = [d[0] for d in con.execute("SELECT * FROM models LIMIT 0").description]
        return [dict(zip(cols, r)) for r in con.execute("SELECT * FROM models").fetchall()]


@pytest.mark.slow
def test_two_processes_train_one_candidate_registered_by_rank_0(home):
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "train", "--task", "triage", "--processes", "2",
                          "--data-dir", str(home)], capture_output=True, text=True, timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (row,) = models(home)  # one candidate, not one per rank
    assert row["status"] == "ready" and row["project"] == "acme" and row["dataset_id"] == "ds-v1"
    assert f"candidate {row['id']} (sft) ready" in out.stdout and "trained by 2 processes" in out.stdout
    folder = home / "models" / "triage" / row["id"]
    assert row["id"] in (folder / "README.md").read_text()  # the card, written once
    assert (folder / "model" / "model.safetensors").exists() and not (folder / "checkpoints").exists()
    metrics = json.loads(row["metrics"])
    assert metrics["global_step"] == STEPS and "exact_match" in metrics  # rank 0 measured it
    # Both ranks trained: each step took BATCH rows on each of the 2 processes, so the steps went
    # through twice the rows one process would have (the epoch counts the global batch).
    assert metrics["epoch"] == pytest.approx(STEPS * BATCH * 2 / TRAIN_ROWS)
    assert json.loads((folder / "run.json").read_text())["dataset_path"].endswith("ds")


def test_processes_without_a_dataset_exit_2_before_starting(tmp_path):
    load_settings(tmp_path)  # an empty data folder with its database
    (tmp_path / "flywheel.toml").write_text('[tasks.triage]\nproject = "acme"\n')
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "train", "--task", "triage", "--processes", "2",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "no curated dataset for task 'triage'" in out.stderr
    assert "torch.distributed" not in out.stderr  # refused before any process was started


def test_processes_must_be_at_least_one(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flywheel.cli", "train", "--task", "triage", "--processes", "0",
                          "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2 and "--processes" in out.stderr
