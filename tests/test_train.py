"""Training end to end with real TRL trainers on a tiny Llama and a learnable ticket-labelling task.

One module-scoped SFT run is the fixture everything else leans on: it is the SFT test subject,
the teacher for distillation and GKD, and the starting point for DPO. Steps are few and sequences
short so the module stays within a few tens of seconds on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from flywheel.train.generate import exact_match
from flywheel.train.recipes import LoraRecipe, Recipe
from flywheel.settings import load_settings
from flywheel.store import connect
from flywheel.demo.tiny import build_tiny_model, ticket_examples, ticket_texts
from flywheel.train.run import BaseModelNotFound, DatasetTooSmall, NonFiniteLoss, OutOfMemory, TrainingError, train

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# Short rows, high LR, full fine-tune: what makes a random-init 160k-param model learn in ~200 steps.
FAST = dict(max_length=64, learning_rate=3e-3, per_device_train_batch_size=8, logging_steps=10, save_steps=1000, max_new_tokens=8)


def recipe(base, **changes) -> Recipe:
    return Recipe(base_model=str(base), **{**FAST, **changes})


def rows(model_id, settings):
    with connect(settings.db_path) as con:
        cols = [d[0] for d in con.execute("SELECT * FROM models LIMIT 0").description]
        return [dict(zip(cols, r)) for r in con.execute("SELECT * FROM models WHERE id = ?", [model_id]).fetchall()]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Measured here: for a 160k-param model two intra-op threads are ~9x slower per op than one
    # (sync overhead dominates, worse when the other core is busy). Restored after the module.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(one_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    base = build_tiny_model(root / "base", ticket_texts(), hidden=64, layers=2, max_length=128)
    sft = root / "ds-sft"
    DatasetDict(train=Dataset.from_list(ticket_examples(256, seed=1)), eval=Dataset.from_list(ticket_examples(64, seed=2))).save_to_disk(sft)
    settings = load_settings(root / "home")
    # Register the dataset version the way curation does, so the candidate's lineage can be checked.
    with connect(settings.db_path) as con:
        con.execute(
            "INSERT INTO datasets (id, project, task, path, config, query, counts) VALUES ('ds-v1', 'acme', 'triage', ?, '{}', 'SELECT 1', '{}')",
            [str(sft.resolve())],
        )
    return {"root": root, "base": base, "sft": sft, "settings": settings}


@pytest.fixture(scope="module")
def sft_candidate(world):
    return train(world["settings"], project="acme", task="triage", dataset_path=world["sft"], recipe=recipe(world["base"], max_steps=200))


def test_sft_lowers_eval_loss_and_raises_exact_match(world, sft_candidate):
    m = sft_candidate.metrics
    assert m["eval_loss"] < 0.5 * m["eval_loss_before"]
    tok = AutoTokenizer.from_pretrained(world["base"])
    eval_rows = list(Dataset.load_from_disk(str(world["sft"] / "eval")))
    before = exact_match(AutoModelForCausalLM.from_pretrained(world["base"]), tok, eval_rows, max_new_tokens=8)
    assert before < 0.3
    assert m["exact_match"] >= 0.9
    # The saved model answers the same on its own: loaded fresh from its folder.
    saved = AutoModelForCausalLM.from_pretrained(sft_candidate.merged_path)
    assert exact_match(saved, AutoTokenizer.from_pretrained(sft_candidate.merged_path), eval_rows[:16], max_new_tokens=8) >= 0.9


def test_candidate_is_registered_with_card(world, sft_candidate):
    (row,) = rows(sft_candidate.id, world["settings"])
    assert row["status"] == "ready" and row["error"] is None
    assert row["dataset_id"] == "ds-v1" and row["method"] == "sft" and row["base_model"] == str(world["base"])
    assert row["recipe_hash"] == sft_candidate.recipe_hash and json.loads(row["recipe"])["max_steps"] == 200
    assert json.loads(row["metrics"])["exact_match"] == sft_candidate.metrics["exact_match"]
    assert row["merged_path"] == str(sft_candidate.path / "model") and row["adapter_path"] is None
    folder = sft_candidate.path
    assert folder == world["settings"].home / "models" / "triage" / sft_candidate.id
    assert (folder / "model" / "config.json").exists() and (folder / "model" / "tokenizer.json").exists()
    assert (folder / "recipe.yaml").exists() and not (folder / "checkpoints").exists()
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and "ds-v1" in card and "eval_loss" in card and "supervised fine-tuning" in card


def test_lora_adapter_and_merge(world, sft_candidate):
    # LoRA on top of the SFT model (a trained base: LoRA on random init barely learns).
    c = train(
        world["settings"], project="acme", task="triage", dataset_path=world["sft"],
        recipe=recipe(sft_candidate.merged_path, max_steps=6, lora=LoraRecipe(r=4, alpha=8), merge=True, exact_match_samples=0),
    )
    assert (c.adapter_path / "adapter_config.json").exists() and (c.merged_path / "config.json").exists()
    from peft import AutoPeftModelForCausalLM

    peft_model = AutoPeftModelForCausalLM.from_pretrained(c.adapter_path).eval()
    merged = AutoModelForCausalLM.from_pretrained(c.merged_path).eval()
    ids = AutoTokenizer.from_pretrained(c.merged_path)("Ticket: my parcel is late", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-4)


def test_sequence_level_distillation_learns_from_teacher(world, sft_candidate, tmp_path):
    # The logged incumbent answers are useless ("unknown"); the teacher model knows the labels.
    bad = [{"messages": [r["messages"][0], {"role": "assistant", "content": "unknown"}]} for r in ticket_examples(256, seed=1)]
    path = tmp_path / "ds-logged"
    DatasetDict(train=Dataset.from_list(bad), eval=Dataset.from_list(ticket_examples(64, seed=2))).save_to_disk(path)
    c = train(
        world["settings"], project="acme", task="triage", dataset_path=path,
        recipe=recipe(world["base"], method="distill", max_steps=200), teacher=str(sft_candidate.merged_path),
    )
    assert c.status == "ready" and c.method == "distill"
    assert c.metrics["exact_match"] >= 0.8  # learnt the teacher's labels, not the logged "unknown"


def test_gkd_runs_with_local_teacher(world, sft_candidate):
    c = train(
        world["settings"], project="acme", task="triage", dataset_path=world["sft"],
        recipe=recipe(world["base"], method="gkd", max_steps=6, packing=False, exact_match_samples=4, logging_steps=2),
        teacher=str(sft_candidate.merged_path),
    )
    assert c.status == "ready" and c.method == "gkd"
    assert math.isfinite(c.metrics["train_loss"]) and math.isfinite(c.metrics["eval_loss"])
    assert (c.merged_path / "model.safetensors").exists()


def test_dpo_runs_on_preference_pairs(world, sft_candidate, tmp_path):
    labels = ["billing", "shipping", "account", "technical"]

    def pair(r):
        good = r["messages"][-1]["content"]
        return {"prompt": [r["messages"][0]], "chosen": [{"role": "assistant", "content": good}],
                "rejected": [{"role": "assistant", "content": labels[(labels.index(good) + 1) % 4]}]}

    path = tmp_path / "ds-pref"
    DatasetDict(train=Dataset.from_list([pair(r) for r in ticket_examples(64, seed=5)]),
                eval=Dataset.from_list([pair(r) for r in ticket_examples(16, seed=6)])).save_to_disk(path)
    c = train(
        world["settings"], project="acme", task="triage", dataset_path=path,
        recipe=recipe(sft_candidate.merged_path, method="dpo", max_steps=4, packing=False, learning_rate=1e-4, max_length=128, logging_steps=2),
    )
    assert c.status == "ready" and c.method == "dpo" and math.isfinite(c.metrics["eval_loss"])
    assert rows(c.id, world["settings"])[0]["status"] == "ready"


class PoisonWeights(TrainerCallback):
    """Turns every weight into NaN at step 3, as a diverging run would."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 3:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))


