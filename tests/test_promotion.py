"""The gate, atomic promotion and rollback, on a real DuckDB file (the canary: test_canary.py)."""

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
                latency_p95_ms=40, cost_per_1k_usd=0.02, incumbent_cost_per_1k_usd=2.1)  # fmt: skip


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
    assert decide(GOOD).promote
    cheap_equal = Evidence(**{**GOOD.__dict__, "verdicts": {"quality": "not distinguishable"}})
    assert decide(cheap_equal).promote  # same quality at 1% of the cost


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
