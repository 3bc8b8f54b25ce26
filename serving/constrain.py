"""Constrained decoding: what a request requires the output to be, as a grammar the engine obeys.

With `tool_choice: "required"` or a named function, the answer must be tool calls in the one
format `flywheel.tools.parse` reads (`<tool_call>{"name": …, "arguments": {…}}</tool_call>`);
with `response_format` `json_object` / `json_schema`, a JSON value of that schema. Asking a small
model nicely is not enough, so the engine masks, at every step, the tokens that cannot continue a
valid output (a per-row logits mask, `Constraint`).

The grammars are llguidance's (Lark with inline `%json` schemas): it installs from PyPI as one
wheel with no dependencies (so no other torch) and builds its token tables from any fast Hugging
Face tokenizer; `pip install --dry-run` here: xgrammar pulls triton and apache-tvm-ffi, outlines
four packages, lm-format-enforcer two.
JSON is written compact (`", "` and `": "`, no free whitespace), as `flywheel.tools` writes calls.
"""

from __future__ import annotations

import json
import threading
from typing import Any

# Compact JSON, as json.dumps writes it: free whitespace would let a small model pad forever.
_COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class GrammarError(ValueError):
    """The request's schemas cannot be compiled into a grammar; the message says why (the local route
    answers a 400 naming the field)."""


def grammar(tools: list[dict] | None, *, only: str | None = None, parallel: bool = True,
            answer: dict | None = None) -> str:
    """Lark text of what the output may be: `<tool_call>` blocks (one or more; exactly one unless
    `parallel`), each calling one of `tools` (only the function `only`, when named) with arguments
    of its JSON schema; or, when
    `answer` (a JSON schema) is given, a JSON value of it instead."""
    rules, starts = [], []
    if tools:
        chosen = [t["function"] for t in tools if only is None or t["function"]["name"] == only]
        calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                  "properties": {"name": {"const": f["name"]}, "arguments": _object_schema(f.get("parameters"))}}
                 for f in chosen]  # fmt: skip
        body = {"x-guidance": _COMPACT, **(calls[0] if len(calls) == 1 else {"anyOf": calls})}
        rules += ['calls: call ("\\n" call)*' if parallel else "calls: call",
                  'call: "<tool_call>" body "</tool_call>"', f"body: %json {json.dumps(body)}"]
        starts.append("calls")
    if answer is not None:
        rules.append(f"answer: %json {json.dumps({'x-guidance': _COMPACT, **answer})}")
        starts.append("answer")
    return "\n".join([f"start: {' | '.join(starts)}", *rules])


def _object_schema(parameters: Any) -> dict:
    """A function's `parameters` schema; none means it takes no arguments: `{}`."""
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object", "properties": {}}


class Grammars:
    """llguidance's view of one tokenizer (built once, on first use) and the grammars it checks."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids: set[int]):
        self._hf, self._vocab, self._eos = tokenizer, vocab_size, sorted(eos_ids)
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self):
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(self._hf, n_vocab=self._vocab, eos_token=self._eos)
            return self._tokenizer

    def check(self, grammar: str) -> None:
        """Raise GrammarError when `grammar` (Lark text) cannot be compiled."""
        import llguidance

        error = llguidance.LLMatcher.validate_grammar(llguidance.grammar_from("lark", grammar), self.tokenizer)
        if error:
            raise GrammarError(error)

    def constraint(self, grammar: str) -> Constraint:
        return Constraint(self.tokenizer, grammar, self._vocab)


class Constraint:
    """One row's grammar state: `mask` its next-token logits, then `consume` the token sampled."""

    def __init__(self, tokenizer, grammar: str, vocab_size: int):
        import llguidance
        import llguidance.torch

        self._matcher = llguidance.LLMatcher(tokenizer, llguidance.grammar_from("lark", grammar))
        if self._matcher.is_error():
            raise GrammarError(self._matcher.get_error())
        self._bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)

    def mask(self, logits) -> None:
        """Set the logits of tokens that cannot continue a valid output to -inf (in place)."""
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(self._matcher, self._bitmask, 0)
        llguidance.torch.apply_token_bitmask_inplace(logits.unsqueeze(0), self._bitmask.to(logits.device))

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise ValueError(f"the constraint refused token {token}: {self._matcher.get_error()}")
