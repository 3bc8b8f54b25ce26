"""Tiny local models and a tiny learnable task, for tests, benches and the demo.

No machine here can download from a hub, so we build what a hub would give us: a byte-level BPE
tokenizer trained with `tokenizers` on the texts at hand, wrapped as a `PreTrainedTokenizerFast`
with a ChatML template, and a small randomly initialised Llama saved next to it. The folder loads
back with `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(path)` like any real model.
A real user points the recipe at a real model path or id instead.

Why these choices (measured, see STACK.md):
- Llama config: with a Qwen2 config, `AutoTokenizer` returns a Qwen2 tokenizer that rebuilds the
  pre-tokenizer and changes the token ids.
- pad != eos: with pad == eos the collators mask the end-of-turn token out of the loss and the
  model never learns to stop.
- the assistant turn sits inside `{% generation %}…{% endgeneration %}` (end-of-turn token
  included) so TRL's `assistant_only_loss` can build its mask.

`ticket_examples` is the demo's kind of traffic: short support tickets whose label a tiny model
can learn in a few hundred steps.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

IM_START, IM_END, PAD, BOS = "<|im_start|>", "<|im_end|>", "<|pad|>", "<|endoftext|>"

# ChatML; the assistant's content *and* its <|im_end|> are inside the generation block, so the
# model is trained to stop.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, model_max_length: int = 256):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, IM_START, IM_END]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    # The template's own words are always in the training text, so role headers are cheap tokens.
    corpus = list(texts) + ["<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"]
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        additional_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="right",
    )


def build_tiny_model(
    out_dir: Path | str,
    texts: Iterable[str],
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int | None = None,
    vocab_size: int = 512,
    max_length: int = 256,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build a random-init Llama of the given size, save both to `out_dir`.

    Returns `out_dir`; `from_pretrained(out_dir)` loads the tokenizer and the model.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, model_max_length=max_length)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_length,
        tie_word_embeddings=True,  # halves the parameters of a tiny model; the vocab dominates
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_new_tokens=32,
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --- a tiny learnable task -------------------------------------------------------------------

TICKET_LABELS: dict[str, list[str]] = {
    "billing": ["I was charged twice", "my invoice is wrong", "refund my payment", "the card was billed"],
    "shipping": ["my parcel is late", "the package never arrived", "tracking shows no update", "wrong delivery address"],
    "account": ["I cannot log in", "reset my password", "delete my account", "change my email"],
    "technical": ["the app crashes", "the page shows an error", "sync is broken", "the button does nothing"],
}
_OPENERS = ["Hi,", "Hello team,", "Urgent:", "Please help,", "Hey,", "Good morning,", ""]
_CLOSERS = ["Thanks.", "Any update?", "This is the second time.", "Regards, Sam", "", "Please advise."]
TICKET_INSTRUCTION = "Classify this support ticket as billing, shipping, account or technical."


def ticket_examples(n: int, *, seed: int = 0) -> list[dict]:
    """`n` chat examples `{"messages": [user, assistant]}`: a ticket and its one-word label."""
    rng = random.Random(seed)
    labels = sorted(TICKET_LABELS)
    rows = []
    for _ in range(n):
        label = rng.choice(labels)
        ticket = " ".join(p for p in (rng.choice(_OPENERS), rng.choice(TICKET_LABELS[label]) + ".", rng.choice(_CLOSERS)) if p)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"{TICKET_INSTRUCTION}\nTicket: {ticket}"},
                    {"role": "assistant", "content": label},
                ]
            }
        )
    return rows


def ticket_texts(n: int = 400, *, seed: int = 0) -> list[str]:
    """Plain texts of the ticket task (for training a tiny tokenizer)."""
    return [m["content"] for row in ticket_examples(n, seed=seed) for m in row["messages"]]