def test_nan_loss_aborts_and_marks_failed(world):
    with pytest.raises(NonFiniteLoss) as err:
        train(world["settings"], project="acme", task="nan", dataset_path=world["sft"],
              recipe=recipe(world["base"], max_steps=50, logging_steps=2, save_steps=2), callbacks=[PoisonWeights()])
    (row,) = rows(err.value.model_id, world["settings"])
    assert row["status"] == "failed" and row["error"].startswith("NonFiniteLoss")
    folder = world["settings"].home / "models" / "nan" / err.value.model_id
    assert not (folder / "checkpoints").exists()  # nothing to resume a diverged run from
    assert not (folder / "model").exists()


class Crash(TrainerCallback):
    def __init__(self, at: int, exc: BaseException):
        self.at, self.exc = at, exc

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise self.exc


def test_resume_from_last_checkpoint(world):
    r = recipe(world["base"], max_steps=16, save_steps=5, exact_match_samples=0)
    with pytest.raises(TrainingError) as err:
        train(world["settings"], project="acme", task="resume", dataset_path=world["sft"], recipe=r, callbacks=[Crash(12, RuntimeError("power cut"))])
    (row,) = rows(err.value.model_id, world["settings"])
    assert row["status"] == "failed" and "power cut" in row["error"]

    c = train(world["settings"], project="acme", task="resume", dataset_path=world["sft"], recipe=r)
    assert c.id == err.value.model_id and c.status == "ready"
    assert c.metrics["resumed_from"] == "checkpoint-10" and c.metrics["global_step"] == 16
    assert rows(c.id, world["settings"])[0]["status"] == "ready"


