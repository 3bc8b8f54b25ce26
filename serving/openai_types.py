"""The OpenAI request bodies we accept and the response and chunk bodies we produce.

Tool calling: `tools`, `tool_choice`, `parallel_tool_calls` and `response_format` are typed here
and their contents checked by `flywheel.ingest.tool_fields` (the gateway's door), as at ingestion.
Messages are kept as sent (an assistant's `tool_calls` with null content, `tool` results with
their `tool_call_id`): a route takes them as they are.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec

# A temperature below serving.engine.GREEDY_BELOW (1e-5, as vLLM) decodes greedily: dividing the
# logits by 1e-300 would overflow them, and the limit of sampling as it goes to 0 is the argmax.
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(gt=0, le=1)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
# A 64-bit signed integer, as vLLM and OpenAI take it; a torch generator accepts every one of them.
Seed = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Params(msgspec.Struct, kw_only=True):
    # Unknown fields are allowed: OpenAI clients send many, and upstream routes receive them all.
    model: Annotated[str, msgspec.Meta(min_length=1)]
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    seed: Seed | None = None
    user: Annotated[str, msgspec.Meta(max_length=256)] | None = None  # (recorded as the user id)
    stream_options: dict[str, Any] | None = None


class ChatRequest(_Params, kw_only=True):
    messages: Annotated[list[dict[str, Any]], msgspec.Meta(min_length=1)]
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Params, kw_only=True):
    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]


def token_limit(request: _Params, cap: int) -> int:
    """The most tokens an answer may have: what the caller asked for, at most `cap` (`gateway.max_tokens`)."""
    return min(request.max_completion_tokens or request.max_tokens or cap, cap)


def stops(request: _Params) -> list[str]:
    return [request.stop] if isinstance(request.stop, str) else list(request.stop or [])


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def completion_body(chat: bool, id: str, model: str, text: str, finish: str, usage_: dict) -> dict:
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
              if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})  # fmt: skip
    return {"id": id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage_}  # fmt: skip


def chunk_body(chat: bool, id: str, model: str, *, text: str = "", finish: str | None = None,
               first: bool = False, usage_: dict | None = None) -> dict:
    if usage_ is not None:
        choices = []
    elif chat:
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        choices = [{"index": 0, "delta": delta, "finish_reason": finish}]
    else:
        choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
    body = {"id": id, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": choices}  # fmt: skip
    if usage_ is not None:
        body["usage"] = usage_
    return body


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else msgspec.json.encode(payload).decode()
    return f"data: {data}\n\n".encode()
