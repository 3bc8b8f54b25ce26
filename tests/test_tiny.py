"""Tiny local models: the tokenizer and model round-trip through `from_pretrained` like real ones."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from flywheel.demo.tiny import build_tiny_model, ticket_examples, ticket_texts


def test_round_trip(tmp_path):
    path = build_tiny_model(tmp_path / "tiny", ticket_texts(200), hidden=32, layers=1, heads=2, max_length=128)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

    assert model.config.model_type == "llama"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.eos_token == "<|im_end|>" and tok.model_max_length == 128
    assert model.config.vocab_size == len(tok) and model.config.pad_token_id == tok.pad_token_id

    # The template renders ChatML, and the assistant mask covers the answer and its end-of-turn token.
    messages = ticket_examples(1, seed=3)[0]["messages"]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text.startswith("<|im_start|>user\n") and text.endswith(f"<|im_start|>assistant\n{messages[-1]['content']}<|im_end|>\n")
    enc = tok.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert tok.decode(masked) == messages[-1]["content"] + "<|im_end|>"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless

    # Generation works end to end and stops within its budget.
    prompt = tok.apply_chat_template(messages[:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= prompt["input_ids"].shape[1] + 4


def test_ticket_task_is_deterministic():
    assert ticket_examples(5, seed=1) == ticket_examples(5, seed=1)
    labels = {row["messages"][-1]["content"] for row in ticket_examples(200)}
    assert labels == {"billing", "shipping", "account", "technical"}
