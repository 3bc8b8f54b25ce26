"""`kind = "upstream"`: an OpenAI-compatible provider (a hosted model, another Flywheel).

The request body goes on as sent, with `model` replaced by the route's model name there and its
token limit capped at `gateway.max_tokens`, as on every route; the answer comes back as the
provider wrote it (stream or not) and is recorded on the way.
Connection errors, timeouts, 429 and 5xx are retried with backoff up to the route's `retries`,
then the route fails (`BackendError`) and the gateway tries its fallback; a 4xx is the caller's
own error and is passed through. A stream is retried only before its first byte reaches our caller.
Tool calls in the answer are recorded with it; streamed, their deltas are assembled first (`ToolCalls`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from flywheel.settings import RouteSettings
from serving import openai_types as oa
from serving.backends.base import Backend, BackendError
from serving.recording import ID_HEADER, Call
from serving.routing import Target


def _headers(route: RouteSettings) -> dict[str, str]:
    key = os.environ.get(route.api_key_env, "") if route.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


async def send(client: httpx.AsyncClient, route: RouteSettings, path: str, body: dict, *,
               stream: bool = False) -> httpx.Response:
    """POST `body` to the route; return the first answer that is not a retryable failure.
    With `stream`, the response is open: the caller reads and closes it."""
    reason = "no attempt made"
    for attempt in range(route.retries + 1):
        if attempt:
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        request = client.build_request("POST", route.base_url.rstrip("/") + path, json=body, headers=_headers(route),
                                       timeout=route.timeout_s)  # fmt: skip
        try:
            response = await client.send(request, stream=stream)
        except httpx.TransportError as exc:
            reason = f"{route.base_url}: {type(exc).__name__} {exc}".strip()
            continue
        if response.status_code == 429 or response.status_code >= 500:
            text = (await response.aread()).decode(errors="replace")[:500]
            await response.aclose()
            reason = f"{route.base_url} answered {response.status_code}: {text}"
            continue
        return response
    raise BackendError(reason)


class ToolCalls:
    """A streamed answer's tool calls, assembled from their deltas as OpenAI's own client does:
    each delta names its call by `index`; string fields (`id`, `function.name`,
    `function.arguments`) arrive in fragments that are concatenated, `type` is set."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: Any) -> None:
        for delta in deltas if isinstance(deltas, list) else ():
            if not isinstance(delta, dict) or not isinstance(delta.get("index", 0), int):
                continue  # (a provider's oddity: the answer is relayed as sent, the record keeps what it can)
            call = self.calls.setdefault(delta.get("index", 0), {"id": "", "type": "function",
                                                                  "function": {"name": "", "arguments": ""}})  # fmt: skip
            call["id"] += delta["id"] if isinstance(delta.get("id"), str) else ""
            call["type"] = delta["type"] if isinstance(delta.get("type"), str) else call["type"]
            fn = delta.get("function") if isinstance(delta.get("function"), dict) else {}
            for key in ("name", "arguments"):
                call["function"][key] += fn[key] if isinstance(fn.get(key), str) else ""

    def done(self) -> list[dict[str, Any]]:
        return [self.calls[i] for i in sorted(self.calls)]


class UpstreamBackend(Backend):
    async def start(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def answer(self, call: Call, target: Target, raw: dict) -> Response:
        path = "/chat/completions" if call.chat else "/completions"
        body = {**raw, "model": target.adapter or self.route.model or self.name}
        # Every route obeys gateway.max_tokens: the caller's limits, capped, or (none given) the cap
        # under the name the endpoint knows (chat: max_completion_tokens, max_tokens being deprecated).
        limit = oa.token_limit(call.req, call.state.settings.gateway.max_tokens)
        given = [k for k in ("max_tokens", "max_completion_tokens") if raw.get(k) is not None]
        body.update(dict.fromkeys(given or ["max_completion_tokens" if call.chat else "max_tokens"], limit))
        response = await send(self.http, self.route, path, body, stream=call.req.stream)
        if response.status_code >= 400:  # the upstream refused the request itself: pass its answer on
            content = await response.aread()
            await response.aclose()
            call.record(target, "", None, error=f"upstream {response.status_code}: {content[:300].decode(errors='replace')}")
            return Response(content, status_code=response.status_code, media_type="application/json",
                            headers={ID_HEADER: call.id})  # fmt: skip
        if not call.req.stream:
            data = msgspec.json.decode(response.content)
            choice = (data.get("choices") or [{}])[0]
            message = choice.get("message") or {}
            text = message.get("content") or "" if call.chat else choice.get("text") or ""
            calls = message.get("tool_calls") if call.chat and isinstance(message.get("tool_calls"), list) else None
            return Response(response.content, media_type="application/json", headers={ID_HEADER: call.id},
                            background=BackgroundTask(call.record, target, text, data.get("usage"),
                                                      tool_calls=calls))  # fmt: skip

        async def relay() -> AsyncIterator[bytes]:
            pieces, usage, calls, ended, broke = [], None, ToolCalls(), False, None
            try:
                async for line in response.aiter_lines():
                    try:
                        chunk = msgspec.json.decode(line[6:]) if line.startswith("data: {") else None
                    except msgspec.DecodeError:  # a provider's oddity: relayed as sent, the record keeps what it can
                        chunk = None
                    if isinstance(chunk, dict):
                        usage = chunk.get("usage") or usage
                        for choice in chunk.get("choices") or []:
                            delta = choice.get("delta") or {}
                            pieces.append(delta.get("content") or "" if call.chat else choice.get("text") or "")
                            calls.add(delta.get("tool_calls") if call.chat else None)
                    # Recorded before [DONE] is relayed: OpenAI's client hangs up as soon as it reads it,
                    # and the disconnect would end this generator before a later line ran.
                    ended = ended or line.startswith("data: [DONE]")
                    if ended and not call.recorded:
                        call.record(target, "".join(pieces), usage, tool_calls=calls.done())
                    yield (line + "\n").encode()
                ended = True  # (a provider that never sends [DONE])
            except httpx.HTTPError as exc:
                broke = f"the upstream's stream broke off: {type(exc).__name__}: {exc}"
                raise
            finally:
                if not call.recorded:
                    call.record(target, "".join(pieces), usage, tool_calls=calls.done(),
                                error=None if ended else broke or "client disconnected")
                await response.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream", headers={ID_HEADER: call.id})
