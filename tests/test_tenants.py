"""Tenants against a real service (in a thread of this process, the official `openai` client and
httpx): two projects, `acme` and `globex`, each with an app key and an admin key, one tiny local
model, and candidates laid out as training leaves them (`<home>/models/<task>/<id>/adapter`).

Each test is a finding of issue 18 that the service used to allow: another project unloading,
replacing or shadowing a production model, seeing or calling it, loading it from its folder or
probing the server's disk through `lora_path`, app keys managing adapters, and /metrics without
a key.
"""

from __future__ import annotations

import os
import time

import httpx
import openai
import pytest
from conftest import auth, make_keys
from test_gateway import make_adapter

from flywheel import store
from flywheel.registry.deployments import assign
from flywheel.settings import load_settings
from serving.app import create_app, in_thread

pytestmark = pytest.mark.slow  # (the module's service: a tiny model built and served, ≈10 s on 2 busy cores)
NOT_ALLOWED = {"message": "lora_path: not an allowed model folder", "type": "invalid_request_error",
               "param": "lora_path", "code": "path_not_allowed"}  # fmt: skip


def register(home, model_id: str, project: str, task: str, adapter) -> None:
    with store.connect(load_settings(home).db_path) as con:
        con.execute("INSERT INTO models (id, project, task, base_model, method, adapter_path, recipe, recipe_hash,"
                    " status) VALUES (?, ?, ?, 'tiny', 'sft', ?, '{}', 'test', 'ready')",
                    [model_id, project, task, str(adapter)])  # fmt: skip


def deploy(home, project: str, task: str, model: str) -> None:
    with store.connect(load_settings(home).db_path) as con:
        assign(con, project=project, task=task, alias="production", model=model, reason="test")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The service, its data folder, the keys, and the folders a `lora_path` may name."""
    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    root = tmp_path_factory.mktemp("tenants")
    base = build_tiny_model(root / "shared" / "base", ticket_texts(120), max_length=96)
    home = root / "home"
    home.mkdir()
    (home / "flywheel.toml").write_text(f"""
