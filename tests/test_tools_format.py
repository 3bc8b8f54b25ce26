"""The tool-call text format (`flywheel.tools`): render → parse round trips, junk stays text, a
template with a tools section gets them natively, training masks exactly the rendered call, and a
tiny model trained on tool-call chats learns to call the right tool."""

from __future__ import annotations

import copy
import json
import random

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel import tools
from flywheel.demo.tiny import build_tiny_model, train_tokenizer

TOOLS = [{"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}}}}
         for name in ("lookup", "refund")]  # fmt: skip
ASKS = {"lookup": "where is order {}", "refund": "refund order {}"}


def call(name: str, **args) -> dict:
    return {"id": f"call-{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


def chat(name: str, order: str) -> list[dict]:
    return [{"role": "user", "content": ASKS[name].format(order)},
            {"role": "assistant", "content": None, "tool_calls": [call(name, order_id=order)]}]  # fmt: skip


def examples(n: int, seed: int) -> list[dict]:
    """Curated rows: the target call as text, as curation stores it, and the tools as JSON text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        messages = chat(rng.choice(sorted(ASKS)), str(rng.randint(10, 99)))
        messages[-1] = {"role": "assistant", "content": tools.assistant_text(messages[-1])}
        rows.append({"messages": messages, "tools": json.dumps(TOOLS)})
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([json.dumps(TOOLS), tools.TOOLS_PREAMBLE, *ASKS.values(), '<tool_call>{"name": "lookup", "arguments": {"order_id": "123"}}</tool_call>'])


def test_render_then_parse_gives_the_calls_back(tokenizer):
    assert not tools.uses_template_tools(tokenizer)  # ChatML without a tools section: our format
    messages = [*chat("lookup", "417"), {"role": "tool", "tool_call_id": "call-lookup", "content": '{"status": "shipped"}'},
                {"role": "tool", "tool_call_id": "call-x", "content": "second result"}]  # fmt: skip
    text = tools.render(tokenizer, messages, TOOLS, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n" + tools.TOOLS_PREAMBLE) and json.dumps(TOOLS[1]) in text
    # the results: one user turn, never a role the template does not know
    assert "<|im_start|>user\n<tool_response>\n{\"status\": \"shipped\"}\n</tool_response>\n<tool_response>\nsecond result\n</tool_response><|im_end|>" in text
    assert "<|im_start|>tool" not in text and text.endswith("<|im_start|>assistant\n")
    written = tools.assistant_text({"role": "assistant", "content": "Checking.", "tool_calls": [call("lookup", order_id="417"), call("refund", order_id="9")]})
    content, calls = tools.parse(written)
    assert content == "Checking."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [("lookup", {"order_id": "417"}), ("refund", {"order_id": "9"})]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls) and calls[0]["id"] != calls[1]["id"]
    # the call as the assistant turn of the rendered chat is what parse reads back
    assert tools.assistant_text(messages[1]) in text


@pytest.mark.parametrize(("output", "content", "names"), [
    ("plain answer", "plain answer", []),
    ('<tool_call>{"name": "lookup", "arguments": {"order_id": 1}}', None, ["lookup"]),  # stopped before the close tag
    ('<tool_call>{"name": "lookup", "arguments": {"order', '<tool_call>{"name": "lookup", "arguments": {"order', []),  # cut off
    ('<tool_call>{"name": "lookup", "arguments": "{\\"order_id\\": 1}"}</tool_call>', None, ["lookup"]),  # arguments as a string
    ("<tool_call>{not json}</tool_call>", "<tool_call>{not json}</tool_call>", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),  # no name
    ('<tool_call>{"name": "x", "arguments": [1]}</tool_call> ok', '<tool_call>{"name": "x", "arguments": [1]}</tool_call> ok', []),
    ('a <tool_call>[]</tool_call> b <tool_call>{"name": "refund", "arguments": {}}</tool_call>', "a <tool_call>[]</tool_call> b", ["refund"]),
])  # fmt: skip
def test_parse_keeps_what_is_not_a_call_as_text(output, content, names):
    got_content, calls = tools.parse(output)
    assert got_content == content
    assert [c["function"]["name"] for c in calls] == names
    assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)


def test_stored_answers_become_assistant_messages():
    as_text = lambda stored: tools.assistant_text(tools.as_message(stored))
    expected = '<tool_call>{"name": "refund", "arguments": {"order_id": "7"}}</tool_call>'
    assert as_text(json.dumps([call("refund", order_id="7")])) == expected  # OpenAI calls
    assert as_text('{"name": "refund", "arguments": {"order_id": "7"}}') == expected  # one bare call
    assert as_text(json.dumps({"content": None, "tool_calls": [call("refund", order_id="7")]})) == expected  # a message
    assert as_text('{"label": "billing"}') == '{"label": "billing"}'  # JSON that is no call is an answer
    assert as_text("just text") == "just text"


def test_a_template_with_a_tools_section_renders_them_natively(tokenizer):
    native = copy.deepcopy(tokenizer)
    native.chat_template = (
        "{% if tools %}TOOLS {{ tools | map(attribute='function.name') | join(',') }}{{ '\\n' }}{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments.order_id }}{% endfor %}{{ '\\n' }}{% endfor %}"
    )
    assert tools.uses_template_tools(native)
    # a curated row holds the call as text: it reaches the template as a structured call, arguments an object
    messages = [{"role": "user", "content": "where is order 5"},
                {"role": "assistant", "content": tools.assistant_text(chat("lookup", "5")[1])}]  # fmt: skip
    assert tools.render(native, messages, TOOLS, add_generation_prompt=False) == "TOOLS lookup,refund\nuser: where is order 5\nassistant: CALL lookup 5\n"


def test_training_rows_mask_exactly_the_rendered_target(tokenizer):
    from flywheel.train.trainers import as_prompt_completion

    row = examples(1, seed=0)[0]
    out = as_prompt_completion(Dataset.from_list([row]), tokenizer)[0]
    assert set(out) == {"input_ids", "completion_mask"}
    assert tokenizer.decode(out["input_ids"]) == tools.render(tokenizer, row["messages"], row["tools"], add_generation_prompt=False)
    target = [t for t, m in zip(out["input_ids"], out["completion_mask"], strict=True) if m]
    assert tokenizer.decode(target) == row["messages"][-1]["content"] + "<|im_end|>\n"


@pytest.mark.slow  # (≈50 s on a busy 2-core machine: 150 steps of 170-token chats)
def test_tiny_sft_on_tool_calls_learns_to_call(tokenizer, tmp_path):
    from flywheel.train.generate import generate
    from flywheel.train.recipes import Recipe
    from flywheel.train.trainers import run

    texts = [tools.render(tokenizer, r["messages"], r["tools"], add_generation_prompt=False) for r in examples(50, seed=9)]
    base = build_tiny_model(tmp_path / "base", texts, hidden=64, layers=2, max_length=256)
    train, evals = examples(256, seed=1), examples(16, seed=2)
    recipe = Recipe(base_model=str(base), max_steps=150, max_length=256, learning_rate=3e-3, per_device_train_batch_size=8,
                    logging_steps=50, save_steps=1000, max_new_tokens=40, exact_match_samples=0)  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (a tiny model: one intra-op thread is faster, see tests/test_train.py)
    try:
        metrics = run(recipe, Dataset.from_list(train), Dataset.from_list(evals), tmp_path / "out")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
        tok = AutoTokenizer.from_pretrained(tmp_path / "out" / "model")
        prompts = [r["messages"][:-1] for r in evals]
        answers = generate(model, tok, prompts, max_new_tokens=40, tools=[r["tools"] for r in evals])
    finally:
        torch.set_num_threads(threads)
    assert metrics["eval_loss"] < 0.5 * metrics["eval_loss_before"]
    called = [[c["function"]["name"] for c in tools.parse(a)[1]] for a in answers]
    wanted = [[c["function"]["name"] for c in tools.parse(r["messages"][-1]["content"])[1]] for r in evals]
    assert all(len(c) == 1 for c in called), answers  # every answer is one call that parses
    assert sum(c == w for c, w in zip(called, wanted, strict=True)) >= 12, list(zip(answers, wanted))


@pytest.mark.slow  # (the session's SmolLM2 import)
def test_smollm2_has_no_tools_section_and_uses_our_format(real_base):
    from flywheel.train.trainers import as_prompt_completion

    tok = AutoTokenizer.from_pretrained(real_base.path)
    assert not tools.uses_template_tools(tok)
    row = examples(1, seed=3)[0]
    text = tools.render(tok, row["messages"], row["tools"], add_generation_prompt=False)
    assert text.startswith("<|im_start|>system\n" + tools.TOOLS_PREAMBLE)  # the tools replace the default system prompt
    assert text.endswith("<|im_start|>assistant\n" + row["messages"][-1]["content"] + "<|im_end|>\n")
    out = as_prompt_completion(Dataset.from_list([row]), tok)[0]
    target = [t for t, m in zip(out["input_ids"], out["completion_mask"], strict=True) if m]
    assert tools.parse(tok.decode(target, skip_special_tokens=True))[1][0]["function"]["name"] == tools.parse(row["messages"][-1]["content"])[1][0]["function"]["name"]
