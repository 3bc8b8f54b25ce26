"""Runtime LoRA adapter management with vLLM's request bodies, for our engine and vLLM alike.

`POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter
{"lora_name"}` (plus an optional `route` when several routes can hold adapters). On a local route
the engine loads it between two batches; on a vLLM route the same call is forwarded. Promotion
code is therefore the same for both: load the adapter, then move the alias.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from serving import upstream
from serving.auth import ProjectDep
from serving.errors import ApiError
from serving.ingest import read_body
from serving.routing import Router

router = APIRouter()
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]


class LoadBody(msgspec.Struct):
    lora_name: Name
    lora_path: Annotated[str, msgspec.Meta(min_length=1)]
    route: str | None = None


class UnloadBody(msgspec.Struct):
    lora_name: Name
    route: str | None = None


def _body(raw: bytes, kind: type):
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`") or (message.split("`")[1] if "`" in message else None)
        raise ApiError(400, f"{param}: {message}", param=param, code="invalid_parameter") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}", code="malformed_json") from None


def _route(gw: Router, name: str | None) -> str:
    capable = [r for r, route in gw.routes.items() if route.kind in ("local", "vllm")]
    if name is not None:
        if name not in capable:
            raise ApiError(400, f"route: {name!r} is not a local or vllm route (those are: {', '.join(capable) or 'none'})",
                           param="route")  # fmt: skip
        return name
    if len(capable) != 1:
        raise ApiError(400, f"route: name the route that should hold the adapter ({', '.join(capable) or 'none configured'})",
                       param="route")  # fmt: skip
    return capable[0]


async def _forward(request: Request, route_name: str, path: str, body: dict) -> None:
    response = await upstream.send(request.app.state.http, request.app.state.router.routes[route_name], path, body)
    if response.status_code >= 400:
        raise ApiError(response.status_code, f"{route_name}: {response.text[:500]}", code="adapter_error")


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse, summary="Load a LoRA adapter (vLLM's API)")
async def load_lora_adapter(request: Request, project: ProjectDep) -> str:
    body = _body(await read_body(request, 64 * 1024), LoadBody)
    gw: Router = request.app.state.router
    route_name = _route(gw, body.route)
    if body.lora_name in gw.model_ids():
        raise ApiError(400, f"lora_name: {body.lora_name!r} is already a model name here", param="lora_name")
    try:
        if gw.routes[route_name].kind == "local":
            await asyncio.wrap_future(request.app.state.engines[route_name].load_adapter(body.lora_name, body.lora_path))
        else:
            await _forward(request, route_name, "/load_lora_adapter", {"lora_name": body.lora_name, "lora_path": body.lora_path})
    except (OSError, ValueError) as exc:
        raise ApiError(400, f"lora_path: cannot load {body.lora_path!r}: {exc}", param="lora_path") from None
    except upstream.UpstreamError as exc:
        raise ApiError(502, str(exc), code="upstream_error") from None
    gw.adapters[body.lora_name] = route_name
    return f"Success: LoRA adapter '{body.lora_name}' added successfully."


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse, summary="Unload a LoRA adapter (vLLM's API)")
async def unload_lora_adapter(request: Request, project: ProjectDep) -> str:
    body = _body(await read_body(request, 64 * 1024), UnloadBody)
    gw: Router = request.app.state.router
    route_name = gw.adapters.get(body.lora_name)
    if route_name is None or (body.route is not None and body.route != route_name):
        raise ApiError(404, f"lora_name: no adapter {body.lora_name!r} is loaded", param="lora_name", code="not_found")
    del gw.adapters[body.lora_name]  # new requests stop resolving to it before it goes
    try:
        if gw.routes[route_name].kind == "local":
            await asyncio.wrap_future(request.app.state.engines[route_name].unload_adapter(body.lora_name))
        else:
            await _forward(request, route_name, "/unload_lora_adapter", {"lora_name": body.lora_name})
    except upstream.UpstreamError as exc:
        raise ApiError(502, str(exc), code="upstream_error") from None
    return f"Success: LoRA adapter '{body.lora_name}' removed successfully."
