"""Tool calls on the local route: what a chat request offers and requires, and its answer's shape.

`read` turns the request's `tools`, `tool_choice`, `parallel_tool_calls` and `response_format`
(checked at the gateway's door) into what the engine is given: the tools to render into the prompt
(`flywheel.tools.render`, the function training uses too) and the grammar decoding must follow
(`serving.constrain`). The model's text is read back with `flywheel.tools.parse`: whole for a plain
answer (`Offer.message`), block by block for a stream (`CallStream`), so both agree.

Text that holds a `<tool_call>` block yet comes back as text is counted in
`flywheel_tool_calls_unparsed_total` by reason: `malformed` (tools were offered but the block does
not parse), `not_allowed` (`tool_choice: "none"`: never parsed), `missing` (a call was required but
the answer holds none, say cut at `max_tokens`). It is an answer, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.tools import parse
from serving import metrics
from serving.constrain import grammar

OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class Offer:
    """What one request asks of the engine about tools and structured output."""

    tools: list[dict] | None = None  # rendered into the prompt
    grammar: str | None = None  # the output must follow it (serving.constrain)
    grammar_param: str | None = None  # the request field it comes from, for a 400
    choice: str = "auto"  # "auto", "none" or "required" (a named function is required too)

    def message(self, text: str, finish: str, route: str) -> tuple[dict, str]:
        """The chat answer's message and finish reason for the whole `text`."""
        if not self.tools:
            self.count(text, [], route)
            return {"role": "assistant", "content": text}, finish
        content, calls = parse(text)
        self.count(content or "", calls, route)
        if not calls:
            return {"role": "assistant", "content": text}, finish
        return {"role": "assistant", "content": content, "tool_calls": calls}, finish_reason(finish, calls)

    def stream(self) -> CallStream | None:
        return CallStream() if self.tools else None

    def count(self, text: str, calls: list[dict], route: str) -> None:
        """Count an answer whose `<tool_call>` text (`text`: what was left unparsed) is not a call."""
        if self.choice == "none":
            reason = "not_allowed" if OPEN in text else None
        elif not self.tools:
            reason = None
        elif OPEN in text:
            reason = "malformed"
        else:
            reason = "missing" if self.choice == "required" and not calls else None
        if reason:
            metrics.TOOL_CALLS_UNPARSED.labels(route, reason).inc()


def finish_reason(finish: str, calls: list[dict]) -> str:
    # OpenAI ends an answer that called tools with "tool_calls"; a cut one stays "length"
    return "tool_calls" if calls and finish == "stop" else finish


def read(raw: dict) -> Offer:
    """The Offer of a chat request body, whose tool fields the gateway's door has checked
    (`flywheel.ingest.tool_fields`: a malformed one is a 400 naming it before any route runs)."""
    tools = raw.get("tools") or None
    choice, fmt = raw.get("tool_choice") or "auto", raw.get("response_format") or {}
    only = choice["function"]["name"] if isinstance(choice, dict) else None
    choice = "required" if only else choice if tools else "auto"  # (no tools: nothing to call or refuse)
    schemas = {"json_object": {"type": "object"}, "json_schema": (fmt.get("json_schema") or {}).get("schema")}
    answer = schemas.get(fmt.get("type"))  # (None: free text)
    parallel = raw.get("parallel_tool_calls") is not False  # (false: at most one call per answer)
    if choice == "none":
        tools = None
    if choice == "required":
        return Offer(tools, grammar(tools, only=only, parallel=parallel), "tool_choice", choice)
    if answer is not None:  # tools may still be called (tool_choice auto), or the JSON answer given
        return Offer(tools, grammar(tools, parallel=parallel, answer=answer), "response_format", choice)
    return Offer(tools, None, None, choice)


class CallStream:
    """Splits streamed text into plain text, passed on as it comes, and tool calls, each given whole
    once its `</tool_call>` arrives. Text from a `<tool_call>` opening on is held until its block
    ends; a block that does not parse goes on as text (as `parse` leaves it in the content)."""

    def __init__(self):
        self.calls: list[dict] = []
        self.unparsed = ""  # the blocks that did not parse
        self._pending = ""  # text not yet given out: an open block, or what may start one
        self._in_call = False
        self._space = ""  # whitespace after a call, given out only when more text follows

    def feed(self, delta: str) -> list[str | dict]:
        """The pieces `delta` completes: text (str) and calls (dict), in order."""
        self._pending += delta
        out: list[str | dict] = []
        while True:
            if self._in_call:
                end = self._pending.find(CLOSE)
                if end < 0:
                    return out
                end += len(CLOSE)
                out += self._block(self._pending[:end])
                self._pending, self._in_call = self._pending[end:], False
            else:
                start = self._pending.find(OPEN)
                if start < 0:  # hold back a tail that may be the start of an opening tag
                    start = len(self._pending) - _partial(self._pending)
                    out += self._text(self._pending[:start])
                    self._pending = self._pending[start:]
                    return out
                out += self._text(self._pending[:start])
                self._pending, self._in_call = self._pending[start:], True

    def close(self) -> list[str | dict]:
        """What is left at the end: an unterminated block is read as `parse` reads it."""
        rest, self._pending = self._pending, ""
        return self._block(rest) if self._in_call else self._text(rest)

    def _block(self, block: str) -> list[str | dict]:
        _, calls = parse(block)
        if calls:
            self.calls += calls
            return calls
        self.unparsed += block
        return self._text(block)

    def _text(self, text: str) -> list[str | dict]:
        if not text:
            return []
        if self.calls and not text.strip():  # (as parse strips the content: whitespace after a call goes)
            self._space += text
            return []
        text, self._space = self._space + text, ""
        return [text]


def _partial(text: str) -> int:
    """The length of the longest tail of `text` that begins `<tool_call>`."""
    return next((k for k in range(min(len(OPEN) - 1, len(text)), 0, -1) if text.endswith(OPEN[:k])), 0)
