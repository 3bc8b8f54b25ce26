"""The ingestion API: POST /v1/interactions, POST /v1/feedback, GET /v1/interactions.

Each item is validated on its own and answered on its own (accepted / duplicate / error with the
reason); whole-request problems get one 4xx naming the field or limit. Accepted means committed:
the answer is sent only after the writer has committed the rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from flywheel import store
from flywheel.ingest import pii
from flywheel.ingest.interactions import read_interactions
from flywheel.ingest.records import ItemError, Limits, feedback_row, field_error, interaction_row, split_items
from flywheel.store.rows import FeedbackRow, InteractionRow
from flywheel.settings import Settings
from serving import metrics
from serving.auth import ProjectDep, require_project
from serving.errors import ApiError
from serving.writer import QueueFull, Writer

router = APIRouter()
log = logging.getLogger("flywheel.ingest")


class _Interactions(msgspec.Struct, forbid_unknown_fields=True):
    interactions: list[msgspec.Raw]


class _Feedback(msgspec.Struct, forbid_unknown_fields=True):
    feedback: list[msgspec.Raw]


_decoders = {"interactions": msgspec.json.Decoder(_Interactions), "feedback": msgspec.json.Decoder(_Feedback)}


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes `limit` bytes."""
    too_big = ApiError(413, f"request body is over the limit of {limit} bytes (ingest.max_body_bytes)",
                       code="body_too_large")  # fmt: skip
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        metrics.REJECTED.labels("body_too_large").inc()
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            metrics.REJECTED.labels("body_too_large").inc()
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _items(body: bytes, kind: str, max_items: int) -> list[msgspec.Raw | bytes]:
    try:
        items = getattr(_decoders[kind].decode(body), kind)
    except msgspec.ValidationError as exc:
        # An error in the envelope itself (a missing or unknown key) is about `kind`, and keeps
        # msgspec's own words, which name the key.
        field, message = field_error(exc, name_top_level=False)
        field = field or kind
        raise ApiError(422, f"{field}: {message}; expected a body like {{\"{kind}\": [...]}}",
                       param=field, code="invalid_body") from None  # fmt: skip
    except RecursionError as exc:  # an item nests too deeply: it alone is refused, its neighbours are not
        items = split_items(body, kind)
        if items is None:
            raise ApiError(400, f"malformed JSON: {exc}", code="malformed_json") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}", code="malformed_json") from None
    if len(items) > max_items:
        metrics.REJECTED.labels("too_many_items").inc()
        raise ApiError(413, f"{kind}: {len(items)} items is over the limit of {max_items} per request "
                       "(ingest.max_items)", param=kind, code="too_many_items")  # fmt: skip
    return items


async def _committed(writer: Writer, kind: str, rows: list[InteractionRow] | list[FeedbackRow], timeout_s: float):
    """Hand rows to the writer and wait until they are committed; 503 when it cannot take them."""
    try:
        future = writer.submit(kind, rows)
    except QueueFull as exc:
        metrics.REJECTED.labels("queue_full").inc()
        raise ApiError(503, f"busy: {exc}; retry later with the same ids", code="queue_full",
                       headers={"Retry-After": "1"}) from None  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):  # (unlike wait_for, no extra task per request)
            return await asyncio.wrap_future(future)
    except TimeoutError:
        metrics.REJECTED.labels("ack_timeout").inc()
        raise ApiError(503, f"not committed within {timeout_s}s; retry with the same ids "
                       "(items with an id are stored once)", code="ack_timeout",
                       headers={"Retry-After": "1"}) from None  # fmt: skip


