"""Speculative drafting replayed: what a draft policy saves, without the noise of a shared box.

Greedy output does not depend on speculation, so the model's answers are decoded once and each
policy's drafting is replayed against them: at every step the draft it proposes, the tokens the
model would accept, and what that step's forward pass costs. The costs are measured first, in the
same run, on the same model: a pass feeding 1 to 13 tokens after a demo prompt, relative to a plain
step's. The ratio printed is plain decoding's cost over speculation's for the decoding steps (the
prefill is the same for both; `bench/serve.py --speculation-only` measures the whole request). It is
how `serving.speculate.DRAFT_TOKENS` was chosen. Prints figures, asserts nothing.

    .venv/bin/python bench/draft_replay.py --base FOLDER [--answers 166] [--held-out 64] [--tokens 32]

FOLDER: an imported Hugging Face folder (e.g. a demo data folder's models/base/smollm2-135m-instruct).
Answers are re-tokenized from their text, which can differ from the decoded ids at a few tokens.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import _answers

LENGTHS = (4, 6, 8, 12, 16)  # draft lengths replayed
FED = range(1, 14)  # tokens fed per pass whose cost is measured
REPEATS = 15


def pass_costs(path: str, prompt: list[int]) -> dict[int, float]:
    """A pass feeding n tokens after `prompt`, over a plain step's (n = 1): medians of REPEATS rounds."""
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from serving.batch import cache_name

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([prompt])
    runs: dict[int, list[float]] = {n: [] for n in FED}
    with torch.inference_mode():
        for _ in range(REPEATS):  # (each round measures every n in turn: the box's drift touches all alike)
            for n in FED:
                cache = DynamicCache(config=model.config)
                model(input_ids=ids, **{cache_name(): cache}, use_cache=True, logits_to_keep=1)
                fed = torch.tensor([prompt[-n:]])
                started = time.perf_counter()
                model(input_ids=fed, **{cache_name(): cache}, use_cache=True, logits_to_keep=n)
                runs[n].append(time.perf_counter() - started)
    seconds = {n: statistics.median(r) for n, r in runs.items()}
    return {n: s / seconds[1] for n, s in seconds.items()}


def replay(draft, tests: list[tuple[list[int], list[int]]], cost: dict[int, float], eos: int, tokens: int) -> tuple[float, int, int]:
    """(plain decoding's cost / speculation's, draft tokens accepted, drafted) over the decoding steps of
    `tests` (prompt ids, answer ids); the first token comes from the prefill, as in the engine."""
    plain = spent = 0.0
    accepted = drafted = 0
    for prompt, answer in tests:
        done = answer[:1]
        while done[-1] != eos and len(done) < tokens:
            proposal = draft(prompt + done)[:max(tokens - len(done) - 1, 0)]
            right = 0
            while right < len(proposal) and len(done) + right < len(answer) and proposal[right] == answer[len(done) + right]:
                right += 1
            done = done + answer[len(done):len(done) + right + 1]
            spent += cost[min(len(proposal) + 1, max(FED))]
            accepted, drafted = accepted + right, drafted + len(proposal)
        plain += len(done) - 1
    return plain / spent, accepted, drafted


def main() -> None:
    from transformers import AutoTokenizer

    from flywheel.demo.world import SYSTEM, ticket
    from flywheel.optimize.draft import build_table, table_draft
    from serving.engine import Engine
    from serving.speculate import ngram_draft

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="an imported Hugging Face model folder")
    parser.add_argument("--answers", type=int, default=166, help="answers the table learns from (the demo's second turn trains on 166)")
    parser.add_argument("--held-out", type=int, default=64, help="tickets replayed")
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens per answer")
    args = parser.parse_args()

    rng = random.Random(0)
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket(rng)[0]}]
             for _ in range(args.answers + args.held_out)]  # fmt: skip
    started = time.perf_counter()
    texts = _answers(args.base, chats, args.tokens)
    print(f"{len(chats)} greedy answers of up to {args.tokens} tokens in {time.perf_counter() - started:.0f} s")
    tok = AutoTokenizer.from_pretrained(args.base)
    engine = Engine(args.base, max_batch=1)
    try:
        prompts = [engine.encode_chat(c) for c in chats[args.answers:]]
    finally:
        engine.close()
    eos = tok.eos_token_id
    tests = []
    for prompt, text in zip(prompts, texts[args.answers:]):
        ids = tok.encode(text, add_special_tokens=False)[:args.tokens]
        tests.append((prompt, ids + ([eos] if len(ids) < args.tokens else [])))
    cost = pass_costs(args.base, tests[0][0])
    print("pass cost / plain step, by tokens fed: " + ", ".join(f"{n}: {c:.2f}" for n, c in cost.items()))
    examples = [(c, None, {"role": "assistant", "content": t}) for c, t in zip(chats, texts)][:args.answers]
    sizes = sorted({args.answers // 4, args.answers // 2, args.answers} - {0})
    tables = {n: build_table(tok, examples[:n]) for n in sizes}
    print(f"decoding steps' cost, plain / speculating, over {len(tests)} held-out tickets:")
    for k in LENGTHS:
        ratio, accepted, drafted = replay(lambda c, k=k: ngram_draft(c, k), tests, cost, eos, args.tokens)
        print(f"  up to {k:2} tokens: prompt lookup {ratio:.2f}x ({accepted}/{drafted} accepted)", end="")
        for n, table in tables.items():
            ratio, accepted, drafted = replay(lambda c, k=k, t=table: ngram_draft(c, k) or table_draft(c, t, k), tests, cost, eos, args.tokens)
            print(f"; table of {n} answers {ratio:.2f}x ({accepted}/{drafted})", end="")
        print()


if __name__ == "__main__":
    main()
