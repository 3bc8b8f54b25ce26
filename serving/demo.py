"""`flywheel demo`: the simulated support desk (flywheel.simulate) sends its traffic and
feedback to a real Flywheel service, and we show what was stored."""

from __future__ import annotations

import httpx
from rich.console import Console
from rich.table import Table

from flywheel import store
from flywheel.keys import create_key
from flywheel.settings import Settings
from flywheel.simulate import TASK, Incumbent, traffic
from serving.app import running

PROJECT = "demo"


def _post(client: httpx.Client, path: str, kind: str, items: list[dict], batch: int = 200) -> dict[str, int]:
    totals = {"accepted": 0, "duplicate": 0, "error": 0}
    for i in range(0, len(items), batch):
        answer = client.post(path, json={kind: items[i:i + batch]})
        answer.raise_for_status()
        for k in totals:
            totals[k] += answer.json()[k]
    return totals


def run_demo(settings: Settings, *, turns: int = 1, per_turn: int = 600, console: Console | None = None) -> dict:
    """Play `turns` rounds of simulated traffic against the service; return what was stored."""
    console = console or Console()
    settings.home.mkdir(parents=True, exist_ok=True)
    with store.connect(settings.db_path) as con:
        key = create_key(con, PROJECT)
    settings.port = 0
    incumbent = Incumbent()
    summary = {"interactions": 0, "feedback": 0, "duplicates": 0}
    with running(settings) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                                timeout=60) as client:  # fmt: skip
        console.print(f"[bold]Flywheel demo[/] — service at {url}, data in {settings.home}")
        console.print(f"The product: a support desk routing tickets with [italic]{incumbent.name}[/] "
                      f"(simulated: {incumbent.error_rate:.0%} wrong routes, ~{incumbent.latency_ms:.0f} ms, "
                      f"${incumbent.usd_per_call}/call)")  # fmt: skip
        for turn in range(turns):
            interactions, feedback = traffic(per_turn, seed=turn, incumbent=incumbent)
            got = _post(client, "/v1/interactions", "interactions", interactions)
            fb = _post(client, "/v1/feedback", "feedback", feedback)
            retry = _post(client, "/v1/interactions", "interactions", interactions[:100])  # a client retrying
            summary["interactions"] += got["accepted"]
            summary["feedback"] += fb["accepted"]
            summary["duplicates"] += retry["duplicate"]
            console.print(f"turn {turn + 1}: {got['accepted']} interactions and {fb['accepted']} feedback items "
                          f"stored; a retry of 100 was answered {retry['duplicate']} × duplicate")  # fmt: skip
        page = client.get("/v1/interactions", params={"task": TASK, "limit": 1000}).json()["data"]
        redacted = [row for row in page if row["pii_redacted"]]
        summary["pii_redacted"] = sum(row["pii_redacted"] for row in page)
        if redacted:
            console.print("PII is redacted before storage, e.g.: "
                          f"[cyan]{redacted[0]['request']['messages'][1]['content']}[/]")  # fmt: skip
    with store.connect(settings.db_path, read_only=True) as con:
        rows = con.execute(
            "SELECT task, count(*), round(avg(latency_ms)), round(sum(cost_usd), 4) FROM interactions"
            " WHERE project = ? GROUP BY task", [PROJECT]).fetchall()  # fmt: skip
        kinds = con.execute("SELECT kind, count(*) FROM feedback WHERE project = ? GROUP BY kind ORDER BY kind",
                            [PROJECT]).fetchall()  # fmt: skip
    table = Table("task", "interactions", "avg latency ms", "cost $", "feedback")
    for task, n, latency, cost in rows:
        table.add_row(task, str(n), str(latency), str(cost), ", ".join(f"{k}: {c}" for k, c in kinds))
    console.print(table)
    return summary
