"""The rows clients write, `interactions` and `feedback`, declared once: names, order and types.

Everything that touches these rows goes by this module: `flywheel.ingest.records` builds them,
`flywheel.ingest.interactions` writes them as an Arrow table (`INSERT … SELECT *`, which matches
columns by position, so the order here is the table's) and reads them back, and the service's
writer (`serving.writer`) reads their fields by name. The tables were created by migration 1
(`flywheel.store.migrations`), which is history and is never edited; tests/test_store.py checks
that the migrated tables have exactly these columns, in this order, with these types.

The rows are NamedTuples: ingestion builds one per item on its hot path, and a tuple is the
cheapest object to build and to turn into Arrow columns (`zip(*rows)`), while every reader still
names the field it wants. `import flywheel.store` does not import this module (it needs pyarrow,
which the CLI's quick commands should not pay for).
"""

from datetime import datetime
from types import NoneType, UnionType
from typing import Any, NamedTuple, NewType, Union, get_args, get_origin, get_type_hints

import pyarrow as pa

Json = NewType("Json", str)
"""A JSON document, stored as text in a DuckDB `JSON` column."""

# Each Python type a column may have, as Arrow (what the writes send) and DuckDB (what the table
# holds, for the test against the migrations). Timestamps are naive UTC, like all we store.
_TYPES: dict[Any, tuple[pa.DataType, str]] = {
    str: (pa.string(), "VARCHAR"),
    Json: (pa.string(), "JSON"),
    datetime: (pa.timestamp("us"), "TIMESTAMP"),
    float: (pa.float64(), "DOUBLE"),
    int: (pa.int32(), "INTEGER"),
    list[str]: (pa.list_(pa.string()), "VARCHAR[]"),
}


class InteractionRow(NamedTuple):
    """One LLM call as stored in `interactions` (key: project, id); its text is already redacted."""

    project: str
    id: str  # the client's idempotency key, or generated
    task: str
    ts: datetime  # when the call happened
    model: str
    request: Json  # {"messages": [...]} or {"prompt": ...}, plus "params"
    response: str
    latency_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    status: str  # ok | error
    user_id: str | None
    session_id: str | None
    tags: list[str] | None
    metadata: Json | None
    source: str  # ingest | gateway
    pii_redacted: int  # how many values redaction replaced
    received_at: datetime  # when we received it
    response_tool_calls: Json | None  # the OpenAI tool calls of the answer, if any (migration 7)


class FeedbackRow(NamedTuple):
    """One piece of feedback as stored in `feedback` (key: project, id), about an interaction of
    the same project."""

    project: str
    id: str
    interaction_id: str
    kind: str  # thumbs | rating | label | correction
    value: Json
    comment: str | None
    user_id: str | None
    ts: datetime
    pii_redacted: int
    received_at: datetime


class Column(NamedTuple):
    name: str
    arrow: pa.DataType
    sql: str  # the DuckDB type, as `information_schema.columns.data_type` spells it
    nullable: bool


def columns(row: type[NamedTuple]) -> tuple[Column, ...]:
    """The columns of a row type, in order."""
    out = []
    for name, hint in get_type_hints(row).items():
        nullable = get_origin(hint) in (Union, UnionType) and NoneType in get_args(hint)
        if nullable:
            (hint,) = [a for a in get_args(hint) if a is not NoneType]
        arrow, sql = _TYPES[hint]
        out.append(Column(name, arrow, sql, nullable))
    return tuple(out)


def arrow_schema(row: type[NamedTuple]) -> pa.Schema:
    """The Arrow schema a batch of these rows is written with (every field nullable: the table,
    not the batch, enforces NOT NULL)."""
    return pa.schema([(c.name, c.arrow) for c in columns(row)])


INTERACTION_COLUMNS: tuple[str, ...] = InteractionRow._fields
FEEDBACK_COLUMNS: tuple[str, ...] = FeedbackRow._fields
INTERACTION_SCHEMA = arrow_schema(InteractionRow)
FEEDBACK_SCHEMA = arrow_schema(FeedbackRow)
