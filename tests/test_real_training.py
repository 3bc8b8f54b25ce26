"""A LoRA student on the full SmolLM2-135M-Instruct learns the demo's task: the one test that trains
the real base (slow: ≈2 min on 2 quiet cores, the session's base import included).

Tiny from-scratch models show that the training code runs; only the real base shows that the
default recipe (`recipes/sft.yaml`: LoRA on the top 8 layers, completion-only loss, lr 1e-3, 4
examples per update) teaches a pretrained model a task in the few updates a turn of traffic gives.
The student and the base answer the same held-out golden tickets greedily, as the demo's
benchmark asks them.
"""

from __future__ import annotations

import pytest

from flywheel.demo.world import golden
from flywheel.train import trainers
from flywheel.train.generate import generate, split_targets
from flywheel.train.recipes import load_recipe

pytestmark = pytest.mark.slow


def _accuracy(model, tokenizer, rows: list[dict]) -> float:
    prompts, targets = split_targets(rows)
    answers = generate(model, tokenizer, prompts, max_new_tokens=4)
    return sum(a == t for a, t in zip(answers, targets)) / len(rows)


# Run alone, the session's base import (≈40 s quiet, over 3 min on a loaded box) counts against
# the test's time limit too.
@pytest.mark.timeout(1200)
def test_a_lora_student_on_the_real_base_beats_the_base_zero_shot(real_base, tmp_path):
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # 64 verified tickets (redacted, as curation gives them), 40 updates of 4; the held-out tickets
    # are the demo's golden set, another seed: no ticket is in both.
    train = Dataset.from_list([{"messages": r["messages"]} for r in golden(64, seed=1)])
    held_out = golden(30)
    recipe = load_recipe("sft", base_model=str(real_base.path), max_steps=40)
    metrics = trainers.run(recipe, train, None, tmp_path / "student")
    assert metrics["global_step"] == 40 and (tmp_path / "student" / "adapter" / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(real_base.path)
    base = AutoModelForCausalLM.from_pretrained(real_base.path)
    zero_shot = _accuracy(base, tokenizer, held_out)  # it answers in sentences, not queue names
    student = _accuracy(PeftModel.from_pretrained(base, str(tmp_path / "student" / "adapter")), tokenizer, held_out)
    assert student >= 0.6 and student >= zero_shot + 0.4, f"zero-shot {zero_shot:.2f}, student {student:.2f}"
