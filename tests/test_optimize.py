"""`flywheel optimize` through a real `flywheel serve` process on a tiny local model: the search
refuses every option when the task's latency objective cannot be met, and otherwise applies its
pick as a deployment event that a restarted service keeps and `flywheel rollback` undoes.

The route decodes one request at a time (`max_batch = 1`) while the benchmark sends eight at once,
so the options that batch eight rows are plainly cheaper (one forward pass for eight rows); all options here are lossless (float32,
no speculation), so the pick must answer exactly as the adapter it was made from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import Server, auth, make_keys
from test_restart import deploy, register, text

from flywheel import store
from flywheel.registry.deployments import history, holder
from flywheel.settings import load_settings


def test_observed_concurrency_is_what_a_burst_of_requests_meets(tmp_path):
    """Bursts of 4 overlapping calls an hour apart: 4 in flight, however idle the hours between."""
    import msgspec

    from evals.optimizer import observed_concurrency
    from flywheel.ingest.interactions import write_interactions
    from flywheel.ingest.records import Limits, interaction_row

    settings = load_settings(tmp_path)
    with store.connect(settings.db_path):  # (created, empty)
        pass
    assert observed_concurrency(settings, "acme", "triage") == 1  # no traffic yet
    items = [{"id": f"{burst}-{i}", "task": "triage", "model": "m", "prompt": "q", "response": "a", "latency_ms": 2000,
              "ts": f"2026-12-01T{10 + burst:02d}:00:0{i}Z"} for burst in range(3) for i in range(4)]  # fmt: skip
    with store.connect(settings.db_path) as con:
        write_interactions(con, [interaction_row(msgspec.json.encode(i), project="acme", redact=False,
                                                 limits=Limits(1000, 10)) for i in items])  # fmt: skip
    assert observed_concurrency(settings, "acme", "triage") == 2  # each call meets the one before it (2 s long, 1 s apart)
    assert observed_concurrency(settings, "acme", "other") == 1


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("optimize")
    base, adapter = tiny_models["base"], tiny_models["ada-1"]
    golden = root / "golden.jsonl"
    golden.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"ticket {i}: my parcel is late"},
                                                       {"role": "assistant", "content": "shipping"}]}) + "\n"
                              for i in range(16)))  # fmt: skip
    spec = root / "bench.yaml"
    spec.write_text(f"name: triage-bench\nsource: {{golden: {golden}}}\nsampling: {{max_tokens: 8, temperature: 0}}\n"
                    "metrics: [{type: rouge_l}]\n")  # fmt: skip
    data = root / "data"
    data.mkdir()
    server = Server(data)
    key = make_keys(data, "acme", role="admin")["acme"]
    configure(data, server.port, base, spec, slo_ms=0.001)
    register(data, "sft-1", adapter=adapter)
    deploy(data, "triage", "sft-1")
    server.start()
    yield {"data": data, "server": server, "key": key, "base": base, "spec": spec}
    server.proc.kill()


def configure(data, port: int, base: str, spec, *, slo_ms: float, narrow: bool = False) -> None:
    """`narrow`: only the current option and the merged batching one (the pick on this route), for a
    test of what runs the search rather than of the search itself (half the options to measure)."""
    options = ('merge = [true]\nspeculative = ["off"]' if narrow else
               'merge = [false, true]\nspeculative = ["off", "table"]    # table: sft-1 has no training dataset to build a draft from')
    (data / "flywheel.toml").write_text(f"""
