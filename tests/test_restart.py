"""Serving state survives a restart, and an adapter serves only on its own base: real `flywheel
serve` processes on a tiny local model, killed with SIGKILL and started again on the same data
folder; promotions through the CLI and through the registry's `http_loader`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import openai
import pytest
from conftest import Server, auth, make_keys
from tiny_models import make_adapter

from flywheel import store
from flywheel.registry.deployments import assign
from flywheel.registry.promotion import Decision, http_loader, promote, rollback
from flywheel.settings import load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The shared base and its adapters, a second base of the same shape (other weights), a narrower
    one, and an adapter of each."""
    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    root = tmp_path_factory.mktemp("models")
    texts = ticket_texts(200)
    found = {**tiny_models, "other": str(build_tiny_model(root / "other", texts, max_length=96, seed=1)),
             "narrow": str(build_tiny_model(root / "narrow", texts, hidden=32, max_length=96))}  # fmt: skip
    for name, base, seed in (("ada-other", "other", 3), ("ada-narrow", "narrow", 4)):
        found[name] = make_adapter(found[base], root / name, seed)
    return found


def config(data_dir, port: int, models: dict[str, str]) -> None:
    """The test's models, and the data folder's `adapters/`, are where adapters may be loaded from."""
    folders = [*sorted({os.path.dirname(path) for path in models.values()}), data_dir / "adapters"]
    (data_dir / "flywheel.toml").write_text(f"""
port = {port}
[serving]
adapter_dirs = {json.dumps([str(f) for f in folders])}
[gateway]
max_tokens = 8
alias_refresh_s = 0.2
[routes.tiny]
kind = "local"
path = "{models['base']}"
[tasks.triage]
project = "acme"
route = "tiny"
""")


def boot(data_dir, models: dict[str, str]) -> Server:
    """`flywheel serve` on the data folder (the config names its port, so the CLI finds it)."""
    server = Server(data_dir)
    config(data_dir, server.port, models)
    return server.start()


def register(data_dir, model_id: str, *, adapter: str | None = None, merged: str | None = None,
             task: str = "triage", project: str = "acme") -> None:
    """A ready candidate in the `models` table, as training leaves it."""
    with store.connect(load_settings(data_dir).db_path) as con:
        con.execute("INSERT INTO models (id, project, task, base_model, method, adapter_path, merged_path, recipe,"
                    " recipe_hash, status) VALUES (?, ?, ?, 'tiny', 'sft', ?, ?, '{}', 'test', 'ready')",
                    [model_id, project, task, adapter, merged])  # fmt: skip


def deploy(data_dir, task: str, model: str, alias: str = "production", project: str = "acme") -> None:
    with store.connect(load_settings(data_dir).db_path) as con:
        assign(con, project=project, task=task, alias=alias, model=model, share=1.0, reason="test")


def ask(server: Server, key: str, model: str, **kw):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "my parcel is late"}],
                                          temperature=0, max_tokens=8, **kw)  # fmt: skip


def text(server: Server, key: str, model: str) -> str:
    return ask(server, key, model).choices[0].message.content


