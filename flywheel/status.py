"""What `flywheel status` shows, per project and task: traffic, feedback, datasets, candidates,
who serves what and the last decision, in one read-only query over the store."""

from __future__ import annotations

from flywheel.optimize.variants import METHOD as VARIANT
from flywheel.store import Connection


def task_overview(con: Connection, task: str | None = None) -> list[tuple]:
    """One row per (project, task) that has traffic, ordered by project and task."""
    where, params = ("WHERE task = ?", [task]) if task else ("", [])
    return con.execute(
        "WITH i AS (SELECT project, task, count(*) AS n, count(*) FILTER (status = 'error') AS errors,"
        f"  max(ts) AS last_seen FROM interactions {where} GROUP BY ALL),"
        " f AS (SELECT i.project, i.task, count(*) AS n FROM feedback f"
        "  JOIN interactions i ON i.project = f.project AND i.id = f.interaction_id GROUP BY ALL),"
        " d AS (SELECT project, task, arg_max(id, created_at) AS latest, count(*) AS n FROM datasets GROUP BY ALL),"
        " m AS (SELECT project, task, count(*) FILTER (status = 'ready') AS ready, count(*) AS n FROM models"
        f"  WHERE method <> '{VARIANT}' GROUP BY ALL),"  # candidates: serving variants of them are not more of them
        " p AS (SELECT project, task, string_agg(alias || '=' || model, ', ' ORDER BY alias DESC) AS serving"
        "  FROM deployments GROUP BY ALL),"
        " e AS (SELECT project, task, arg_max(action || ' ' || coalesce(model, '') || ': ' || reason, ts) AS last"
        "  FROM deployment_events GROUP BY ALL)"
        " SELECT i.project, i.task, i.n, i.errors, coalesce(f.n, 0),"
        "  coalesce(d.latest || ' (' || d.n || ')', '-'), coalesce(m.ready || '/' || m.n, '0'),"
        "  coalesce(p.serving, '-'), coalesce(e.last, '-'), strftime(i.last_seen, '%Y-%m-%d %H:%M')"
        " FROM i LEFT JOIN f USING (project, task) LEFT JOIN d USING (project, task)"
        " LEFT JOIN m USING (project, task) LEFT JOIN p USING (project, task) LEFT JOIN e USING (project, task)"
        " ORDER BY i.project, i.task",
        params,
    ).fetchall()


def service_lines(url: str) -> list[str]:
    """What the running service says it cannot serve (its /healthz `unavailable` list: a deployed
    model that failed to load answers 503), or that no service answers at `url`."""
    import httpx

    try:
        health = httpx.get(f"{url}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return [f"service: not reachable at {url}"]
    return [f"NOT SERVED {u['model']} ({', '.join(u['aliases']) or 'no alias'}): {u['reason']}"
            for u in health.get("unavailable", [])]  # fmt: skip