port = {port}
[serving]
adapter_dirs = ["{Path(base).parent}"]    # the test's adapter, beside its base (a promotion loads only its project's or these)
[gateway]
max_tokens = 16
alias_refresh_s = 0.2
[routes.tiny]
kind = "local"
path = "{base}"
max_batch = 1
[tasks.triage]
project = "acme"
route = "tiny"
benchmark = "{spec}"
latency_slo_ms = {slo_ms}
[optimize]
dtypes = ["float32"]
quantize = ["none"]
{options}
max_batch = [8]
concurrency = 8
first_rung = 8
""")


def optimize(data, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel.cli", "optimize", "--task", "triage", "--data-dir", str(data),
                           *args], check=False, capture_output=True, text=True, timeout=600)  # fmt: skip


def production(data) -> str:
    with store.connect(load_settings(data).db_path) as con:
        return holder(con, project="acme", task="triage")


def events(data) -> list[dict]:
    with store.connect(load_settings(data).db_path) as con:
        return history(con, project="acme", task="triage")


def test_a_cheaper_option_with_other_weights_needs_evidence_that_its_quality_holds():
    """The pick rule on measured figures: int8 (other weights) compared on fewer examples than the gate's
    min_examples is not picked for lack of evidence; the same weights merged need none."""
    from evals.optimizer import Measurement, Optimization, _choose
    from flywheel.optimize.options import ServingOption

    current, merged, int8 = ServingOption(), ServingOption(merge=True), ServingOption(quantize="int8", merge=True)
    result = Optimization("t", "p", "m", "m", "/m", current, "accuracy", 4, None)
    final = [Measurement(current, "m", 16, quality=0.9, compute_s_per_1k=300.0, p95_ms=100.0),
             Measurement(merged, "m@merged", 16, quality=0.9, verdict="insufficient evidence", compute_s_per_1k=250.0,
                         p95_ms=90.0),
             Measurement(int8, "m@int8", 16, quality=0.5, verdict="insufficient evidence", compute_s_per_1k=150.0,
                         p95_ms=60.0)]  # fmt: skip
    result.measured = final
    _choose(result, final)
    assert result.pick is final[1] and "too few examples" in final[2].outcome
    final[2].verdict = "not distinguishable"  # compared on enough examples, and not worse: now the cheapest wins
    _choose(result, final)
    assert result.pick is final[2]
    cut = ServingOption(merge=True, layers=6)  # other weights too: the cut needs the same evidence
    final.append(Measurement(cut, "m@cut", 16, quality=0.9, verdict="insufficient evidence", compute_s_per_1k=50.0,
                             p95_ms=20.0))  # fmt: skip
    _choose(result, final)
    assert result.pick is final[2] and "too few examples" in final[3].outcome


def test_a_saving_below_min_saving_leaves_production_where_it_is():
    """A pick must save `min_saving` of the compute per request (a smaller gain is noise), unless the
    option serving now misses the latency objective."""
    from evals.optimizer import Measurement, Optimization, _choose
    from flywheel.optimize.options import ServingOption

    current, merged = ServingOption(), ServingOption(merge=True)
    for merged_cost, slo, picked in ((290.0, None, None), (250.0, None, merged), (290.0, 95.0, merged)):
        result = Optimization("t", "p", "m", "m", "/m", current, "accuracy", 4, slo, min_saving=0.05)
        final = [Measurement(current, "m", 16, quality=0.9, compute_s_per_1k=300.0, p95_ms=100.0),
                 Measurement(merged, "m@merged", 16, quality=0.9, verdict="not distinguishable",
                             compute_s_per_1k=merged_cost, p95_ms=90.0)]  # fmt: skip
        result.measured = final
        _choose(result, final)
        assert (result.pick.option if result.pick else None) == picked, (merged_cost, slo, result.reason)
        if picked is None:
            assert "by 5% or more: nothing changes" in result.reason and final[0].outcome == "picked"


@pytest.mark.slow
def test_no_option_is_applied_when_none_meets_the_latency_objective(world):
    data = world["data"]
    done = optimize(data)
    assert done.returncode == 0, done.stderr
    assert "no option meets the latency objective (p95 <= 0.001 ms)" in done.stdout
    assert production(data) == "sft-1" and [e["action"] for e in events(data)] == ["promote"]
    # every option was measured and refused for its latency, none for failing
    rows = {line.split(" | ")[0][2:]: line for line in done.stdout.splitlines() if line.startswith("| fp32-")}
    assert len(rows) == 5, done.stdout
    # an option that cannot be loaded is recorded with the reason and skipped
    for name in ("fp32-adapter-table-b8", "fp32-merged-table-b8"):
        assert "failed: could not load: speculative: table: 'sft-1' has no training dataset" in rows[name]
    assert all("over the objective" in row or "pruned" in row for row in rows.values() if "failed" not in row), done.stdout
    # the variants loaded for the search were unloaded again: only the route and the adapter remain
    listed = httpx.get(f"{world['server'].url}/v1/models", headers=auth(world["key"])).json()["data"]
    assert not [m["id"] for m in listed if "@" in m["id"]]


@pytest.mark.slow
def test_without_the_service_the_command_fails_and_nothing_changes(world):
    from conftest import free_port

    data = world["data"]
    configure(data, free_port(), world["base"], world["spec"], slo_ms=60_000)  # a port nothing listens on
    done = optimize(data)
    assert done.returncode == 1 and "failed on the benchmark" in done.stderr, done.stdout + done.stderr
    assert production(data) == "sft-1" and [e["action"] for e in events(data)] == ["promote"]


@pytest.mark.slow
def test_the_pick_serves_after_a_restart_and_rolls_back(world):
    data, server, key = world["data"], world["server"], world["key"]
    configure(data, server.port, world["base"], world["spec"], slo_ms=60_000)
    before = text(server, key, "triage")
    done = optimize(data)
    assert done.returncode == 0, done.stderr
    picked = production(data)
    assert picked.startswith("sft-1@fp32-") and picked.endswith("-b8"), done.stdout  # a batching option won
    assert f"triage → {picked}" in done.stdout
    last = events(data)[-1]
    evidence = json.loads(last["evidence"]) if isinstance(last["evidence"], str) else last["evidence"]
    assert last["action"] == "optimize" and last["model"] == picked and last["previous_model"] == "sft-1"
    assert evidence["compute_s_per_1k"] < evidence["current_compute_s_per_1k"]
    assert evidence["quality_verdict"] != "worse" and evidence["p95_ms"] <= 60_000
    assert text(server, key, "triage") == before  # lossless: the same greedy answer, served by the variant

    server.kill()  # the pick is in the database, not only in the process that loaded it
    server.start()
    assert production(data) == picked
    assert text(server, key, "triage") == before
    assert picked in [m["id"] for m in httpx.get(f"{server.url}/v1/models", headers=auth(key)).json()["data"]]

    done = subprocess.run([sys.executable, "-m", "flywheel.cli", "rollback", "--task", "triage", "--data-dir", str(data)],
                          check=False, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert production(data) == "sft-1" and events(data)[-1]["action"] == "rollback"
    assert text(server, key, "triage") == before


@pytest.mark.slow
def test_the_flow_stage_applies_the_pick_and_publishes_the_search(world, prefect_harness):
    """The `optimize` task of the turn flow (run after a promotion to production): the same search,
    applied, with the report as Prefect artifacts (markdown and table)."""
    import asyncio

    from prefect.client.orchestration import get_client

    from flywheel.task import resolve_task
    from pipelines.turn import optimize_task

    data = world["data"]
    assert production(data) == "sft-1"  # (rolled back by the test before)
    configure(data, world["server"].port, world["base"], world["spec"], slo_ms=60_000, narrow=True)
    settings = load_settings(data)
    result = optimize_task(settings, resolve_task(settings, "triage"), world["key"])
    assert result["applied"] and production(data) == f"sft-1@{result['applied']}"

    async def artifacts():
        async with get_client() as client:
            return {a.key: a for a in await client.read_latest_artifacts()}

    published = asyncio.run(artifacts())
    assert f"**apply {result['applied']}**" in published["optimize-triage"].data
    table = json.loads(published["optimize-triage-table"].data)
    assert {row["option"] for row in table} >= {"fp32-adapter-off", result["applied"]}
    # a search that fails after a promotion is reported, and does not fail the turn that promoted
    failed = optimize_task(settings, resolve_task(settings, "unconfigured"), world["key"])
    assert failed["applied"] is None and "has no benchmark" in failed["reason"]
    assert "the search failed" in asyncio.run(artifacts())["optimize-unconfigured"].data
