"""The `flywheel` flow's deployments and feedback trigger: schedules from flywheel.toml, registered
on a Prefect server (the test harness, started once), the new-feedback count on a real DuckDB
file, the trigger starting one turn and not a second while it is due, and the turn's report."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from flywheel import store
from flywheel.curate.config import DatasetVersion
from flywheel.registry.deployments import assign
from flywheel.ingest.interactions import write_feedback, write_interactions
from flywheel.registry.promotion import Decision
from flywheel.ingest.records import Limits, feedback_row, interaction_row
from flywheel.settings import load_settings
from flywheel.train.run import Candidate

CONFIG = """
[tasks.triage]
project = "acme"
schedule = "*/30 2-4 * * 1-5"
min_new_feedback = 3

[tasks.summaries]
project = "acme"
schedule = ""          # no cron: only on demand
"""


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "flywheel.toml").write_text(CONFIG)
    return load_settings(tmp_path)


def traffic(settings, task: str, n: int, *, feedback: int, start: int = 0) -> None:
    """n interactions of `task`, the first `feedback` of them with a thumbs up."""
    limits = Limits(1000, 10)
    items = [{"id": f"{task}-{i}", "task": task, "model": "big", "prompt": "q", "response": "a"} for i in range(start, start + n)]
    thumbs = [{"interaction_id": f"{task}-{i}", "kind": "thumbs", "value": True} for i in range(start, start + feedback)]
    with store.connect(settings.db_path) as con:
        write_interactions(con, [interaction_row(msgspec.json.encode(i), project="acme", redact=False, limits=limits) for i in items])
        if thumbs:
            write_feedback(con, [feedback_row(msgspec.json.encode(f), project="acme", redact=False, limits=limits) for f in thumbs])


def test_deployments_are_built_with_the_configured_schedules(settings):
    from pipelines.deployments import build_deployments

    by_name = {d.name: d for d in build_deployments(settings, trigger_every_s=30)}
    assert set(by_name) == {"flywheel-triage", "flywheel-summaries", "feedback-trigger"}
    triage = by_name["flywheel-triage"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in triage.schedules] == [("*/30 2-4 * * 1-5", "UTC")]
    assert triage.parameters == {"task": "triage", "data_dir": str(settings.home.resolve())}
    assert triage.flow_name == "flywheel" and triage.entrypoint == "pipelines.turn.flywheel_flow"
    assert triage.concurrency_limit == 1  # never two turns of one task at once
    assert by_name["flywheel-summaries"].schedules == []  # empty schedule: on demand only
    trigger = by_name["feedback-trigger"]
    assert trigger.schedules[0].schedule.interval.total_seconds() == 30
    assert trigger.parameters == {"data_dir": str(settings.home.resolve())}
    # no task asks for a feedback trigger: no trigger deployment
    (settings.home / "flywheel.toml").write_text('[tasks.only]\nschedule = "0 3 * * *"\n')
    assert [d.name for d in build_deployments(load_settings(settings.home))] == ["flywheel-only"]


def test_new_feedback_is_counted_since_the_last_turn(settings):
    from pipelines.turn import feedback_since_last_turn

    assert feedback_since_last_turn(settings, "triage") == 0  # no database yet
    traffic(settings, "triage", 10, feedback=4)
    traffic(settings, "summaries", 5, feedback=5)  # another task's feedback does not count
    assert feedback_since_last_turn(settings, "triage") == 4  # no turn yet: all of it
    time.sleep(0.01)
    with store.connect(settings.db_path) as con:
        assign(con, project="acme", task="triage", alias="production", model="m1", reason="a turn")
    assert feedback_since_last_turn(settings, "triage") == 0
    traffic(settings, "triage", 3, feedback=2, start=10)
    assert feedback_since_last_turn(settings, "triage") == 2
    assert feedback_since_last_turn(settings, "summaries") == 5
    from datetime import UTC, datetime, timedelta

    assert feedback_since_last_turn(settings, "triage", since=datetime.now(UTC) + timedelta(seconds=1)) == 0
    with pytest.raises(KeyError, match="nope"):
        feedback_since_last_turn(settings, "nope")


def test_deployments_register_with_their_schedule(prefect_harness, settings):
    from prefect.client.orchestration import get_client

    from pipelines.deployments import build_deployments

    for deployment in build_deployments(settings):
        deployment.apply()
    with get_client(sync_client=True) as client:
        triage = client.read_deployment_by_name("flywheel/flywheel-triage")
        summaries = client.read_deployment_by_name("flywheel/flywheel-summaries")
        trigger = client.read_deployment_by_name("feedback-trigger/feedback-trigger")
    assert [s.schedule.cron for s in triage.schedules] == ["*/30 2-4 * * 1-5"] and triage.schedules[0].active
    assert triage.parameters == {"task": "triage", "data_dir": str(settings.home.resolve())}
    assert triage.global_concurrency_limit.limit == 1
    assert summaries.schedules == []
    assert trigger.schedules[0].schedule.interval.total_seconds() == 60


def test_the_trigger_starts_one_turn_when_enough_feedback_arrived(prefect_harness, settings):
    from prefect.client.orchestration import get_client

    from pipelines.deployments import build_deployments
    from pipelines.turn import feedback_trigger_flow

    for deployment in build_deployments(settings):
        deployment.apply()  # re-applying is idempotent: the same deployments as the test above
    traffic(settings, "triage", 5, feedback=2)
    assert feedback_trigger_flow(data_dir=str(settings.home)) == {"triage": "waiting: 2/3 new feedback"}
    traffic(settings, "triage", 2, feedback=2, start=5)
    outcome = feedback_trigger_flow(data_dir=str(settings.home))
    assert outcome["triage"].startswith("started ") and "4 new feedback >= 3" in outcome["triage"]
    # the run is due (no runner picks it up here): a second check must not start another one
    again = feedback_trigger_flow(data_dir=str(settings.home))
    assert again["triage"].endswith("is scheduled"), again
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("flywheel/flywheel-triage")
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])))
    started = [r for r in runs if "feedback-trigger" in r.tags]
    assert len(started) == 1 and started[0].parameters == {"task": "triage", "data_dir": str(settings.home.resolve())}


def test_the_turn_report_shows_counts_verdicts_with_cis_and_the_decision(tmp_path):
    from evals.stats import Comparison, Verdicts
    from pipelines.turn import turn_markdown, turn_summary
    from pipelines.loop import Turn

    dataset = DatasetVersion("ds-1", "acme", "triage", tmp_path, {"kept": 420, "corrections": 37}, True)
    candidate = Candidate("cand-1", "acme", "triage", "sft", "tiny", "ds-1", tmp_path, None, None, "h", "ready")
    verdicts = Verdicts("r1", "r0", True, None, 200, [
        Comparison("accuracy", "quality", 0.965, 0.87, 0.095, 0.06, 0.13, "better"),
        Comparison("cost_per_1k_usd", "cost", 0.01, 2.1, -2.09, -2.1, -2.08, "better", higher_is_better=False),
    ], {"quality": "better", "cost": "better"})  # fmt: skip
    turn = Turn("triage", dataset, candidate, incumbent="incumbent",
                report=SimpleNamespace(verdicts=verdicts, html_path=Path("/r/report.html")),
                decision=Decision(True, ["quality better than the incumbent (significant)"], {}))  # fmt: skip
    md = turn_markdown(turn)
    assert "| kept | 420 |" in md and "`cand-1`" in md and "**ready**" in md and "`incumbent`" in md
    assert "| accuracy | quality | 0.965 | 0.87 | +0.095 | [+0.06, +0.13] | **better** |" in md
    assert "## Gate: PROMOTED" in md and "- quality better than the incumbent (significant)" in md
    summary = turn_summary(turn)
    assert summary["promoted"] and summary["verdicts"] == {"quality": "better", "cost": "better"}
    assert summary["comparisons"][0]["ci_low"] == 0.06 and summary["dataset"]["counts"]["kept"] == 420
    msgspec.json.encode(summary)  # JSON-able: it is the flow run's result

    failed = Candidate("cand-2", "acme", "triage", "?", "tiny", "ds-1", tmp_path, None, None, "", "failed", error="loss is NaN")
    refused = Turn("triage", dataset, failed, incumbent="incumbent",
                   decision=Decision(False, ["training did not succeed (status failed)"], {}))  # fmt: skip
    md = turn_markdown(refused)
    assert "training error: loss is NaN" in md and "Not run:" in md and "## Gate: REFUSED" in md
