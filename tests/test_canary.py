"""The canary from the gate to its settlement, on a real DuckDB file: users are routed by the
gateway's own router (so the canary gets its share of them), their thumbs are drawn from a known
rate per model and stored through the ingestion functions, and `settle` promotes, rolls back or
waits; each outcome must be in the deployment history with its numbers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from flywheel import store
from flywheel.ingest.interactions import write_feedback, write_interactions
from flywheel.ingest.records import Limits, feedback_row, interaction_row
from flywheel.registry.canary import canary_status, describe, settle, two_proportions
from flywheel.registry.deployments import assign, deployments, history
from flywheel.registry.gate import Evidence, GateConfig, decide
from flywheel.registry.promotion import promote, rollback
from flywheel.settings import load_settings
from flywheel.task import resolve_task
from serving.routing import Router

GOOD = Evidence("ready", True, {"quality": "better", "latency": "better", "cost": "better"},
                latency_p95_ms=40, cost_per_1k_usd=0.02, incumbent_cost_per_1k_usd=2.1, quality_ci=(0.05, 0.12),
                n_paired=200)  # fmt: skip
CONFIG = """
[tasks.t]
project = "p"
[tasks.t.gate]
canary_share = 0.2
canary_min_feedback = 30
canary_max_days = 7
[routes.incumbent]
kind = "upstream"
base_url = "http://127.0.0.1:9/v1"
[routes.cand]
kind = "upstream"
base_url = "http://127.0.0.1:9/v1"
"""
LIMITS = Limits(1000, 10)


@pytest.fixture
def settings(tmp_path):
    (tmp_path / "flywheel.toml").write_text(CONFIG)
    s = load_settings(tmp_path)
    with store.connect(s.db_path) as con:
        assign(con, project="p", task="t", alias="production", model="incumbent", reason="start")
    return s


def aliases(settings) -> dict[str, tuple[str, float]]:
    with store.connect(settings.db_path) as con:
        return {d.alias: (d.model, d.share) for d in deployments(con, "p") if d.task == "t"}


def events(settings) -> list[dict]:
    with store.connect(settings.db_path) as con:
        rows = history(con, project="p", task="t")
    return [{**e, "evidence": msgspec.json.decode(e["evidence"]) if e["evidence"] else None} for e in rows]


def pass_the_gate(settings, model="cand") -> list[str]:
    loaded: list[str] = []
    decision = decide(GOOD, GateConfig(**settings.tasks["t"].gate))
    promote(settings, project="p", task="t", model=model, path=f"/m/{model}", decision=decision,
            load=lambda name, path: loaded.append(name))  # fmt: skip
    return loaded


def write(settings, votes: list[tuple[str, str, bool]], ts: datetime | None = None) -> None:
    """(interaction id, model, thumbs up?) -> an interaction and its thumbs, as ingestion stores them."""
    items = [{"id": i, "task": "t", "model": m, "prompt": "q", "response": "a",
              **({"ts": ts.isoformat()} if ts else {})} for i, m, _ in votes]  # fmt: skip
    thumbs = [{"interaction_id": i, "kind": "thumbs", "value": up} for i, _, up in votes]
    with store.connect(settings.db_path) as con:
        write_interactions(con, [interaction_row(msgspec.json.encode(x), project="p", redact=False, limits=LIMITS) for x in items])
        write_feedback(con, [feedback_row(msgspec.json.encode(f), project="p", redact=False, limits=LIMITS) for f in thumbs])


def serve_users(settings, users: range, rates: dict[str, float], seed: int) -> dict[str, int]:
    """Each user asks for alias `t` once; the gateway's router picks the model (the canary for its
    share of users), and the user's thumb is up with the chosen model's true rate."""
    router = Router(settings)
    router.refresh_aliases(force=True)
    rng, votes, served = random.Random(seed), [], {}
    for u in users:
        model = router.resolve("p", "t", user=f"user-{u}").model_id
        served[model] = served.get(model, 0) + 1
        votes.append((f"{seed}-{u}", model, rng.random() < rates[model]))
    write(settings, votes)
    return served


def test_a_passing_candidate_serves_the_canary_first_and_a_better_one_is_promoted(settings):
    assert pass_the_gate(settings) == ["cand"]  # loaded in the serving tier first, as for production
    assert aliases(settings) == {"production": ("incumbent", 1.0), "canary": ("cand", 0.2)}
    assert "canary for 20% of users" in events(settings)[-1]["reason"]

    served = serve_users(settings, range(600), {"incumbent": 0.6, "cand": 0.9}, seed=1)
    assert 80 < served["cand"] < 160 and served["cand"] + served["incumbent"] == 600  # its share of users
    with store.connect(settings.db_path) as con:
        live = canary_status(con, "p", "t", GateConfig(**settings.tasks["t"].gate))
    assert live["canary"]["thumbs"] == served["cand"] and live["outcome"] == "promote"
    assert describe(live).startswith(f"canary cand (20%, 0.0 d): {live['canary']['thumbs_up']}/{served['cand']} up")

    result = settle(settings, resolve_task(settings, "t"))
    assert result.outcome == "promote" and "significantly better" in result.reason
    assert aliases(settings) == {"production": ("cand", 1.0)}
    promoted, removed = events(settings)[-2:]
    assert (promoted["alias"], promoted["action"], promoted["model"], promoted["previous_model"]) == (
        "production", "promote", "cand", "incumbent")
    e = promoted["evidence"]
    assert e["canary"]["thumbs"] == served["cand"] and e["production"]["thumbs"] == served["incumbent"]
    assert e["p_value"] < 0.05 and 0 < e["ci_low"] < e["diff"] < e["ci_high"] and e["rule"].startswith("canary significantly better")
    assert (removed["alias"], removed["action"], removed["previous_model"]) == ("canary", "remove", "cand")
    with store.connect(settings.db_path) as con:
        assert canary_status(con, "p", "t") is None
    assert settle(settings, resolve_task(settings, "t")).outcome == "idle"  # nothing to settle, nothing recorded
    assert len(events(settings)) == 4
    rollback(settings, project="p", task="t")  # a promoted canary is one rollback away, like any promotion
    assert aliases(settings)["production"] == ("incumbent", 1.0)


def test_a_worse_canary_is_rolled_back_on_traffic_since_it_began(settings):
    # Before the canary, production collected plenty of thumbs down: counted, they would make the
    # canary look better. Only the traffic both sides served since the canary began may count.
    write(settings, [(f"old-{i}", "incumbent", False) for i in range(3000)], ts=datetime.now(UTC) - timedelta(days=1))
    pass_the_gate(settings)
    served = serve_users(settings, range(600), {"incumbent": 0.9, "cand": 0.5}, seed=2)
    result = settle(settings, resolve_task(settings, "t"))
    assert result.outcome == "rollback" and "significantly worse" in result.reason
    assert aliases(settings) == {"production": ("incumbent", 1.0)}
    last = events(settings)[-1]
    assert (last["alias"], last["action"], last["previous_model"]) == ("canary", "rollback", "cand")
    assert last["evidence"]["production"]["thumbs"] == served["incumbent"] and last["evidence"]["diff"] < 0


def test_too_little_feedback_waits_and_each_wait_is_recorded_then_the_deadline_decides(settings):
    pass_the_gate(settings)
    write(settings, [(f"c{i}", "cand", True) for i in range(29)] + [(f"p{i}", "incumbent", i % 2 == 0) for i in range(200)])
    first = settle(settings, resolve_task(settings, "t"))
    assert first.outcome == "wait" and "fewer than 30 thumbs" in first.reason
    assert aliases(settings)["canary"] == ("cand", 0.2)  # 29/29 up is no evidence yet
    wait = events(settings)[-1]
    assert (wait["action"], wait["model"]) == ("wait", "cand")
    assert wait["evidence"]["canary"] == {"model": "cand", "thumbs_up": 29, "thumbs": 29, "rate": 1.0}
    assert wait["evidence"]["production"]["thumbs"] == 200

    # A user who changes their mind counts once, as they last said.
    write(settings, [("c0", "cand", False)])
    with store.connect(settings.db_path) as con:
        assert canary_status(con, "p", "t")["canary"]["thumbs_up"] == 28

    late = datetime.now(UTC) + timedelta(days=8)
    assert settle(settings, resolve_task(settings, "t"), now=late).outcome == "rollback"  # never earned live evidence
    assert "canary" not in aliases(settings)
    assert [e["action"] for e in events(settings)] == ["promote", "promote", "wait", "rollback"]


def test_an_undecided_canary_waits_until_the_deadline_then_is_promoted(settings):
    pass_the_gate(settings)
    write(settings, [(f"c{i}", "cand", i % 10 < 8) for i in range(40)] + [(f"p{i}", "incumbent", i % 10 < 8) for i in range(40)])
    assert settle(settings, resolve_task(settings, "t")).outcome == "wait"  # 80% vs 80%: no significant difference yet
    result = settle(settings, resolve_task(settings, "t"), now=datetime.now(UTC) + timedelta(days=7.5))
    assert result.outcome == "promote" and "no significant difference after 7 days" in result.reason
    assert aliases(settings) == {"production": ("cand", 1.0)}


def test_the_test_statistics_match_known_values():
    # Newcombe (1998), Statistics in Medicine 17:873, table II example (a): 56/70 vs 48/80, method 10.
    r = two_proportions(56, 70, 48, 80, alpha=0.05)
    assert r["diff"] == pytest.approx(0.2) and (r["ci_low"], r["ci_high"]) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    # The pooled z-test: 45/50 vs 30/50 -> z = 0.3 / sqrt(0.75 * 0.25 * 0.04) = 3.464, p = 0.000532.
    r = two_proportions(45, 50, 30, 50)
    assert r["z"] == pytest.approx(3.4641, abs=1e-4) and r["p_value"] == pytest.approx(0.000532, abs=1e-6)
    assert two_proportions(30, 30, 40, 40)["p_value"] == 1.0  # all up on both sides: no difference
    assert two_proportions(0, 0, 3, 4)["p_value"] is None


def test_without_a_canary_share_or_a_production_model_promotion_is_direct(settings, tmp_path):
    decision = decide(GOOD)  # no canary_share: unchanged behaviour
    promote(settings, project="p", task="t", model="cand", path="/m", decision=decision, load=lambda n, p: None)
    assert aliases(settings) == {"production": ("cand", 1.0)}
    fresh = load_settings(tmp_path / "fresh")  # nothing in production: nothing to compare a canary with
    promote(fresh, project="p", task="t", model="cand", path="/m", decision=decide(GOOD, GateConfig(canary_share=0.1)),
            load=lambda n, p: None)  # fmt: skip
    assert aliases(fresh) == {"production": ("cand", 1.0)}


@pytest.mark.parametrize(("gate", "message"), [
    ("canary_share = 1.0", "gate.canary_share: expected a fraction in (0, 1)"),
    ("canary_min_feedback = 0", "gate.canary_min_feedback"),
    ("canary_alpha = 0.7", "gate.canary_alpha"),
    ("canary_max_days = -1", "gate.canary_max_days"),
])  # fmt: skip
def test_a_bad_canary_gate_fails_at_load(tmp_path, gate, message):
    (tmp_path / "flywheel.toml").write_text(f"[tasks.t.gate]\n{gate}\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(tmp_path)


def test_the_settle_flow_settles_every_task_and_reports(prefect_harness, settings):
    import asyncio

    from prefect.client.orchestration import get_client

    from pipelines.settle import settle_deployment, settle_flow

    pass_the_gate(settings)
    serve_users(settings, range(600), {"incumbent": 0.9, "cand": 0.5}, seed=3)
    assert settle_flow(data_dir=str(settings.home))["t"]["outcome"] == "rollback"
    assert settle_flow(task="t", data_dir=str(settings.home))["t"]["outcome"] == "idle"
    assert "canary" not in aliases(settings)

    async def artifacts():
        async with get_client() as client:
            return await client.read_latest_artifacts()

    report = [a for a in asyncio.run(artifacts()) if a.key == "settle-t"]
    assert report and "**rollback**" in report[0].data and "| canary | `cand` |" in report[0].data

    deployment = settle_deployment(settings, every_s=900)
    assert deployment.name == "settle" and deployment.entrypoint == "pipelines.settle.settle_flow"
    assert [s.schedule.interval for s in deployment.schedules] == [timedelta(seconds=900)]
    assert settle_deployment(load_settings(settings.home / "no-canaries")) is None
