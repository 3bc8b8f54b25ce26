"""The runner end to end: stored runs and results, report with PNGs, resume, contamination refusal,
a real OpenAI-compatible HTTP endpoint (and one that fails), a tiny local model, the flow task."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from evals import ContaminationError, EndpointSampler, FunctionSampler, LocalSampler, SamplerResponse, evaluate
from evals.spec import BenchmarkSpec
from flywheel import store
from flywheel.settings import load_settings
from flywheel.demo.tiny import TICKET_LABELS, build_tiny_model, ticket_examples, ticket_texts
from conftest import free_port

LABELS = sorted(TICKET_LABELS)


def rule(messages) -> str:
    """A perfect classifier for the ticket task: the label whose phrases the ticket contains."""
    text = messages[-1]["content"]
    return next(label for label, phrases in TICKET_LABELS.items() if any(p in text for p in phrases))


def sloppy(messages) -> str:
    """Wrong on every ticket mentioning a card, a parcel or a password: a worse incumbent."""
    text = messages[-1]["content"]
    return "technical" if any(w in text for w in ("card", "parcel", "password")) else rule(messages)


@pytest.fixture()
def env(tmp_path):
    import datasets

    rows = ticket_examples(160, seed=3)
    # Distinct prompts only, so that train and eval cannot share one by chance.
    uniq = list({r["messages"][0]["content"]: r for r in rows}.values())
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_list(uniq[:10]), "eval": datasets.Dataset.from_list(uniq[10:70])})
    ds.save_to_disk(str(tmp_path / "ds" / "sft"))
    spec = {"name": "triage", "source": {"dataset": str(tmp_path / "ds")}, "sampling": {"max_tokens": 8},
            "metrics": [{"type": "accuracy", "labels": LABELS}, {"type": "macro_f1", "labels": LABELS},
                        {"type": "exact_match"},
                        {"type": "judge_pairwise", "name": "judge", "prompt": "Q: {question}\nA: {answer_a}\nB: {answer_b}"}]}  # fmt: skip
    return load_settings(tmp_path / "home"), BenchmarkSpec.from_dict(spec), tmp_path


def rows(settings, sql, *params):
    with store.connect(settings.db_path) as con:
        return con.execute(sql, list(params)).fetchall()


def test_evaluate_stores_runs_and_writes_report(env):
    settings, spec, tmp = env
    # Equal, fixed latencies: the two functions' microseconds would make the latency verdict a coin
    # toss on a loaded machine (and `passed` needs no dimension worse).
    cand = FunctionSampler(lambda m: SamplerResponse(text=rule(m), latency_ms=5.0, cost_usd=0.0001), model="student")
    inc = FunctionSampler(lambda m: SamplerResponse(text=sloppy(m), latency_ms=5.0, cost_usd=0.002), model="big-llm")
    first = FunctionSampler(lambda m: "[[A]]", model="biased-judge")
    rep = evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=cand, baseline_sampler=inc, judge_sampler=first)
    assert rep.passed and rep.candidate.status == "done" and rep.candidate.metrics["accuracy"] == 1.0
    assert rep.incumbent.metrics["accuracy"] < 0.9 and rep.verdicts.dimensions["quality"] == "better"
    assert rep.verdicts.dimensions["cost"] == "better"
    assert rep.candidate.metrics["judge"] == 0.5  # the position-biased judge only produces ties
    assert rows(settings, "SELECT count(*) FROM eval_results")[0][0] == 120
    assert {s for (s,) in rows(settings, "SELECT status FROM eval_runs")} == {"done"}
    md = rep.markdown_path.read_text()
    assert "| quality | **better** |" in md and "worst regressions first" in md and "PASS" in md
    assert "<table>" in rep.html_path.read_text()
    assert [p.name for p in rep.charts] == ["quality-vs-cost.png", "quality-vs-latency.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in rep.charts)


def test_resume_asks_only_the_missing_examples(env):
    settings, spec, _ = env
    spec.metrics = spec.metrics[:3]  # no judge
    calls, broken = [], [True]

    def flaky(messages):
        calls.append(1)
        if broken[0] and "card" in messages[-1]["content"]:
            raise ConnectionError("upstream hiccup")
        return rule(messages)

    s = FunctionSampler(flaky, model="student")
    rep = evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=s)
    assert rep.candidate.status == "failed" and "upstream hiccup" in rep.candidate.error and not rep.passed
    n_failed = sum(r.error is not None for r in rep.candidate.results)
    assert 0 < n_failed < 60
    broken[0], calls[:] = False, []
    again = evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=s)
    assert again.candidate.id == rep.candidate.id and len(calls) == n_failed
    assert again.candidate.status == "done" and again.passed and again.candidate.metrics["accuracy"] == 1.0
    calls[:] = []
    assert evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=s).candidate.id == rep.candidate.id
    assert calls == []  # a finished run is reused


def test_contamination_is_refused(env):
    settings, spec, tmp = env
    import datasets

    leaked = datasets.load_from_disk(str(tmp / "ds" / "sft"))["eval"].select(range(3)).to_list()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(leaked)}).save_to_disk(str(tmp / "train"))
    with pytest.raises(ContaminationError, match=r"3 of 60 benchmark example\(s\)") as err:
        evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=FunctionSampler(rule), train_dataset=tmp / "train")
    assert len(err.value.example_ids) == 3
    # Found through the lineage of a registered model too; nothing was run either time.
    with store.connect(settings.db_path) as con:
        con.execute("INSERT INTO datasets (id, project, task, path, config, query, counts) VALUES ('ds-1', 'acme', 'triage', ?, '{}', '', '{}')", [str(tmp / "train")])
        con.execute("INSERT INTO models (id, project, task, base_model, method, dataset_id, recipe, recipe_hash, status)"
                    " VALUES ('m-1', 'acme', 'triage', 'tiny', 'sft', 'ds-1', '{}', 'h', 'ready')")  # fmt: skip
    with pytest.raises(ContaminationError):
        evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=FunctionSampler(rule, model="m-1"))
    assert rows(settings, "SELECT count(*) FROM eval_runs")[0][0] == 0
    # A version whose SFT side is clean but whose preference pairs (DPO) use benchmark prompts.
    shutil.copytree(tmp / "ds" / "sft", tmp / "version" / "sft")
    pairs = [{"prompt": r["messages"][:-1], "chosen": r["messages"][-1:], "rejected": [{"role": "assistant", "content": "no"}]}
             for r in leaked[:2]]  # fmt: skip
    datasets.DatasetDict({"train": datasets.Dataset.from_list(pairs)}).save_to_disk(str(tmp / "version" / "preference"))
    with pytest.raises(ContaminationError, match=r"2 of 60 benchmark example\(s\)"):
        evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=FunctionSampler(rule), train_dataset=tmp / "version")


@pytest.fixture(scope="module")
def endpoint():
    """A real OpenAI-compatible server on 127.0.0.1 (uvicorn in a thread): /ok answers with the
    rule, /down always answers 500 and counts the hits."""
    app, hits = FastAPI(), {"down": 0}

    @app.post("/ok/v1/chat/completions")
    async def ok(request: Request):
        body = await request.json()
        text = rule(body["messages"])
        return {"id": "c1", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}}  # fmt: skip

    @app.post("/down/v1/chat/completions")
    async def down():
        hits["down"] += 1
        return JSONResponse({"error": "overloaded"}, status_code=500)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", hits
    server.should_exit = True
    thread.join(5)


def test_endpoint_sampler_and_failing_endpoint(env, endpoint):
    settings, spec, _ = env
    spec.metrics = spec.metrics[:3]
    url, hits = endpoint
    prices = {"big-llm": {"prompt": 2.5, "completion": 10.0}}
    good = EndpointSampler(f"{url}/ok/v1", "big-llm", concurrency=4, prices=prices)
    rep = evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=good)
    assert rep.passed and rep.candidate.metrics["accuracy"] == 1.0
    # 40 prompt tokens at $2.5/M + 2 completion tokens at $10/M, times 1,000 requests.
    assert rep.candidate.cost["per_1k_requests_usd"] == pytest.approx(1000 * (40 * 2.5 + 2 * 10) / 1e6)
    assert rep.candidate.latency["p95_ms"] >= rep.candidate.latency["p50_ms"] > 0

    bad = EndpointSampler(f"{url}/down/v1", "big-llm", concurrency=4, max_retries=2, backoff_s=0.01)
    rep = evaluate(settings, project="acme", task="triage", benchmark=spec, sampler=bad, baseline_sampler=good,
                   chunk_size=20)  # fmt: skip
    run = rep.candidate
    assert run.status == "failed" and "3 attempt(s) failed" in run.error and "HTTP 500" in run.error
    assert hits["down"] == 20 * 3  # bounded: 3 attempts per request, and the run stopped after one dead chunk
    assert not rep.passed and not rep.verdicts.passed and "failed" in rep.verdicts.reason
    assert "NO PASS" in rep.markdown and "never passes" in rep.markdown
    assert rows(settings, "SELECT status, error IS NOT NULL FROM eval_runs WHERE id = ?", run.id) == [("failed", True)]


def test_local_sampler_batches_like_single(tmp_path):
    path = build_tiny_model(tmp_path / "tiny", ticket_texts(200), hidden=32, layers=1, heads=2)
    s = LocalSampler(path, max_tokens=6, batch_size=4, usd_per_hour=3.6)
    prompts = [r["messages"][:1] for r in ticket_examples(6, seed=1)]
    batched = s.batch(prompts)
    single = [s(p) for p in prompts]
    assert [b.text for b in batched] == [x.text for x in single]
    assert all(0 < b.completion_tokens <= 6 and b.cost_usd > 0 and b.prompt_tokens > 0 for b in batched)


def test_flow_task_runs_evaluation(env, endpoint, tmp_path):
    from pipelines.evaluate import run_eval

    settings, _, tmp = env
    spec_path = tmp / "spec.yaml"
    spec_path.write_text(json.dumps({"name": "triage", "source": {"dataset": str(tmp / "ds")},
                                     "metrics": [{"type": "accuracy", "labels": LABELS}]}))  # fmt: skip
    out = run_eval.fn(str(settings.home), "acme", "triage", str(spec_path),
                      {"kind": "endpoint", "base_url": f"{endpoint[0]}/ok/v1", "model": "big-llm"}, None, None)  # fmt: skip
    assert out["passed"] and out["candidate_status"] == "done" and "Eval: big-llm" in out["markdown"]