async def _ingest(request: Request, project: str, kind: str,
                  make_row: Callable[..., InteractionRow | FeedbackRow]) -> Response:
    settings: Settings = request.app.state.settings
    writer: Writer = request.app.state.writer
    body = await read_body(request, settings.ingest.max_body_bytes)
    raws = _items(body, kind, settings.ingest.max_items)
    limits = Limits(settings.ingest.max_text_chars, settings.ingest.max_messages)
    redact = settings.redacts(project)
    secret = pii.installation_secret(settings.home) if redact else None
    now = datetime.now(UTC).replace(tzinfo=None)  # the request's receive time, for all its items
    results: list[dict | None] = [None] * len(raws)
    rows, indexes = [], []
    for i, raw in enumerate(raws):
        if i and i % 32 == 0:  # (≈4 ms of validation) a big batch must not hold the loop: /healthz gets in
            await asyncio.sleep(0)
        try:
            rows.append(make_row(raw, project=project, redact=redact, limits=limits, now=now, secret=secret))
            indexes.append(i)
        except ItemError as exc:
            results[i] = {"index": i, "status": "error", "error": str(exc)}
        except Exception:  # a bug of ours: this item's error, logged, and never its neighbours' loss
            log.exception("%s item %d of a request could not be validated", kind, i)
            results[i] = {"index": i, "status": "error", "error": "item: could not be validated (logged as a bug)"}
    counts = {"accepted": 0, "duplicate": 0, "error": len(raws) - len(rows)}
    if rows:
        outcome = await _committed(writer, kind, rows, settings.ingest.ack_timeout_s)
        for i, row, stored in zip(indexes, rows, outcome.stored):
            if kind == "feedback" and (project, row.interaction_id) in outcome.unknown:
                results[i] = {"index": i, "id": row.id, "status": "error",
                              "error": f"interaction_id: no interaction {row.interaction_id!r} in this project"}  # fmt: skip
                counts["error"] += 1
            else:
                status = "accepted" if stored else "duplicate"
                results[i] = {"index": i, "id": row.id, "status": status}
                counts[status] += 1
    for status, n in counts.items():
        if n:
            metrics.ITEMS.labels(kind, status).inc(n)
    # Nothing stored and something wrong: the request as a whole failed.
    code = 422 if results and counts["error"] == len(results) else 200
    return Response(orjson.dumps({**counts, "results": results}), status_code=code, media_type="application/json")


# The two hot endpoints check the key themselves instead of through `Depends`: FastAPI's
# dependency solving is a measurable share of a single-item post (bench/ingest.py (b)).
@router.post("/v1/interactions", summary="Record LLM calls (batch)")
async def post_interactions(request: Request) -> Response:
    return await _ingest(request, await require_project(request), "interactions", interaction_row)


@router.post("/v1/feedback", summary="Attach feedback to recorded interactions (batch)")
async def post_feedback(request: Request) -> Response:
    return await _ingest(request, await require_project(request), "feedback", feedback_row)


def _page(request: Request, project: str, **query) -> tuple[list[dict], str | None]:
    with store.connect(request.app.state.settings.db_path) as con:
        try:
            return read_interactions(con, project=project, **query)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="cursor", code="invalid_cursor") from None


def _json(payload: dict) -> Response:
    return Response(msgspec.json.encode(payload), media_type="application/json")


@router.get("/v1/interactions", summary="List this project's interactions, oldest first, paginated")
async def list_interactions(
    request: Request, project: ProjectDep, task: str | None = None, since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, cursor: str | None = None,
) -> Response:
    try:
        since = store.naive_utc(since)
    except OverflowError:  # the edge of the calendar with an offset, e.g. 0001-01-01T00:00:00+14:00
        raise ApiError(400, "since: out of range once converted to UTC", param="since") from None
    rows, next_cursor = await run_in_threadpool(_page, request, project, task=task, since=since, limit=limit,
                                                cursor=cursor)  # fmt: skip
    return _json({"data": rows, "next_cursor": next_cursor})


@router.get("/v1/interactions/{interaction_id}", summary="One interaction of this project")
async def get_interaction(request: Request, project: ProjectDep, interaction_id: str) -> Response:
    rows, _ = await run_in_threadpool(_page, request, project, id=interaction_id, limit=1)
    if not rows:
        raise ApiError(404, f"no interaction {interaction_id!r} in this project", code="not_found")
    return _json(rows[0])
