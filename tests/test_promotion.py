"""The gate (its non-inferiority test and sample floor on planted evidence), atomic promotion and
rollback, on a real DuckDB file (the canary: test_canary.py; the gate on planted per-example scores
through the bootstrap: test_evals_stats.py)."""

from __future__ import annotations

import http.server
import threading

import msgspec
import pytest

from flywheel import store
from flywheel.registry.deployments import assign, deployments, history
from flywheel.registry.promotion import Evidence, GateConfig, PromotionError, decide, http_loader, promote, rollback
from flywheel.settings import load_settings

GOOD = Evidence("ready", True, {"quality": "better", "latency": "better", "cost": "better"},
                latency_p95_ms=40, cost_per_1k_usd=0.02, incumbent_cost_per_1k_usd=2.1, quality_ci=(0.05, 0.12),
                quality_metric="accuracy", n_paired=200, test="paired bootstrap, 95% CI")  # fmt: skip
# Same quality within the margin (a tight CI around 0) at 1% of the incumbent's cost.
CHEAP_EQUAL = Evidence(**{**GOOD.__dict__, "verdicts": {"quality": "not distinguishable", "cost": "better"},
                          "quality_ci": (-0.008, 0.012), "n_paired": 4000})  # fmt: skip


def production(settings, task="t"):
    with store.connect(settings.db_path) as con:
        return {d.alias: d.model for d in deployments(con, "p") if d.task == task}.get("production")


@pytest.fixture
def settings(tmp_path):
    s = load_settings(tmp_path)
    with store.connect(s.db_path) as con:
        assign(con, project="p", task="t", alias="production", model="incumbent", reason="start")
    return s


@pytest.mark.parametrize(("change", "reason"), [
    ({"candidate_status": "failed"}, "training did not succeed"),
    ({"verdicts": {"quality": "worse"}}, "quality verdict is 'worse'"),
    ({"verdicts": {"quality": "not distinguishable"}, "cost_per_1k_usd": 1.9}, "quality verdict is 'not distinguishable'"),
    ({"eval_complete": False}, "missing, failed or partial"),
    ({"contamination": "12 examples"}, "overlaps the training data"),
    ({"latency_p95_ms": 900}, "over the bound of 500"),
])  # fmt: skip
def test_the_gate_refuses_with_a_reason(change, reason):
    evidence = Evidence(**{**GOOD.__dict__, **change})
    decision = decide(evidence, GateConfig(max_latency_p95_ms=500))
    assert not decision.promote and any(reason in r for r in decision.reasons)
    assert decide(GOOD).promote and decide(CHEAP_EQUAL).promote


def test_a_wide_ci_centred_below_zero_is_refused_even_when_far_cheaper():
    # The demo's case: 0.750 vs 0.810, CI of the difference [-0.150, +0.030], at 0.01x the cost.
    worse_maybe = Evidence(**{**CHEAP_EQUAL.__dict__, "quality_ci": (-0.150, 0.030), "n_paired": 200})
    for gate in (GateConfig(), GateConfig(quality="not distinguishable"), GateConfig(equal_quality_max_cost_ratio=1.0)):
        decision = decide(worse_maybe, gate)
        assert not decision.promote
        assert decision.reasons == [("insufficient evidence of non-inferiority: CI [-0.150, +0.030] reaches below -0.01, "
                                     "n=200 (accuracy, paired bootstrap, 95% CI, non-inferiority margin 0.01)")]  # fmt: skip
    # The margin is the setting: a CI within a wider margin passes at that cost.
    assert decide(worse_maybe, GateConfig(quality_margin=0.2)).promote


def test_a_tight_ci_within_the_margin_at_a_lower_cost_passes_and_states_the_test():
    decision = decide(CHEAP_EQUAL)
    assert decision.promote and decision.reasons == [
        ("quality non-inferior at 0.01x the incumbent's cost: Δq CI [-0.008, +0.012] ≥ -0.01, n=4000 "
         "(accuracy, paired bootstrap, 95% CI, non-inferiority margin 0.01)")]  # fmt: skip
    assert decision.evidence["quality_ci"] == (-0.008, 0.012) and decision.evidence["n_paired"] == 4000
    assert decision.evidence["gate"]["quality_margin"] == 0.01 and decision.evidence["gate"]["min_examples"] == 30
    # The same CI against a stricter margin, or at a cost that saves too little, is refused.
    assert not decide(CHEAP_EQUAL, GateConfig(quality_margin=0.005)).promote
    dear = decide(Evidence(**{**CHEAP_EQUAL.__dict__, "cost_per_1k_usd": 1.9}))
    assert not dear.promote and dear.reasons[0].startswith("quality verdict is 'not distinguishable' at 0.90x")


def test_a_verdict_needs_min_examples_even_when_better():
    unanimous = Evidence(**{**GOOD.__dict__, "quality_ci": (1.0, 1.0), "n_paired": 3})  # 3 of 3 right vs 0 of 3
    decision = decide(unanimous)
    assert not decision.promote and decision.reasons[0].startswith(
        "insufficient evidence: 3 paired benchmark examples, fewer than min_examples 30: Δq CI [+1.000, +1.000]")
    assert decide(unanimous, GateConfig(min_examples=3)).promote  # the floor is the setting
    assert not decide(Evidence(**{**GOOD.__dict__, "n_paired": 29})).promote
    assert decide(Evidence(**{**GOOD.__dict__, "n_paired": 30})).promote
    unknown = decide(Evidence(**{**GOOD.__dict__, "n_paired": None}))
    assert not unknown.promote and "number of paired benchmark examples is unknown" in unknown.reasons[0]
    no_ci = decide(Evidence(**{**GOOD.__dict__, "quality_ci": None}))
    assert not no_ci.promote and "no CI of the quality difference" in no_ci.reasons[0]


