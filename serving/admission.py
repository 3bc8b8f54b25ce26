"""Admission: say "busy" at the door, in milliseconds, instead of queueing past useful answers.

Under overload a service that accepts everything answers everything late: requests wait behind
each other for the event loop and the writer until clients time out, and memory grows with the
backlog. So every request is admitted or refused as soon as its headers are in, before its body
is read or parsed:
- 503 + Retry-After on ingestion (`POST /v1/interactions`, `/v1/feedback`) when the writer's queue
  holds `ingest.max_queue_items` items, or the ingestion requests in progress (from admission to
  answer, so including the items waiting for the writer) hold `ingest.max_queue_bytes` bytes of
  body. A body is reserved at its Content-Length (without one, at the most it may be,
  `ingest.max_body_bytes`); a request is admitted alone whatever its size. The client retries
  later with the same ids instead of waiting past `ingest.ack_timeout_s`.
- 429 + Retry-After when a key sends more than `serving.key_requests_per_s` requests, or
  `serving.key_items_per_s` ingested items, per second: a token bucket per key hash holding one
  second of its rate. Counting items needs the body, so only with that limit set is an ingestion
  body read here (it is read anyway) and handed on unchanged.

An accepted request's latency under overload is about the bytes in progress ÷ the throughput: for
it to stay within 2× its unloaded time, `ingest.max_queue_bytes` must hold about two requests
(`bench/ingest.py --overload`, batches of 100: 256 KB); a bound of many MB limits memory only.

Only keys the service knows get buckets, so a flood of made-up keys cannot grow the table; those
go on to serving.auth and its 401. Everything here runs on the event loop, without a lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import msgspec

from flywheel.registry.keys import hash_key
from flywheel.settings import Settings
from serving import metrics
from serving.auth import KeyCache
from serving.errors import error_response
from serving.writer import Writer

INGEST_PATHS = {"/v1/interactions": "interactions", "/v1/feedback": "feedback"}  # path -> the body's list

Receive = Callable[[], Awaitable[dict]]

_envelope = msgspec.json.Decoder(dict[str, list[msgspec.Raw]])


class Bucket:
    """`rate` tokens a second, holding at most one second of them."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.at = rate, rate, time.monotonic()

    def take(self, n: int) -> float:
        """Take `n` tokens: 0.0 when taken, else the seconds until they would be there. More than
        the bucket holds are taken when it is full, and the debt delays the next requests."""
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        need = min(n, self.rate)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


class Admission:
    """The bounds, what is in progress, and the buckets; `busy()` is also the readiness check."""

    def __init__(self, settings: Settings, writer: Writer, keys: KeyCache):
        self.settings, self.writer, self.keys = settings, writer, keys
        self.bytes_in_progress = 0
        self._buckets: dict[tuple[str, str], Bucket] = {}  # (key hash, "requests" | "items")

    def busy(self, length: int = 0) -> str | None:
        """Why an ingestion request of `length` bytes would be refused now (None: admitted)."""
        ingest = self.settings.ingest
        if self.writer.pending_items >= ingest.max_queue_items:
            return (f"{self.writer.pending_items} items are waiting to be written "
                    f"(limit {ingest.max_queue_items}, ingest.max_queue_items)")  # fmt: skip
        if self.bytes_in_progress and self.bytes_in_progress + length > ingest.max_queue_bytes:
            return (f"{self.bytes_in_progress} bytes of requests are in progress "
                    f"(limit {ingest.max_queue_bytes}, ingest.max_queue_bytes)")  # fmt: skip
        return None

    def over_rate(self, key_hash: str, what: str, n: int) -> float:
        """Seconds `key_hash` must wait before sending `n` more requests or items (0.0: now)."""
        rate = getattr(self.settings.serving, f"key_{what}_per_s")
        if rate is None:
            return 0.0
        bucket = self._buckets.get((key_hash, what))
        if bucket is None:
            bucket = self._buckets[(key_hash, what)] = Bucket(rate)
        return bucket.take(n)

    def known_key(self, scope: dict) -> str | None:
        scheme, _, key = (_header(scope, b"authorization") or b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        key_hash = hash_key(key.strip())
        return key_hash if self.keys.cached(key_hash) is not None else None


class AdmissionMiddleware:
    """The ASGI side of `Admission`: refuses before the app (and its body parsing) runs."""

    def __init__(self, app, admission: Admission):
        self.app, self.admission = app, admission

    async def __call__(self, scope: dict, receive: Receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        adm = self.admission
        rates = adm.settings.serving
        key_hash = adm.known_key(scope) if rates.key_requests_per_s or rates.key_items_per_s else None
        if key_hash and (wait := adm.over_rate(key_hash, "requests", 1)):
            return await _too_many(scope, receive, send, wait, "requests", rates.key_requests_per_s)
        kind = INGEST_PATHS.get(scope["path"]) if scope["method"] == "POST" else None
        if kind is None:
            return await self.app(scope, receive, send)
        max_body = adm.settings.ingest.max_body_bytes
        declared = _header(scope, b"content-length")
        length = min(int(declared), max_body) if declared and declared.isdigit() else max_body  # (over: a 413 follows)
        if why := adm.busy(length):
            metrics.REJECTED.labels("queue_full").inc()
            response = error_response(503, f"busy: {why}; retry later with the same ids", code="queue_full",
                                      headers={"Retry-After": "1"})  # fmt: skip
            return await response(scope, receive, send)
        adm.bytes_in_progress += length
        try:
            if key_hash and rates.key_items_per_s:
                body, receive = await _read_body(receive, max_body)
                if wait := adm.over_rate(key_hash, "items", _count(body, kind)):
                    return await _too_many(scope, receive, send, wait, "items", rates.key_items_per_s)
            await self.app(scope, receive, send)
        finally:
            adm.bytes_in_progress -= length


async def _too_many(scope: dict, receive: Receive, send, wait: float, what: str, rate: float) -> None:
    metrics.REJECTED.labels(f"key_{what}_per_s").inc()
    response = error_response(429, f"this key sent more than {rate:g} {what} per second "
                              f"(serving.key_{what}_per_s); retry in {wait:.2f}s", code="rate_limited",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})  # fmt: skip
    await response(scope, receive, send)


def _header(scope: dict, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, Receive]:
    """The whole body (None past `limit` bytes or on a disconnect), and a `receive` that hands
    the same messages on to the app."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        size += len(message.get("body", b""))
        if message["type"] != "http.request" or size > limit or not message.get("more_body", False):
            break
    whole = message["type"] == "http.request" and not message.get("more_body", False) and size <= limit
    body = b"".join(m.get("body", b"") for m in messages) if whole else None

    async def replay() -> dict:
        return messages.pop(0) if messages else await receive()

    return body, replay


def _count(body: bytes | None, kind: str) -> int:
    """Items in an ingestion body; 0 when it is not one (the endpoint answers that with 4xx)."""
    try:
        return len(_envelope.decode(body).get(kind, [])) if body else 0
    except (msgspec.DecodeError, RecursionError):
        return 0