def test_out_of_memory_names_the_knob(world):
    with pytest.raises(OutOfMemory) as err:
        train(world["settings"], project="acme", task="oom", dataset_path=world["sft"], recipe=recipe(world["base"], max_steps=5),
              callbacks=[Crash(1, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))])
    assert "per_device_train_batch_size" in str(err.value) and "max_length" in str(err.value)
    (row,) = rows(err.value.model_id, world["settings"])
    assert row["status"] == "failed" and row["error"].startswith("OutOfMemory")


def test_small_dataset_refused_before_training(world, tmp_path):
    path = tmp_path / "ds-tiny"
    DatasetDict(train=Dataset.from_list(ticket_examples(5))).save_to_disk(path)
    with pytest.raises(DatasetTooSmall, match="5 training example.*min_train_examples=16"):
        train(world["settings"], project="acme", task="small", dataset_path=path, recipe=recipe(world["base"]))
    with connect(world["settings"].db_path) as con:
        assert con.execute("SELECT count(*) FROM models WHERE task = 'small'").fetchone()[0] == 0


def test_unknown_base_model_is_a_clear_error(world):
    with pytest.raises(BaseModelNotFound, match="no such model folder"):
        train(world["settings"], project="acme", task="t", dataset_path=world["sft"], recipe=recipe(world["root"] / "no-such-model"))


def test_gkd_without_teacher_is_refused(world):
    with pytest.raises(ValueError, match="teacher"):
        train(world["settings"], project="acme", task="t", dataset_path=world["sft"], recipe=recipe(world["base"], method="gkd"))


def test_prefect_task_trains_latest_dataset(world, tmp_path):
    # The flow's task called as a plain function (`.fn()`): finds the newest curated dataset of the
    # task's project (the task has no [tasks.triage] section here, so the project is given).
    from flywheel.train.recipes import dump_recipe
    from pipelines.train import train_candidate

    path = dump_recipe(recipe(world["base"], max_steps=4, exact_match_samples=0), tmp_path / "quick.yaml")
    summary = train_candidate.fn(task_name="triage", recipe=str(path), project="acme", data_dir=str(world["settings"].home))
    assert summary["status"] == "ready" and summary["metrics"]["global_step"] == 4
    assert rows(summary["id"], world["settings"])[0]["dataset_id"] == "ds-v1"


