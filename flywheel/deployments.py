"""Who serves what: per task, which model holds the `production` and `canary` aliases.

Every change is written with its reason into `deployment_events`, an append-only history, in
the same transaction as the alias move, so the history never disagrees with the state.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def assign(con: Connection, *, project: str, task: str, alias: str, model: str, reason: str,
           share: float = 1.0, evidence: dict | None = None, action: str = "promote") -> Deployment:
    """Point `alias` of `task` at `model` and record why."""
    if alias not in ALIASES:
        raise ValueError(f"alias: expected one of {', '.join(ALIASES)}, got {alias!r}")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share: expected a fraction in (0, 1], got {share}")
    con.execute("BEGIN")
    try:
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
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise
    return Deployment(project, task, alias, model, share)


def remove(con: Connection, *, project: str, task: str, alias: str, reason: str, evidence: dict | None = None) -> None:
    """Take `alias` away (e.g. end a canary); recorded like every other change."""
    con.execute("BEGIN")
    try:
        previous = con.execute("DELETE FROM deployments WHERE project = ? AND task = ? AND alias = ? RETURNING model",
                               [project, task, alias]).fetchone()  # fmt: skip
        _event(con, project, task, alias, "remove", None, previous[0] if previous else None, reason, evidence)
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise


def record_decision(con: Connection, *, project: str, task: str, model: str, reason: str, evidence: dict | None) -> None:
    """A candidate the gate refused: nothing moves, but the decision and its evidence are kept."""
    _event(con, project, task, "production", "refuse", model, None, reason, evidence)


def history(con: Connection, *, project: str, task: str) -> list[dict]:
    """Every promotion, rollback, removal and refusal of a task, oldest first."""
    result = con.execute(
        "SELECT ts, alias, action, model, previous_model, reason, evidence FROM deployment_events"
        " WHERE project = ? AND task = ? ORDER BY ts, rowid", [project, task])  # fmt: skip
    names = [d[0] for d in result.description]
    return [dict(zip(names, row)) for row in result.fetchall()]


def _event(con: Connection, project: str, task: str, alias: str, action: str, model: str | None,
           previous: str | None, reason: str, evidence: dict | None) -> None:
    con.execute(
        "INSERT INTO deployment_events (project, task, alias, action, model, previous_model, reason, evidence)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [project, task, alias, action, model, previous, reason,
         orjson.dumps(evidence, default=str).decode() if evidence is not None else None],
    )  # fmt: skip