def test_a_significant_better_with_enough_examples_passes_and_states_the_test():
    decision = decide(GOOD)
    assert decision.promote and decision.reasons == [
        ("quality better than the incumbent (significant): Δq CI [+0.050, +0.120] ≥ -0.01, n=200 "
         "(accuracy, paired bootstrap, 95% CI, non-inferiority margin 0.01)")]  # fmt: skip
    assert decision.summary().startswith("promote: quality better")


def test_a_refused_or_failed_candidate_is_never_promoted(settings):
    loaded = []
    worse = decide(Evidence(**{**GOOD.__dict__, "verdicts": {"quality": "worse"}}))
    failed = decide(Evidence(**{**GOOD.__dict__, "candidate_status": "failed"}))
    for decision in (worse, failed):
        assert promote(settings, project="p", task="t", model="cand", path="/x", decision=decision,
                       load=lambda n, p: loaded.append(n)) is None  # fmt: skip
    assert loaded == [] and production(settings) == "incumbent"
    with store.connect(settings.db_path) as con:
        refusals = [e for e in history(con, project="p", task="t") if e["action"] == "refuse"]
    assert len(refusals) == 2 and "quality verdict is 'worse'" in refusals[0]["reason"]
    assert msgspec.json.decode(refusals[1]["evidence"])["candidate_status"] == "failed"


def test_promotion_is_atomic_when_loading_fails(settings):
    def broken(name, path):
        raise OSError("no such adapter folder")

    with pytest.raises(PromotionError, match="no such adapter folder"):
        promote(settings, project="p", task="t", model="cand", path="/x", decision=decide(GOOD), load=broken)
    assert production(settings) == "incumbent"


def test_promote_then_roll_back(settings):
    loaded = []
    promote(settings, project="p", task="t", model="cand-1", path="/m1", decision=decide(GOOD),
            load=lambda n, p: loaded.append((n, p)))  # fmt: skip
    assert loaded == [("cand-1", "/m1")] and production(settings) == "cand-1"
    rollback(settings, project="p", task="t")
    assert production(settings) == "incumbent"
    with store.connect(settings.db_path) as con:
        actions = [(e["action"], e["model"]) for e in history(con, project="p", task="t")]
    assert actions == [("promote", "incumbent"), ("promote", "cand-1"), ("rollback", "incumbent")]
    with pytest.raises(PromotionError, match="no previous production"):
        rollback(load_settings(settings.home / "other"), project="p", task="t")


def test_a_free_local_candidate_passes_a_cost_bound_and_a_gate_typo_is_an_error(tmp_path):
    free = Evidence(**{**GOOD.__dict__, "cost_per_1k_usd": 0.0})
    assert decide(free, GateConfig(max_cost_per_1k_usd=1.0)).promote
    unmeasured = Evidence(**{**GOOD.__dict__, "cost_per_1k_usd": None})
    assert not decide(unmeasured, GateConfig(max_cost_per_1k_usd=1.0)).promote
    with pytest.raises(ValueError, match="gate.quality: expected one of 'better', 'not distinguishable', got 'beter'"):
        GateConfig(quality="beter")
    (tmp_path / "flywheel.toml").write_text('[tasks.t.gate]\nquality = "worse"\n')
    with pytest.raises(ValueError, match="gate.quality"):
        load_settings(tmp_path)


@pytest.mark.parametrize(("table", "message"), [
    ("quality_margin = -0.01", r"gate.quality_margin: expected a number in \[0, 1\) on the 0-1 quality metrics, got -0.01"),
    ("quality_margin = 1.0", r"gate.quality_margin: expected a number in \[0, 1\).*got 1.0"),
    ('quality_margin = "0.01"', r"gate.quality_margin: .*got '0.01'"),
    ("min_examples = 0", "gate.min_examples: expected a whole number of examples, at least 1, got 0"),
    ("min_examples = 2.5", "gate.min_examples: .*got 2.5"),
    ("min_examples = true", "gate.min_examples: .*got True"),
])  # fmt: skip
def test_the_test_settings_are_checked_at_load(tmp_path, table, message):
    (tmp_path / "flywheel.toml").write_text(f"[tasks.t.gate]\n{table}\n")
    with pytest.raises(ValueError, match=message):
        load_settings(tmp_path)
    (tmp_path / "flywheel.toml").write_text("[tasks.t.gate]\nquality_margin = 0.0\nmin_examples = 1\n")
    assert load_settings(tmp_path).tasks["t"].gate == {"quality_margin": 0.0, "min_examples": 1}


def test_rollback_skips_a_reload_of_the_same_model(settings):
    for model in ("cand-1", "cand-2", "cand-2"):  # the second cand-2: reloaded after a restart
        promote(settings, project="p", task="t", model=model, path="/m", decision=decide(GOOD), load=lambda n, p: None)
    rollback(settings, project="p", task="t")
    assert production(settings) == "cand-1"


@pytest.mark.parametrize(("answer", "loaded"), [
    ("lora_name: adapter 'cand' is already loaded", True),
    ("The lora adapter 'cand' has already been loaded.", True),  # vLLM's words
    ("lora_path: cannot load '/models/already-shipped/cand': not a folder on the serving machine", False),
])  # fmt: skip
def test_http_loader_takes_only_an_already_loaded_answer_as_loaded(answer, loaded):
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(400)
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        load = http_loader(f"http://127.0.0.1:{server.server_port}", "key")
        if loaded:
            load("cand", "/models/cand")
        else:
            with pytest.raises(PromotionError, match="refused to load 'cand'"):
                load("cand", "/models/already-shipped/cand")
    finally:
        server.shutdown()
