"""The OpenAPI document describes every request body and the bearer scheme.

The POST endpoints read their raw body and decode it with msgspec (the fast path of ingestion,
and vLLM-compatible bodies for the gateway), so FastAPI sees no body parameter and would publish
none: generated clients and schema-driven fuzzers then never get past "malformed JSON". `BODIES`
names the type each POST decodes, once; `describe` puts their JSON schemas into the document.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from flywheel.ingest.records import FeedbackIn, InteractionIn
from serving.adapters import LoadBody, UnloadBody
from serving.openai_types import ChatRequest, CompletionRequest


class InteractionBatch(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/interactions; each item is answered on its own (accepted, duplicate or error)."""

    interactions: list[InteractionIn]


class FeedbackBatch(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/feedback; each item is answered on its own."""

    feedback: list[FeedbackIn]


BODIES: dict[str, type] = {
    "/v1/interactions": InteractionBatch,
    "/v1/feedback": FeedbackBatch,
    "/v1/chat/completions": ChatRequest,
    "/v1/completions": CompletionRequest,
    "/v1/load_lora_adapter": LoadBody,
    "/v1/unload_lora_adapter": UnloadBody,
}
PUBLIC = ("/healthz", "/readyz")  # the only paths answered without a key
SCHEME = {"bearer": {"type": "http", "scheme": "bearer", "description": "An API key from `flywheel keys create`."}}


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the request bodies of `BODIES` and the bearer scheme."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(msgspec.json.schema_components(
        list(BODIES.values()), ref_template="#/components/schemas/{name}")[1])  # fmt: skip
    components["securitySchemes"] = SCHEME
    doc["security"] = [{"bearer": []}]
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if path in PUBLIC:
                operation["security"] = []
            if method == "post" and path in BODIES:
                ref = {"$ref": f"#/components/schemas/{BODIES[path].__name__}"}
                operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
    return doc


def describe(app: FastAPI) -> None:
    """Serve `document(app)` at /openapi.json (and so /docs), built once on first request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi
