"""Batched writes and paginated reads of interactions and feedback.

Writes take many rows at once as an Arrow table (never a statement per row) and use the
primary key (project, id) for idempotency: a row whose id is already stored is not written
again, and the caller learns which rows were new. The rows and their Arrow schema are declared in
`flywheel.store.rows`.

Each write has two forms. The default skips stored ids (`ON CONFLICT DO NOTHING RETURNING`).
`append=True` is a plain INSERT: in DuckDB 2.0 `ON CONFLICT` costs ≈4 ms per statement plus
≈4 µs per row on a table of 200k rows, which dominated the commit of a few single-item
requests; a plain INSERT still checks the primary key, and a stored id raises
`duckdb.ConstraintException` (aborting the transaction), so a caller whose ids are almost
always new appends first and redoes the rare batch that holds a retry the default way.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime

import msgspec
import orjson
import pyarrow as pa

from flywheel.store import Connection
from flywheel.store.rows import (
    FEEDBACK_SCHEMA,
    INTERACTION_COLUMNS,
    INTERACTION_SCHEMA,
    FeedbackRow,
    InteractionRow,
)


def _table(rows: Sequence[tuple], schema: pa.Schema) -> pa.Table:
    # The rows are tuples in the schema's column order (`flywheel.store.rows`): transpose them.
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in schema]
    return pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)


def _insert(con: Connection, table: str, rows: Sequence[tuple], schema: pa.Schema, append: bool) -> set[tuple] | None:
    """Insert the rows whose (project, id) is not stored yet; return the (project, id) inserted.
    append=True: insert them all (a stored id raises duckdb.ConstraintException); return None."""
    if not rows:
        return None if append else set()
    # The SQL reads the local `batch` by name (DuckDB's replacement scan): `con.register` +
    # `unregister` cost ≈2 ms per call, and `unregister` fails in an aborted transaction.
    batch = _table(rows, schema)  # noqa: F841
    if append:
        con.execute(f"INSERT INTO {table} SELECT * FROM batch")
        return None
    sql = f"INSERT INTO {table} SELECT * FROM batch ON CONFLICT DO NOTHING RETURNING project, id"
    return set(con.execute(sql).fetchall())


def warm_up() -> None:
    """Pay pyarrow's one-off lazy imports (pandas, ≈0.3 s) now rather than in the first write."""
    _table([], INTERACTION_SCHEMA)


def write_interactions(con: Connection, rows: Sequence[InteractionRow], *, append: bool = False) -> set[tuple] | None:
    """Store interaction rows; return the (project, id) that were new.
    Rows must not repeat a (project, id) among themselves. append=True: see the module docstring
    (returns None: every row was new)."""
    return _insert(con, "interactions", rows, INTERACTION_SCHEMA, append)


def write_feedback(
    con: Connection, rows: Sequence[FeedbackRow], *, append: bool = False
) -> tuple[set[tuple] | None, set[tuple]]:
    """Store feedback rows whose interaction exists in the same project.

    Returns (new (project, id), unknown (project, interaction_id)); with append=True the first is
    None (every stored row was new, a stored id raises duckdb.ConstraintException)."""
    if not rows:
        return (None if append else set()), set()
    wanted = pa.table({"project": [r.project for r in rows], "interaction_id": [r.interaction_id for r in rows]})  # noqa: F841
    known = set(con.execute(
        "SELECT DISTINCT w.project, w.interaction_id FROM wanted w"
        " SEMI JOIN interactions i ON i.project = w.project AND i.id = w.interaction_id"
    ).fetchall())  # fmt: skip
    unknown = {(r.project, r.interaction_id) for r in rows} - known
    present = [r for r in rows if (r.project, r.interaction_id) in known]
    return _insert(con, "feedback", present, FEEDBACK_SCHEMA, append), unknown


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
        row["response_tool_calls"] = msgspec.json.decode(c) if (c := row["response_tool_calls"]) is not None else None
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more else None)
