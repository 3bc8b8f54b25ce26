"""The `models` table as the registry reads it: what a candidate is (its project, status and the
folder the serving tier loads), for promotion, rollback, canary settlement and the CLI.

Training writes the rows (`flywheel.train.run`); everything that puts a model in service reads
them here, so "which folder serves this candidate" is answered once.
"""

from __future__ import annotations

from dataclasses import dataclass

from flywheel.store import Connection


@dataclass(frozen=True)
class CandidateRecord:
    id: str
    project: str
    task: str
    status: str
    path: str | None  # the adapter folder, else the merged model's: what the serving tier loads


def candidate(con: Connection, model_id: str) -> CandidateRecord | None:
    """The registered candidate `model_id`, or None (a route name, or nothing)."""
    row = con.execute("SELECT id, project, task, status, coalesce(adapter_path, merged_path) FROM models WHERE id = ?",
                      [model_id]).fetchone()  # fmt: skip
    return CandidateRecord(*row) if row else None
