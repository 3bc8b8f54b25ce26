"""Who serves what: per task, which model holds the `production` and `canary` aliases.

Every change is written with its reason into `deployment_events`, an append-only history, in
the same transaction as the alias move, so the history never disagrees with the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from flywheel.store import Connection, rollback

ALIASES = ("production", "canary")


@dataclass(frozen=True)
class Deployment:
    project: str
    task: str
    alias: str
    model: str
    share: float


def deployments(con: Connection, project: str | None = None) -> list[Deployment]:
    where, params = ("WHERE project = ?", [project]) if project else ("", [])
    rows = con.execute(f"SELECT project, task, alias, model, share FROM deployments {where}", params).fetchall()
    return [Deployment(*row) for row in rows]


def holder(con: Connection, *, project: str, task: str, alias: str = "production") -> str | None:
    """The model that holds `alias` of the task now, or None."""
    row = con.execute("SELECT model FROM deployments WHERE project = ? AND task = ? AND alias = ?",
                      [project, task, alias]).fetchone()  # fmt: skip
    return row[0] if row else None


def assign(con: Connection, *, project: str, task: str, alias: str, model: str, reason: str,
           share: float = 1.0, evidence: dict | None = None, action: str = "promote") -> Deployment:
    """Point `alias` of `task` at `model` and record why."""
    if alias not in ALIASES:
        raise ValueError(f"alias: expected one of {', '.join(ALIASES)}, got {alias!r}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share: expected a fraction in (0, 1], got {share}")
    con.execute("BEGIN")
    try:
        _set(con, project, task, alias, model, share, action, reason, evidence)
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise
    return Deployment(project, task, alias, model, share)


def remove(con: Connection, *, project: str, task: str, alias: str, reason: str, evidence: dict | None = None,
           action: str = "remove") -> None:
    """Take `alias` away (e.g. end a canary: `action="rollback"`); recorded like every other change."""
    con.execute("BEGIN")
    try:
        _delete(con, project, task, alias, action, reason, evidence)
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise


def promote_canary(con: Connection, *, project: str, task: str, reason: str, evidence: dict | None = None) -> Deployment:
    """The canary's model takes `production` and the canary alias ends, in one transaction: the
    gateway never sees the model under both aliases, nor the task without its canary's verdict."""
    con.execute("BEGIN")
    try:
        row = con.execute("SELECT model FROM deployments WHERE project = ? AND task = ? AND alias = 'canary'",
                          [project, task]).fetchone()  # fmt: skip
        if row is None:
            raise ValueError(f"task {task!r} has no canary to promote")
        _set(con, project, task, "production", row[0], 1.0, "promote", reason, evidence)
        _delete(con, project, task, "canary", "remove", "the canary became production", None)
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise
    return Deployment(project, task, "production", row[0], 1.0)


def record_event(con: Connection, *, project: str, task: str, alias: str, action: str, model: str | None,
                 reason: str, evidence: dict | None) -> None:
    """A decision that moves nothing (e.g. a canary left waiting), kept with its evidence."""
    _event(con, project, task, alias, action, model, None, reason, evidence)


def canary_started(con: Connection, *, project: str, task: str) -> tuple[str, float, datetime] | None:
    """The running canary of `task`: (model, share, when it began), or None. It began with the
    newest event that gave the alias to this model after another one (or none) held it; a later
    change of its share alone does not restart it, so its feedback so far still counts."""
    row = con.execute("SELECT model, share, updated_at FROM deployments WHERE project = ? AND task = ? AND alias = 'canary'",
                      [project, task]).fetchone()  # fmt: skip
    if row is None:
        return None
    began = con.execute(
        "SELECT max(ts) FROM deployment_events WHERE project = ? AND task = ? AND alias = 'canary'"
        " AND action = 'promote' AND model = ? AND previous_model IS DISTINCT FROM model", [project, task, row[0]]).fetchone()  # fmt: skip
    return row[0], row[1], (began[0] if began and began[0] is not None else row[2])


def record_decision(con: Connection, *, project: str, task: str, model: str, reason: str, evidence: dict | None) -> None:
    """A candidate the gate refused: nothing moves, but the decision and its evidence are kept."""
    _event(con, project, task, "production", "refuse", model, None, reason, evidence)


def history(con: Connection, *, project: str, task: str) -> list[dict]:
    """Every promotion, rollback, optimization, removal, refusal and canary wait of a task, oldest first."""
    result = con.execute(
        "SELECT ts, alias, action, model, previous_model, reason, evidence FROM deployment_events"
        " WHERE project = ? AND task = ? ORDER BY ts, rowid", [project, task])  # fmt: skip
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def _set(con: Connection, project: str, task: str, alias: str, model: str, share: float, action: str,
         reason: str, evidence: dict | None) -> None:
    previous = con.execute("SELECT model FROM deployments WHERE project = ? AND task = ? AND alias = ?",
                           [project, task, alias]).fetchone()  # fmt: skip
    # A plain UPDATE, or an INSERT when there was no row, rather than INSERT … ON CONFLICT DO
    # UPDATE: the upsert failed once under the hot-swap test (masked, not reproduced since).
    if previous:
        con.execute("UPDATE deployments SET model = ?, share = ?, updated_at = now()"
                    " WHERE project = ? AND task = ? AND alias = ?", [model, share, project, task, alias])  # fmt: skip
    else:
        con.execute("INSERT INTO deployments (project, task, alias, model, share) VALUES (?, ?, ?, ?, ?)",
                    [project, task, alias, model, share])  # fmt: skip
    _event(con, project, task, alias, action, model, previous[0] if previous else None, reason, evidence)


def _delete(con: Connection, project: str, task: str, alias: str, action: str, reason: str, evidence: dict | None) -> None:
    # SELECT then DELETE, not DELETE … RETURNING: the lake store (DuckLake) has no RETURNING.
    where, key = "WHERE project = ? AND task = ? AND alias = ?", [project, task, alias]
    previous = con.execute(f"SELECT model FROM deployments {where}", key).fetchone()
    con.execute(f"DELETE FROM deployments {where}", key)
    _event(con, project, task, alias, action, None, previous[0] if previous else None, reason, evidence)


def _event(con: Connection, project: str, task: str, alias: str, action: str, model: str | None,
           previous: str | None, reason: str, evidence: dict | None) -> None:
    con.execute(
        "INSERT INTO deployment_events (project, task, alias, action, model, previous_model, reason, evidence)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [project, task, alias, action, model, previous, reason,
         orjson.dumps(evidence, default=str).decode() if evidence is not None else None],
    )  # fmt: skip