def refusal(server: Server, key: str, model: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        ask(server, key, model)
    return info.value


def test_promoted_adapters_survive_kill_9_and_rollback_reloads_the_previous_one(tmp_path, models):
    keys = make_keys(tmp_path, "acme", role="admin") | make_keys(tmp_path, "globex")
    register(tmp_path, "cand-1", adapter=models["ada-1"])
    register(tmp_path, "cand-2", adapter=models["ada-2"])
    server = boot(tmp_path, models)
    try:  # the CLI loads the candidate into the running service, then moves the alias
        done = subprocess.run([sys.executable, "-m", "flywheel.cli", "promote", "--task", "triage", "--model", "cand-1",
                               "--data-dir", str(tmp_path)], check=False, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        first, base = text(server, keys["acme"], "triage"), text(server, keys["acme"], "tiny")
        assert first != base  # the adapter changes the answer: the alias really serves it
        settings = load_settings(tmp_path)
        promote(settings, project="acme", task="triage", model="cand-2", path=models["ada-2"],
                decision=Decision(True, ["test"], {}), load=http_loader(server.url, keys["acme"], "tiny"))  # fmt: skip
        second = text(server, keys["acme"], "triage")
        assert second not in (first, base)
    finally:
        server.kill()

    server = boot(tmp_path, models)  # same data folder, after SIGKILL
    try:
        answer = ask(server, keys["acme"], "triage")
        assert (answer.model, answer.choices[0].message.content) == ("cand-2", second)
        assert httpx.get(f"{server.url}/healthz").json()["unavailable"] == []
        assert refusal(server, keys["acme"], "cand-1").status_code == 404  # only what an alias points at is loaded
        assert refusal(server, keys["globex"], "cand-2").status_code == 404  # and it is acme's alone
        rollback(settings, project="acme", task="triage", load=http_loader(server.url, keys["acme"], "tiny"))
        answer, deadline = ask(server, keys["acme"], "triage"), time.monotonic() + 10
        while answer.model != "cand-1" and time.monotonic() < deadline:  # the service re-reads aliases every 0.2 s
            time.sleep(0.05)
            answer = ask(server, keys["acme"], "triage")
        assert (answer.model, answer.choices[0].message.content) == ("cand-1", first)
    finally:
        server.kill()


@pytest.fixture(scope="module")
def broken(models, tmp_path_factory):
    """A service started on a data folder where some deployed models cannot be loaded: one whose
    folder was deleted after its promotion (`broken.gone`), one of another base. The two loading
    tests share it (one start less); `broken.keys`: an admin key of `acme`."""
    data = tmp_path_factory.mktemp("broken")
    keys = make_keys(data, "acme", role="admin")
    gone = shutil.copytree(models["ada-1"], data / "adapters" / "ada-1")
    register(data, "cand-gone", adapter=str(gone))
    register(data, "cand-ok", adapter=models["ada-2"], task="billing")
    register(data, "cand-wrong-base", adapter=models["ada-other"], task="billing")
    register(data, "cand-whole", merged=models["base"], task="whole")  # a fully fine-tuned student
    deploy(data, "triage", "cand-gone")
    deploy(data, "billing", "cand-ok")
    deploy(data, "billing", "cand-wrong-base", alias="canary")
    deploy(data, "whole", "cand-whole")
    shutil.rmtree(gone)  # promoted, then its folder was deleted before the service started
    server = boot(data, models)
    server.keys, server.gone = keys, gone
    yield server
    server.kill()


def test_a_model_that_cannot_be_loaded_at_start_answers_503_with_the_reason(broken, models):
    server, keys, gone = broken, broken.keys, broken.gone
    error = refusal(server, keys["acme"], "triage")
    assert error.status_code == 503 and error.body["code"] == "model_unavailable"
    assert "cand-gone" in error.message and str(gone) in error.message and "does not exist" in error.message
    error = refusal(server, keys["acme"], "billing:canary")
    assert error.status_code == 503
    assert models["other"] in error.message and models["base"] in error.message  # both bases named
    assert ask(server, keys["acme"], "billing", user="u-1").model == "cand-ok"  # its users stay on production
    assert text(server, keys["acme"], "billing") == text(server, keys["acme"], "cand-ok") != text(server, keys["acme"], "tiny")
    assert text(server, keys["acme"], "whole") == text(server, keys["acme"], "tiny")  # same weights, loaded whole
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok"
    assert [(u["model"], u["aliases"]) for u in health["unavailable"]] == [("cand-gone", ["acme/triage"]),
                                                                         ("cand-wrong-base", ["acme/billing:canary"])]  # fmt: skip
    assert str(gone) in health["unavailable"][0]["reason"]
    metrics = httpx.get(f"{server.url}/metrics", headers=auth(keys["acme"])).text
    assert 'flywheel_model_load_failures_total{route="tiny",when="start"} 2.0' in metrics
    assert "flywheel_models_unavailable 2.0" in metrics
    # the folder is back and the model is loaded again (e.g. `flywheel promote`): the alias serves it
    shutil.copytree(models["ada-1"], gone)
    http_loader(server.url, keys["acme"], "tiny")("cand-gone", str(gone))
    assert text(server, keys["acme"], "triage") == text(server, keys["acme"], "cand-gone") != text(server, keys["acme"], "tiny")
    assert [u["model"] for u in httpx.get(f"{server.url}/healthz").json()["unavailable"]] == ["cand-wrong-base"]


def test_adapters_load_only_on_their_base_and_bad_folders_are_a_400_naming_them(broken, models):
    server, keys = broken, broken.keys
    admin = httpx.Client(base_url=server.url, headers=auth(keys["acme"]), timeout=120)

    def load(name: str, path) -> httpx.Response:
        return admin.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})

    def with_base(adapter: str, folder, base: str):
        folder = shutil.copytree(adapter, folder)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base}))
        return folder

    r = load("other", models["ada-other"])  # same shapes, another model: told apart by the folders
    assert r.status_code == 400 and r.json()["error"]["code"] == "base_mismatch", r.text
    assert models["other"] in r.text and models["base"] in r.text
    folders = server.data_dir / "adapters"
    moved = with_base(models["ada-narrow"], folders / "narrow-moved", "/gone/narrow-base")
    r = load("narrow", moved)  # its base is not on this machine: the weights' shapes decide
    assert r.status_code == 400 and r.json()["error"]["code"] == "base_mismatch", r.text
    assert "/gone/narrow-base" in r.text and models["base"] in r.text and "32" in r.text
    relative = with_base(models["ada-1"], folders / "relative", os.path.relpath(models["base"]))
    assert load("relative", relative).status_code == 200  # the same base, named relative to the service
    assert text(server, keys["acme"], "relative") != text(server, keys["acme"], "tiny")
    corrupt = folders / "corrupt"
    corrupt.mkdir()
    (corrupt / "adapter_config.json").write_text("{not json")
    odd = folders / "odd"
    odd.mkdir()
    (odd / "config.json").write_text('{"model_type": "telepathy", "architectures": ["TelepathyForMind"]}')
    (odd / "model.safetensors").write_bytes(b"\0" * 16)
    truncated = shutil.copytree(models["ada-2"], folders / "truncated")
    (truncated / "adapter_model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{")
    for folder, words in ((folders / "missing", "does not exist"), (corrupt, "corrupt"),
                          (odd, "unsupported architecture"), (truncated, "corrupt")):  # fmt: skip
        r = load("bad", folder)
        assert r.status_code == 400 and str(folder) in r.text and words in r.text, r.text
    assert "bad" not in {m["id"] for m in admin.get("/v1/models").json()["data"]}
    assert load("ada-2", models["ada-2"]).status_code == 200  # the engine is fine after all that
