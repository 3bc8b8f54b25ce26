"""The demo's summary: one row per task and turn, printed as a table and written as an HTML page.

`pipelines.demo` turns the loop; this is how its evidence is shown: what served the app and how
well, the candidate, its benchmark against the incumbent (quality CI, p95, cost) and the gate's
decision, with links to each turn's benchmark report and charts.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table


def quality(comparisons: list[dict]) -> str:
    q = next((c for c in comparisons if c["dimension"] == "quality"), None)
    return (f"{q['metric']} {q['candidate']:.3f} vs {q['incumbent']:.3f} (diff CI [{q['ci_low']:+.3f}, {q['ci_high']:+.3f}])"
            if q else "-")  # fmt: skip


def evidence(ev: dict) -> tuple[str, str]:
    p95 = f"{ev['latency_p95_ms']:.0f}" if ev.get("latency_p95_ms") is not None else "-"
    cost = (f"${ev['cost_per_1k_usd']:.4f} vs ${ev['incumbent_cost_per_1k_usd']:.4f}"
            if ev.get("cost_per_1k_usd") is not None and ev.get("incumbent_cost_per_1k_usd") else "-")  # fmt: skip
    return p95, cost


def zero_shot_row(task: str, z: dict) -> dict:
    p95, cost = evidence(z["evidence"])
    return {"task": task, "turn": "0", "served_by": "-", "live_accuracy": "-", "dataset": "-", "candidate": z["candidate"],
            "benchmark quality": quality(z["comparisons"]), "p95 ms": p95, "cost / 1k req": cost,
            "decision": "the starting point: the base before any training (not a candidate)"}  # fmt: skip


def turn_row(task: str, i: int, live: dict, turn: dict) -> dict:
    counts = (turn["dataset"] or {}).get("counts", {})
    p95, cost = evidence(turn["evidence"])
    return {
        "task": task, "turn": str(i), "served_by": live["served_by"], "live_accuracy": f"{live['live_accuracy']:.1%}",
        "dataset": f"{counts.get('train', '?')} train ex", "candidate": (turn["candidate"] or {}).get("id", "-"),
        "benchmark quality": quality(turn["comparisons"]), "p95 ms": p95, "cost / 1k req": cost,
        "decision": ("promote: " if turn["promoted"] else "refuse: ") + "; ".join(turn["reasons"]),
    }  # fmt: skip


def write_html(rows: list[dict], turns: list[dict], path: Path, *, title: str, note: str) -> None:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    def rel(target: str) -> str:  # links that work wherever the folder is opened from
        return os.path.relpath(Path(target).resolve(), path.parent.resolve())

    charts = "".join(f'<h3>{html.escape(t["task"])}, turn {t["turn"]}</h3><p><a href="{rel(t["report"])}">benchmark report</a></p>'
                     + "".join(f'<img src="{rel(c)}" width="420">' for c in t["charts"])
                     for t in turns if t["report"])  # fmt: skip
    path.write_text(f"<html><head><meta charset='utf-8'><title>Flywheel demo</title></head><body>"
                    f"<h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>"
                    f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table>{charts}</body></html>")


def print_table(rows: list[dict], title: str, console: Console) -> None:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=max(180, console.width)).print(table)
