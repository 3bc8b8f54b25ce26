"""A task's trained draft model for speculative decoding: the production model's first layers and its head,
fine-tuned on its answers.

Prompt lookup and the n-gram table (flywheel.optimize.draft) draft only token runs seen before. A
small model drafts what the production model would write in context, including tokens never seen
after that context. It must be far cheaper than the model it drafts for: it is the production model
(for an adapter: its base with the adapter merged) cut to its first `LAYERS` decoder layers, keeping
the embeddings, the final norm and the output head, so that it starts from the same token
representations and vocabulary. Cut there, the head reads hidden states it was never trained on, so
the draft's layers are fine-tuned (TRL's SFTTrainer, the loss on the answer only; the embeddings and
the head stay the parent's) on the answers of the dataset the production model was trained on, each
after its prompt rendered as serving renders it.

It is stored as a plain Hugging Face folder, `draft/` in a variant's folder, beside `draft-model.json`:
its lineage (parent, dataset, examples, layers, training steps and final loss) and the token ids its
answers use (plus end-of-sequence), to which serving restricts its head (serving.speculate).

The same cut, with more layers, is also a serving option of its own (`layers`): the model served is
then the cut (`cut/` in the variant's folder, with its whole head), not the production model. It
answers from other weights, so the optimizer keeps it only where the benchmark shows its quality is
not worse; for a task whose answers are short and regular (a label), a third of the layers can be.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from flywheel.optimize.draft import answers
from flywheel.train.labelled_positions import labelled_positions_only

DRAFT_DIR = "draft"  # in a variant's folder: its draft model
CUT_DIR = "cut"  # in a variant's folder: the model it serves, when its option keeps fewer layers
LINEAGE_FILE = "draft-model.json"  # in the draft's folder
# 4 of SmolLM2-135M-Instruct's 30 layers: with the head restricted to the answers' tokens, one draft token
# measured ≈1/5 of the whole model's time (50-70 ms against 250-365 ms, after 120 tokens, 2 busy cores).
# Other layer counts were not compared on acceptance yet.
LAYERS = 4
# Few answers, seen often. SmolLM2 on 64 demo answers (bench/serve.py): 3 epochs, loss 3.2, 33% of drafts
# accepted; 8 epochs, loss 0.26, 39% accepted, at 2.7x the training time.
EPOCHS = 8
LEARNING_RATE = 5e-4  # the cut layers must learn to write what the head reads: higher than a LoRA's
BATCH = 4  # few examples: more, smaller steps learn more for the same compute
MAX_LENGTH = 1024  # prompt and answer tokens of a training example; longer ones are cut from the end


def build_draft_model(variant: Path, *, base: str, source: str, dataset_path: str | Path, dataset_id: str | None,
                      parent: str, layers: int = LAYERS, folder: str = DRAFT_DIR) -> dict:  # fmt: skip
    """Build and fine-tune `parent`'s first `layers` decoder layers (`source`: its adapter on `base`, or a
    whole model) into `variant/<folder>/` (its draft, or its cut); return its lineage."""
    import torch
    from transformers import AutoTokenizer

    from flywheel.tools import assistant_text, render

    examples = answers(dataset_path)
    if not examples:
        raise ValueError(f"the dataset {dataset_id!r} of {parent!r} has no answers to train its first layers on")
    is_adapter = (Path(source) / "adapter_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(str(source if (Path(source) / "tokenizer_config.json").exists() else base))
    model = _first_layers(_parent_model(base, source, is_adapter), layers)
    eos = tokenizer.eos_token or ""
    rows = [{"prompt": render(tokenizer, prompt, tools, add_generation_prompt=True),
             "completion": assistant_text(target) + eos} for prompt, tools, target in examples]  # fmt: skip
    steps, loss = _fine_tune(model, tokenizer, rows)
    used = {t for row in rows for t in tokenizer.encode(row["completion"], add_special_tokens=False)}
    used |= set(_eos_ids(model, tokenizer))
    out = variant / folder
    model.to(torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    lineage = {"parent": parent, "dataset": dataset_id, "examples": len(rows), "layers": model.config.num_hidden_layers,
               "steps": steps, "loss": loss, "tokens": len(used)}  # fmt: skip
    (out / LINEAGE_FILE).write_text(json.dumps({**lineage, "token_ids": sorted(used)}))
    return lineage


def read_draft_model(variant: str | Path) -> tuple[Path, list[int]]:
    """(folder, the token ids it drafts) of a variant's draft model; ValueError naming the file when
    it is missing or malformed."""
    folder = Path(variant) / DRAFT_DIR
    path = folder / LINEAGE_FILE
    try:
        ids = [int(t) for t in json.loads(path.read_text())["token_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the draft model: {type(exc).__name__}: {exc}") from None
    if not ids or not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: the draft model has no {'token_ids' if not ids else 'config.json'}")
    return folder, ids


def lineage_of(variant: str | Path, folder: str = DRAFT_DIR) -> dict | None:
    """The lineage of a variant's draft model (or cut) once built (None: not built, or not readable)."""
    try:
        data = json.loads((Path(variant) / folder / LINEAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in data.items() if k != "token_ids"} if isinstance(data, dict) else None


def _parent_model(base: str, source: str, is_adapter: bool):
    from transformers import AutoModelForCausalLM

    if not is_adapter:
        return AutoModelForCausalLM.from_pretrained(str(source))
    from peft import PeftModel

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(source)).merge_and_unload()


def _first_layers(model, n: int):
    """`model` keeping its first `n` decoder layers (all when it has fewer), its config saying so."""
    import torch

    decoder = model.get_decoder()
    n = min(n, len(decoder.layers))
    decoder.layers = torch.nn.ModuleList(decoder.layers[:n])
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):  # (per-layer attention kinds, where the config has them)
        model.config.layer_types = model.config.layer_types[:n]
    return model


def _fine_tune(model, tokenizer, rows: list[dict]) -> tuple[int, float | None]:
    """Full fine-tune on prompt/completion `rows`, the loss on the completion; (steps, last logged loss)."""
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    cpu = not torch.cuda.is_available()
    # The decoder layers and the final norm learn; the embeddings and the head (tied in SmolLM2) stay the
    # parent's: the draft keeps its token space, and a step costs far less (the head is 28M of its 42M).
    model.requires_grad_(True)  # (a merged adapter's base comes back frozen)
    model.get_input_embeddings().requires_grad_(False)
    model.get_output_embeddings().requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="flywheel-draft-") as out:
        config = SFTConfig(
            output_dir=out, num_train_epochs=EPOCHS, learning_rate=LEARNING_RATE, per_device_train_batch_size=BATCH,
            lr_scheduler_type="cosine", warmup_steps=0.1, completion_only_loss=True, max_length=MAX_LENGTH,
            # On CPU TRL's defaults (bf16 on, gradient checkpointing on) are 2x slower or fail: see STACK.md.
            use_cpu=cpu, bf16=False, gradient_checkpointing=False, save_strategy="no", report_to="none",
            logging_steps=1, seed=0, data_seed=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # (the loss goes to the lineage, not to stdout at every step)
        with labelled_positions_only():  # (as the recipes train: the head scores only the answers' positions)
            trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    model.eval()
    return trainer.state.global_step, round(float(losses[-1]), 4) if losses else None


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    eos = eos if isinstance(eos, list) else [eos]
    return [int(t) for t in [*eos, tokenizer.eos_token_id] if t is not None]
