"""Curation test data: interactions and feedback as the ingestion server stores them, written to a
real DuckDB file with batched inserts, and readers of what a curated version holds."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta

import datasets
import pyarrow as pa

from flywheel import store
from flywheel.curate.pipeline import CurationConfig

T0 = datetime(2026, 1, 1)
CFG = CurationConfig(min_examples=5, eval_fraction=0.2)
WORDS = ("order refund shipping invoice account password delivery parcel warehouse courier payment card "
         "subscription upgrade cancel renew discount voucher address street city country phone support "
         "agent ticket status delayed lost damaged replace return label printer scanner network router").split()  # fmt: skip


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def interaction(i: int | str, prompt: str, response: str, **kw) -> dict:
    """One `interactions` row as the ingestion server stores it."""
    messages = kw.pop("messages", None)
    request = kw.pop("request", None) or {"messages": messages or [
        {"role": "system", "content": "You are the support assistant of Acme."},
        {"role": "user", "content": prompt}]}  # fmt: skip
    row = {"project": "default", "id": str(i), "task": "support", "ts": T0 + timedelta(minutes=int(kw.pop("minute", 0))),
           "model": "big", "request": json.dumps(request), "response": response, "status": "ok",
           "session_id": None, "source": "ingest", "pii_redacted": 0, "received_at": T0}  # fmt: skip
    row.update(kw)
    return row


def fb(interaction_id: str, kind: str, value, minute: int = 1, project: str = "default") -> dict:
    return {"project": project, "id": f"{interaction_id}-{kind}-{minute}", "interaction_id": interaction_id,
            "kind": kind, "value": json.dumps(value), "ts": T0 + timedelta(minutes=minute), "pii_redacted": 0,
            "received_at": T0}  # fmt: skip


def fill(settings, interactions: list[dict], feedback: list[dict] = ()) -> None:
    """Batched inserts from Arrow tables (never a statement per row)."""
    with store.connect(settings.db_path) as con:
        if interactions:
            con.register("_i", pa.Table.from_pylist(interactions))
            cols = ", ".join(interactions[0])
            con.execute(f"INSERT INTO interactions ({cols}) SELECT {cols} FROM _i")
        if feedback:
            con.register("_f", pa.Table.from_pylist(list(feedback)))
            cols = ", ".join(feedback[0])
            con.execute(f"INSERT INTO feedback ({cols}) SELECT {cols} FROM _f")


def background(rng: random.Random, n: int, start: int = 1000, **kw) -> list[dict]:
    """Distinct ordinary examples (long enough that none are near-duplicates of each other)."""
    return [interaction(start + i, sentence(rng, 25), sentence(rng, 20), session_id=f"s{(start + i) // 3}", **kw)
            for i in range(n)]  # fmt: skip


def sft_rows(version, split: str | None = None) -> list[dict]:
    dd = datasets.load_from_disk(str(version.path / "sft"))
    splits = [split] if split else list(dd)
    return [row for s in splits for row in dd[s]]


def db_rows(settings, sql: str, params=()) -> list[tuple]:
    with store.connect(settings.db_path, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()
