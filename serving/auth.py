"""Who is calling: `Authorization: Bearer <key>` → the key's project, and may its role do this?

`ProjectDep` lets any key in (an `app` key ingests, sends feedback, calls the gateway and reads
its project's interactions); `AdminDep` only an `admin` key (adapters, /metrics): another key gets
403 naming the role it needs (roles: flywheel.registry.keys).

Keys are cached in memory (hash → project and role). An unknown key triggers at most one re-read of the
keys table per second, so a flood of bad keys cannot keep the database busy; a request whose key is
unknown waits (without a thread) for a read that began after it arrived, so a key created while the
service runs (`flywheel keys create`, the loop's own service key) works at once, even right after
another read. The cache is also re-read when it is older than `key_refresh_s`, so a key revoked
with `flywheel keys revoke` stops working then.
A read waits at most a second for the database; when another process holds it longer, requests
are answered from the keys last read, and the next one tries again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from flywheel import store
from flywheel.registry.keys import KeyOwner, active_keys, hash_key
from serving.errors import ApiError


class KeyCache:
    def __init__(self, db_path: Path, max_age_s: float, refresh_interval_s: float = 1.0):
        self.db_path = db_path
        self.max_age_s = max_age_s
        self.refresh_interval_s = min(refresh_interval_s, max_age_s)
        self._keys: dict[str, KeyOwner] = {}
        self._refreshed = 0.0  # when the keys were last read
        self._attempted = 0.0  # when a read was last tried
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._attempted < self.refresh_interval_s:
                return
            self._attempted = time.monotonic()
            try:
                with store.connect(self.db_path, timeout_s=self.refresh_interval_s) as con:
                    keys = active_keys(con)
            except store.StoreBusy:
                return  # keep answering from the keys last read; the next request tries again
            self._keys, self._refreshed = keys, time.monotonic()

    def read_since(self, moment: float) -> bool:
        """Whether a read was tried at or after `moment` (time.monotonic)."""
        return self._attempted >= moment

    def next_read_in(self) -> float:
        """Seconds until `refresh` may read again."""
        return max(0.0, self._attempted + self.refresh_interval_s - time.monotonic())

    def stale(self) -> bool:
        return time.monotonic() - self._refreshed >= self.max_age_s

    def cached(self, key_hash: str) -> KeyOwner | None:
        return self._keys.get(key_hash)


async def key_owner(request: Request) -> KeyOwner:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, "missing API key: send `Authorization: Bearer <key>`", code="missing_api_key")
    cache: KeyCache = request.app.state.keys
    key_hash = hash_key(key.strip())
    arrived = time.monotonic()
    owner = cache.cached(key_hash)
    if owner is None or cache.stale():
        await run_in_threadpool(cache.refresh)
        owner = cache.cached(key_hash)
    while owner is None and not cache.read_since(arrived):  # a read just before held this one back
        await asyncio.sleep(cache.next_read_in() + 0.005)  # (a timer may fire a little early)
        await run_in_threadpool(cache.refresh)
        owner = cache.cached(key_hash)
    if owner is None:
        raise ApiError(401, "invalid API key", code="invalid_api_key")
    return owner


async def require_project(request: Request) -> str:
    return (await key_owner(request)).project


async def require_admin(request: Request) -> str:
    owner = await key_owner(request)
    if not owner.may("admin"):
        raise ApiError(403, f"this needs an admin key of project {owner.project!r}; this one is an {owner.role!r} key "
                       f"(`flywheel keys create --project {owner.project} --role admin`)", code="admin_key_required")  # fmt: skip
    return owner.project


ProjectDep = Annotated[str, Depends(require_project)]  # any key of the project
AdminDep = Annotated[str, Depends(require_admin)]  # an admin key of the project