[gateway]
max_tokens = 8
alias_refresh_s = 0.2
[routes.tiny]
kind = "local"
path = "{base}"
[routes.private]
kind = "upstream"
base_url = "http://127.0.0.1:9/v1"
projects = ["acme"]
""")
    # Both projects have a task called `triage`: their candidates share <home>/models/triage/.
    folders = {"acme": home / "models" / "triage" / "a-cand" / "adapter",
               "globex": home / "models" / "triage" / "b-cand" / "adapter"}  # fmt: skip
    make_adapter(str(base), folders["acme"], 1)
    make_adapter(str(base), folders["globex"], 2)
    register(home, "a-cand", "acme", "triage", folders["acme"])
    register(home, "b-cand", "globex", "triage", folders["globex"])
    deploy(home, "acme", "billing", "a-cand")  # restored at start, as acme's
    # The service user's home folder, as a prober would name it
    service_home = root / "service-user"
    (service_home / ".ssh").mkdir(parents=True)
    (service_home / ".ssh" / "id_ed25519").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    os.symlink(service_home / ".ssh", home / "models" / "triage" / "b-cand" / "escape")
    keys = {f"{p}-{role}": key for role in ("app", "admin") for p, key in make_keys(home, "acme", "globex", role=role).items()}
    settings = load_settings(home)
    with in_thread(create_app(settings)) as url:
        yield {"url": url, "home": home, "keys": keys, "folders": folders, "service_home": service_home}


def http(world, key: str) -> httpx.Client:
    return httpx.Client(base_url=world["url"], headers=auth(world["keys"][key]), timeout=120)


def load(world, key: str, name: str, path) -> httpx.Response:
    return http(world, key).post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})


def unload(world, key: str, name: str) -> httpx.Response:
    return http(world, key).post("/v1/unload_lora_adapter", json={"lora_name": name})


def answer(world, key: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{world['url']}/v1", api_key=world["keys"][key], max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "my parcel is late"}],
                                           temperature=0, max_tokens=8)  # fmt: skip
    return reply.choices[0].message.content


def refused(world, key: str, model: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        answer(world, key, model)
    return info.value


def listed(world, key: str) -> set[str]:
    return {m["id"] for m in http(world, key).get("/v1/models").json()["data"]}


def test_app_keys_cannot_manage_adapters_and_metrics_need_an_admin_key(world):
    """Findings 1 and 6: any key loaded and unloaded adapters; /metrics answered without a key."""
    r = load(world, "acme-app", "app-made", world["folders"]["acme"])
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    assert unload(world, "acme-app", "app-made").status_code == 403
    assert "app-made" not in listed(world, "acme-admin")
    assert httpx.get(f"{world['url']}/metrics").status_code == 401
    r = http(world, "globex-app").get("/metrics")
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    r = http(world, "acme-admin").get("/metrics")
    assert r.status_code == 200 and "flywheel_gateway_requests_total" in r.text
    # an app key still does what an app does: the gateway and its project's interactions
    assert answer(world, "acme-app", "tiny")
    assert http(world, "acme-app").get("/v1/interactions").status_code == 200


def test_another_project_cannot_unload_replace_or_shadow_a_production_model(world):
    """Findings 1 and 2: B unloaded A's production adapter, and B's load under A's name served B's weights."""
    assert load(world, "acme-admin", "a-private", world["folders"]["acme"]).status_code == 200
    deploy(world["home"], "acme", "triage", "a-private")
    time.sleep(0.3)  # the service re-reads aliases every 0.2 s
    production = answer(world, "acme-app", "triage")
    assert production != answer(world, "acme-app", "tiny")  # the adapter is what answers
    assert unload(world, "globex-admin", "a-private").status_code == 404
    # globex's own `a-private` and `a-cand`: names are per project, acme's models stay acme's
    assert load(world, "globex-admin", "a-private", world["folders"]["globex"]).status_code == 200
    assert load(world, "globex-admin", "a-cand", world["folders"]["globex"]).status_code == 200
    theirs = answer(world, "globex-app", "a-private")
    assert theirs != production and answer(world, "globex-app", "a-cand") == theirs
    assert answer(world, "acme-app", "triage") == answer(world, "acme-app", "a-private") == production
    assert answer(world, "acme-app", "billing") == production  # restored at start from the registry, acme's
    assert unload(world, "globex-admin", "a-private").status_code == 200  # its own
    assert answer(world, "acme-app", "triage") == production


def test_models_are_listed_and_called_only_by_their_project(world):
    """Finding 4: every project listed and called every runtime adapter, and 404s named them all."""
    assert load(world, "acme-admin", "acme-only", world["folders"]["acme"]).status_code == 200
    assert load(world, "acme-admin", "v1", world["folders"]["acme"]).status_code == 200
    assert load(world, "globex-admin", "v1", world["folders"]["globex"]).status_code == 200
    assert answer(world, "acme-app", "v1") != answer(world, "globex-app", "v1")
    mine, theirs = listed(world, "acme-app"), listed(world, "globex-app")
    assert {"tiny", "private", "acme-only", "v1", "a-cand", "billing"} <= mine
    assert "v1" in theirs and "tiny" in theirs
    assert not {"acme-only", "private", "billing"} & theirs  # nor the route flywheel.toml gives acme alone
    for name in ("acme-only", "private", "billing"):
        error = refused(world, "globex-app", name)
        assert error.status_code == 404
        known = error.message.partition("(known: ")[2]  # what globex may call, and nothing else
        assert "tiny" in known and not any(n in known for n in ("acme-only", "private", "billing", "a-private"))
    assert unload(world, "globex-admin", "acme-only").status_code == 404
    assert answer(world, "acme-app", "acme-only")


def test_lora_path_is_confined_and_a_refusal_tells_nothing_about_the_disk(world):
    """Finding 3: any folder on the server's disk loaded (another project's trained model
    included), and the errors told existing folders from missing ones."""
    ssh = world["service_home"] / ".ssh"
    b_cand = world["folders"]["globex"].parent
    for path in (world["folders"]["acme"],  # acme's trained model, under <home>/models
                 world["folders"]["acme"].parent,
                 world["service_home"], ssh, ssh / "id_ed25519", ssh / "missing", "/nonexistent/folder",
                 b_cand / "escape",  # a symlink inside globex's own folder, to the outside
                 b_cand / ".." / ".." / ".." / ".." / "service-user" / ".ssh",
                 world["home"], world["home"] / "models", world["home"] / "models" / "triage",
                 "relative/.ssh", "\0"):  # fmt: skip
        r = load(world, "globex-admin", "probe", path)
        assert (r.status_code, r.json()["error"]) == (400, NOT_ALLOWED), (path, r.text)
    assert "probe" not in listed(world, "globex-app")
    # its own folder loads (and a missing folder there is named: it is globex's to know)
    assert load(world, "globex-admin", "own", world["folders"]["globex"]).status_code == 200
    missing = load(world, "globex-admin", "own-missing", b_cand / "gone")
    assert missing.status_code == 400 and "does not exist" in missing.text