def test_cli_trains_with_the_tasks_recipe(world, tmp_path):
    # `flywheel train --task T` as a user runs it: no --recipe, so the one [tasks.T] names in
    # flywheel.toml, as in `flywheel run` (it used to fall back to the sft default).
    import subprocess
    import sys

    from flywheel.train.recipes import dump_recipe

    path = dump_recipe(recipe(world["base"], max_steps=3, exact_match_samples=0), tmp_path / "task.yaml")
    home = world["settings"].home
    toml = home / "flywheel.toml"
    toml.write_text(f'[tasks.triage]\nproject = "acme"\nrecipe = "{path}"\n')
    try:
        out = subprocess.run([sys.executable, "-m", "flywheel.cli", "train", "--task", "triage", "--data-dir", str(home)],
                             capture_output=True, text=True)  # fmt: skip
    finally:
        toml.unlink()
    assert out.returncode == 0, out.stderr
    candidate = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("candidate "))
    (row,) = rows(candidate, world["settings"])
    assert json.loads(row["recipe"])["max_steps"] == 3 and row["dataset_id"] == "ds-v1" and row["project"] == "acme"


def test_packed_sft_runs(world):
    # Packing is what CUDA gets by default ("auto"); on CPU it is opt-in. Exercise that path too.
    c = train(world["settings"], project="acme", task="packed", dataset_path=world["sft"],
              recipe=recipe(world["base"], max_steps=4, packing=True, exact_match_samples=0))
    assert c.status == "ready" and c.metrics["train_tokens"] > 0


def test_frozen_layers_are_computed_once_per_example_with_the_same_result(world, sft_candidate):
    # LoRA on the top layer of 2: layer 0 stays frozen, so from the second epoch on its output is
    # reused. The student must come out as without reuse (up to float rounding), with reuse counted.
    def student(reuse: bool):
        return train(
            world["settings"], project="acme", task="triage", dataset_path=world["sft"],
            recipe=recipe(sft_candidate.merged_path, max_steps=80, lora=LoraRecipe(r=4, alpha=8, dropout=0.0, top_layers=1),
                          exact_match_samples=0, reuse_frozen_layers=reuse),
        )

    reused, plain = student(True), student(False)
    assert reused.metrics["frozen_layers_reused"] >= 256  # 80 steps of 8 = 640 rows over 256 examples: ≥ 384 reuses
    assert "frozen_layers_reused" not in plain.metrics
    from safetensors.torch import load_file

    a, b = (load_file(c.adapter_path / "adapter_model.safetensors") for c in (reused, plain))
    assert a.keys() == b.keys() and all(".layers.1." in k for k in a)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert reused.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], rel=1e-3)


def test_the_lm_head_scores_only_labelled_positions_with_the_same_loss_and_gradient(monkeypatch):
    # On a CPU, TRL's fused LM head projects every position onto the vocabulary and masks the
    # unlabelled ones afterwards; inside `labelled_positions_only` it projects the labelled ones
    # alone (3 of 19 a row here), and the loss and gradients must not change.
    import trl.trainer.utils as trl_utils
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from flywheel.train.labelled_positions import labelled_positions_only

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config)
    add_fused_lm_head(model)
    ids = torch.randint(0, 300, (3, 20))
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]  # a completion of 3 tokens
    projected = []
    score = trl_utils._ChunkedLogProbFunction.apply

    def counted(hidden, *rest):
        projected.append(hidden.shape[0])
        return score(hidden, *rest)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counted)

    def loss_and_gradients():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), [p.grad.clone() for p in model.model.layers.parameters()]

    choice = trl_utils._use_triton
    every_loss, every_grads = loss_and_gradients()
    with labelled_positions_only():
        only_loss, only_grads = loss_and_gradients()
    assert trl_utils._use_triton is choice  # restored on the way out
    assert projected == [3 * 19, 3 * 3]
    assert only_loss == pytest.approx(every_loss.item(), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(every_grads, only_grads))
