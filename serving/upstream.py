"""Calls to an OpenAI-compatible upstream (a provider, a vLLM server, another Flywheel).

Connection errors, timeouts, 429 and 5xx are retried with backoff up to the route's `retries`;
a 4xx is the caller's own error and is passed through. A stream is retried only before its
first byte reaches our caller.
"""

from __future__ import annotations

import asyncio
import os

import httpx

from flywheel.settings import RouteSettings


class UpstreamError(RuntimeError):
    """The upstream failed after every retry; the message is its last reason."""


def _headers(route: RouteSettings) -> dict[str, str]:
    key = os.environ.get(route.api_key_env, "") if route.api_key_env else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def _url(route: RouteSettings, path: str) -> str:
    return route.base_url.rstrip("/") + path


async def send(client: httpx.AsyncClient, route: RouteSettings, path: str, body: dict, *,
               stream: bool = False) -> httpx.Response:
    """POST `body` to the route; return the first answer that is not a retryable failure.
    With `stream`, the response is open: the caller reads and closes it."""
    reason = "no attempt made"
    for attempt in range(route.retries + 1):
        if attempt:
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
        request = client.build_request("POST", _url(route, path), json=body, headers=_headers(route),
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
    raise UpstreamError(reason)
