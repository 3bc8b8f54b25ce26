"""Batched writes and paginated reads of interactions and feedback.

Writes take many rows at once as an Arrow table (never a statement per row) and use the
primary key (project, id) for idempotency: a row whose id is already stored is not written
again, and the caller learns which rows were new.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime

import msgspec
import orjson
import pyarrow as pa

from flywheel.records import FEEDBACK_COLUMNS, INTERACTION_COLUMNS
from flywheel.store import Connection

_INTERACTION_SCHEMA = pa.schema([
    ("project", pa.string()), ("id", pa.string()), ("task", pa.string()), ("ts", pa.timestamp("us")),
    ("model", pa.string()), ("request", pa.string()), ("response", pa.string()),
    ("latency_ms", pa.float64()), ("prompt_tokens", pa.int32()), ("completion_tokens", pa.int32()),
    ("cost_usd", pa.float64()), ("status", pa.string()), ("user_id", pa.string()),
    ("session_id", pa.string()), ("tags", pa.list_(pa.string())), ("metadata", pa.string()),
    ("source", pa.string()), ("pii_redacted", pa.int32()), ("received_at", pa.timestamp("us")),
])  # fmt: skip
_FEEDBACK_SCHEMA = pa.schema([
    ("project", pa.string()), ("id", pa.string()), ("interaction_id", pa.string()), ("kind", pa.string()),
    ("value", pa.string()), ("comment", pa.string()), ("user_id", pa.string()), ("ts", pa.timestamp("us")),
    ("pii_redacted", pa.int32()), ("received_at", pa.timestamp("us")),
])  # fmt: skip
assert tuple(_INTERACTION_SCHEMA.names) == INTERACTION_COLUMNS
assert tuple(_FEEDBACK_SCHEMA.names) == FEEDBACK_COLUMNS


def _table(rows: Sequence[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def _insert_new(con: Connection, table: str, rows: Sequence[tuple], schema: pa.Schema, where: str = "") -> set[tuple]:
    """Insert the rows whose (project, id) is not stored yet; return the (project, id) inserted."""
    if not rows:
        return set()
    con.register("_batch", _table(rows, schema))
    try:
        inserted = con.execute(
            f"INSERT INTO {table} SELECT * FROM _batch b {where} ON CONFLICT DO NOTHING RETURNING project, id"
        ).fetchall()
    finally:
        con.unregister("_batch")
    return set(inserted)


def write_interactions(con: Connection, rows: Sequence[tuple]) -> set[tuple]:
    """Store interaction rows (`INTERACTION_COLUMNS` order); return the (project, id) that were new.
    Rows must not repeat a (project, id) among themselves."""
    return _insert_new(con, "interactions", rows, _INTERACTION_SCHEMA)


def write_feedback(con: Connection, rows: Sequence[tuple]) -> tuple[set[tuple], set[tuple]]:
    """Store feedback rows whose interaction exists in the same project.

    Returns (new (project, id), unknown (project, interaction_id))."""
    if not rows:
        return set(), set()
    wanted = pa.table({"project": [r[0] for r in rows], "interaction_id": [r[2] for r in rows]})
    con.register("_wanted", wanted)
    try:
        known = set(con.execute(
            "SELECT DISTINCT w.project, w.interaction_id FROM _wanted w"
            " SEMI JOIN interactions i ON i.project = w.project AND i.id = w.interaction_id"
        ).fetchall())  # fmt: skip
    finally:
        con.unregister("_wanted")
    unknown = {(r[0], r[2]) for r in rows} - known
    present = [r for r in rows if (r[0], r[2]) in known]
    return _insert_new(con, "feedback", present, _FEEDBACK_SCHEMA), unknown


def encode_cursor(ts: datetime, id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts.isoformat(), id])).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ValueError for a cursor we did not make."""
    try:
        ts, id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(ts), str(id)
    except Exception as exc:
        raise ValueError("cursor: not a cursor returned by this endpoint") from exc


_READ_COLUMNS = [c for c in INTERACTION_COLUMNS if c != "project"]


def read_interactions(
    con: Connection, *, project: str, task: str | None = None, since: datetime | None = None,
    limit: int = 100, cursor: str | None = None, id: str | None = None,
) -> tuple[list[dict], str | None]:
    """One page of a project's interactions in (ts, id) order, and the cursor of the next page."""
    where, params = ["project = ?"], [project]
    if task is not None:
        where.append("task = ?"), params.append(task)
    if id is not None:
        where.append("id = ?"), params.append(id)
    if since is not None:
        where.append("ts >= ?"), params.append(since)
    if cursor is not None:
        after_ts, after_id = decode_cursor(cursor)
        where.append("(ts > ? OR (ts = ? AND id > ?))"), params.extend([after_ts, after_ts, after_id])
    result = con.execute(
        f"SELECT {', '.join(_READ_COLUMNS)} FROM interactions WHERE {' AND '.join(where)}"
        f" ORDER BY ts, id LIMIT {int(limit) + 1}",
        params,
    )
    names = [d[0] for d in result.description]
    rows = [dict(zip(names, r)) for r in result.fetchall()]
    for row in rows:
        row["request"] = msgspec.json.decode(row["request"])
        row["metadata"] = msgspec.json.decode(row["metadata"]) if row["metadata"] is not None else None
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more else None)
