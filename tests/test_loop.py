"""The whole loop end to end on a small simulated workload: the demo's own code path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flywheel import store
from flywheel.demo.world import TASK
from flywheel.registry.deployments import deployments, history
from flywheel.settings import load_settings
from pipelines.demo import PROJECT, run_demo

pytestmark = pytest.mark.slow


def test_one_turn_of_the_loop(tmp_path, monkeypatch):
    home = tmp_path / "demo"
    # The flow optimizes after a promotion to production: here over two options besides the adapter (merged,
    # and merged with a draft table trained on the candidate's dataset)
    for name, value in (("AFTER_PROMOTION", "true"), ("DTYPES", '["float32"]'), ("QUANTIZE", '["none"]'),
                        ("MERGE", "[true]"), ("SPECULATIVE", '["off", "table"]'), ("LAYERS", "[]")):  # fmt: skip
        monkeypatch.setenv(f"FLYWHEEL_OPTIMIZE__{name}", value)
    rows = run_demo(home, turns=1, per_turn=300, student="tiny")  # seconds per turn; the SmolLM2 default takes minutes
    assert len(rows) == 1 and rows[0]["served_by"] == "simulated-gpt-large"
    settings = load_settings(home)
    with store.connect(settings.db_path, read_only=True) as con:
        recorded = con.execute("SELECT count(*) FROM interactions WHERE source = 'gateway'").fetchone()[0]
        models = con.execute("SELECT id, status FROM models WHERE method <> 'serving-option'").fetchall()
        runs = con.execute("SELECT model, status FROM eval_runs ORDER BY started_at").fetchall()
        events = history(con, project=PROJECT, task=TASK)
        serving = {d.alias: d.model for d in deployments(con, PROJECT)}
        keys = con.execute("SELECT count(*), count(revoked_at) FROM api_keys").fetchone()
    assert recorded >= 300 + 150  # the turn's traffic and the final traffic went through the gateway
    assert len(models) == 1 and models[0][1] == "ready"
    # the turn's benchmark runs come first; after a promotion, the optimizer's runs of its options follow
    assert sorted(runs[:2]) == sorted([(models[0][0], "done"), ("incumbent", "done")])
    decision, optimized = events[-1], []
    if decision["action"] == "optimize":  # the flow's last stage moved production to a serving variant
        decision, optimized = events[-2], [decision]
    assert decision["model"] == models[0][0] and decision["action"] in ("promote", "refuse")
    promoted = decision["action"] == "promote"
    assert serving["production"] == (optimized[0]["model"] if optimized else models[0][0] if promoted else "incumbent")
    # a promotion to production is followed by the search (its report written, applied or not); a refusal is not
    assert len(list((home / "reports" / "optimize" / TASK).glob("*/report.md"))) == (1 if promoted else 0)
    assert not optimized or optimized[0]["model"].startswith(models[0][0] + "@fp32-merged-")
    assert (home / "reports" / "demo.html").exists()
    assert keys[0] >= 2 and keys[0] == keys[1]  # the app's key and the turn's service key, revoked after use
    status = subprocess.run([sys.executable, "-m", "flywheel.cli", "status", "--data-dir", str(home)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert status.returncode == 0 and TASK in status.stdout and "production=" in status.stdout
