"""The `flywheel` CLI as a user runs it: real processes, exit codes, messages."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgspec
import pytest
from conftest import Server, auth
from real_model import seed_default_base

from flywheel import store
from flywheel.registry.keys import active_keys, hash_key
from flywheel.settings import load_settings


def flywheel(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], capture_output=True, text=True, env=env)


def flywheels(*commands: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Commands that do not depend on each other, run at once: each is mostly the interpreter's
    start-up, which is CPU-bound, and the suite runs one test at a time on a box with cores to spare."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: flywheel(*args), commands))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, small_real_model):
    """`flywheel init` + `flywheel serve`, as a new user runs them, for the tests below in file order
    (the last one revokes init's key): the default base is the shrunk SmolLM2 (a link, no import),
    and the service re-reads the keys every 0.5 s."""
    home = tmp_path_factory.mktemp("fresh")
    key = flywheel("init", "--data-dir", str(home)).stdout.strip().splitlines()[-1]
    seed_default_base(home, small_real_model)
    server = Server(home, env={"FLYWHEEL_KEY_REFRESH_S": "0.5"}).start()
    server.key = key
    yield server
    server.stop()


def test_init_creates_folder_config_and_a_key_once(tmp_path):
    home = tmp_path / "home"
    out = flywheel("init", "--data-dir", str(home), "--project", "acme")
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("fwk_") and (home / "flywheel.toml").exists()
    with store.connect(load_settings(home).db_path) as con:
        assert active_keys(con) == {hash_key(key): ("acme", "admin")}  # the operator's: an admin key
        assert key not in str(con.execute("SELECT * FROM api_keys").fetchall())  # only the hash is stored
    again = flywheel("init", "--data-dir", str(home))
    assert again.returncode == 0 and "already initialised" in again.stdout and "fwk_" not in again.stdout


def test_keys_create_and_bad_project_name(tmp_path):
    d = ("--data-dir", str(tmp_path))
    out, admin, bad_role, bad_project, missing = flywheels(
        ("keys", "create", "--project", "globex", *d), ("keys", "create", "--project", "globex", "--role", "admin", *d),
        ("keys", "create", "--project", "globex", "--role", "root", *d), ("keys", "create", "--project", "no spaces!", *d),
        ("keys", "create", *d))  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("fwk_")
    assert admin.returncode == 0 and admin.stdout.startswith("fwk_")
    with store.connect(load_settings(tmp_path).db_path) as con:
        owners = active_keys(con)
    assert owners[hash_key(out.stdout.strip())] == ("globex", "app")  # the default role
    assert owners[hash_key(admin.stdout.strip())] == ("globex", "admin")
    listed = {line.split()[0]: line.split()[2] for line in flywheel("keys", "list", *d).stdout.splitlines()[1:]}
    assert listed == {out.stdout[:10]: "app", admin.stdout[:10]: "admin"}  # (and no key from the bad calls)
    assert bad_role.returncode == 2 and "role:" in bad_role.stderr and "admin" in bad_role.stderr
    assert "Traceback" not in bad_role.stderr
    assert bad_project.returncode == 2 and "project:" in bad_project.stderr and "Traceback" not in bad_project.stderr
    assert missing.returncode == 2 and "--project" in missing.stderr


@pytest.mark.slow
def test_a_fresh_init_serves_a_chat_call_on_the_default_route(fresh):
    # The gateway answers out of the box on the `local` route (the default base; here its shrunk
    # copy, with the real tokenizer and chat template), through the official client, and records the call.
    from openai import OpenAI

    assert "[routes.local]" in (fresh.data_dir / "flywheel.toml").read_text()
    client = OpenAI(base_url=f"{fresh.url}/v1", api_key=fresh.key)
    assert "local" in {m.id for m in client.models.list().data}
    raw = client.chat.completions.with_raw_response.create(
        model="local", messages=[{"role": "user", "content": "Hello"}], max_tokens=5)
    answer = raw.parse()
    assert answer.model == "local" and answer.usage.completion_tokens >= 1
    interaction_id = raw.headers["x-flywheel-interaction-id"]
    deadline, seen = time.monotonic() + 10, set()
    while interaction_id not in seen and time.monotonic() < deadline:  # recorded after the answer
        time.sleep(0.2)
        seen = {i["id"] for i in httpx.get(f"{fresh.url}/v1/interactions", headers=auth(fresh.key), timeout=10).json()["data"]}
    assert interaction_id in seen


def test_keys_list_and_revoke_against_a_running_service(fresh):
    first, home = fresh.key, str(fresh.data_dir)
    second = flywheel("keys", "create", "--project", "default", "--data-dir", home).stdout.strip()

    def status(key: str) -> int:
        return httpx.get(f"{fresh.url}/v1/interactions", headers=auth(key), timeout=10).status_code

    deadline = time.monotonic() + 10
    while status(second) != 200 and time.monotonic() < deadline:  # a key made after start, once re-read
        time.sleep(0.1)
    assert status(first) == status(second) == 200
    listed = flywheel("keys", "list", "--data-dir", home)
    assert listed.returncode == 0 and first[:10] in listed.stdout and second[:10] in listed.stdout
    assert first not in listed.stdout
    out = flywheel("keys", "revoke", first[:10], "--data-dir", home)
    assert out.returncode == 0 and out.stdout.strip() == f"revoked {first[:10]}"
    deadline = time.monotonic() + 10
    while status(first) == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(first) == 401 and status(second) == 200
    # only the prefix as listed, or the whole key, names a key
    listed, again, *wrong = flywheels(("keys", "list", "--data-dir", home), ("keys", "revoke", first[:10], "--data-dir", home),
                                      *(("keys", "revoke", part, "--data-dir", home) for part in ("fwk_", "", second[:9])))  # fmt: skip
    row = next(line for line in listed.stdout.splitlines() if first[:10] in line)
    assert not row.rstrip().endswith("-")  # the revocation time is shown
    assert again.returncode == 2 and "no active key matches" in again.stderr and "Traceback" not in again.stderr
    for out in wrong:
        assert out.returncode == 2 and "no active key matches" in out.stderr
    assert flywheel("keys", "revoke", second, "--data-dir", home).returncode == 0  # the whole key
    listed, nothing = flywheels(("keys", "list", "--data-dir", home), ("keys", "list", "--data-dir", str(fresh.data_dir / "nothing")))
    assert "-" not in {line.split()[-1] for line in listed.stdout.splitlines()[1:]}
    assert nothing.returncode == 2


def test_status_and_usage_errors(tmp_path):
    nothing, init, unknown, bad_port, *helps = flywheels(
        ("status", "--data-dir", str(tmp_path / "nothing")), ("init", "--data-dir", str(tmp_path)), ("no-such-command",),
        ("serve", "--port", "99999999"), *((command, "--help") for command in ("init", "keys", "serve", "status", "up")))  # fmt: skip
    assert nothing.returncode == 2 and "flywheel init" in nothing.stderr
    assert init.returncode == 0
    out = flywheel("status", "--data-dir", str(tmp_path))
    assert out.returncode == 0 and "no interactions" in out.stdout
    assert unknown.returncode == 2
    assert bad_port.returncode == 2
    assert [h.returncode for h in helps] == [0] * 5


def test_curate_command(tmp_path):
    from flywheel.demo.world import TASK, traffic
    from flywheel.ingest.interactions import write_feedback, write_interactions
    from flywheel.ingest.records import Limits, feedback_row, interaction_row

    assert flywheel("init", "--data-dir", str(tmp_path), "--project", "shop").returncode == 0
    items, feedback = traffic(200, seed=3)
    limits = Limits(10_000, 10)
    with store.connect(load_settings(tmp_path).db_path) as con:
        write_interactions(con, [interaction_row(msgspec.json.encode(i), project="shop", redact=True, limits=limits)
                                 for i in items])  # fmt: skip
        write_feedback(con, [feedback_row(msgspec.json.encode(f), project="shop", redact=True, limits=limits)
                             for f in feedback])  # fmt: skip
    d = ("--data-dir", str(tmp_path))
    (tmp_path / "typo.toml").write_text("[curation]\neval_fraktion = 0.5\n")
    out, unknown, typo = flywheels(("curate", "--task", TASK, "--project", "shop", *d),
                                   ("curate", "--task", "nope", "--project", "shop", *d),
                                   ("curate", "--task", TASK, "--config", str(tmp_path / "typo.toml"), *d))  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "dataset" in out.stdout and "written to" in out.stdout
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
    assert typo.returncode == 2 and "eval_fraktion" in typo.stderr and "Traceback" not in typo.stderr
    again, status = flywheels(("curate", "--task", TASK, "--project", "shop", *d), ("status", *d))
    assert again.returncode == 0 and "already at" in again.stdout
    assert TASK in status.stdout and "200" in status.stdout
    # Without --project and --config, the task's section in flywheel.toml decides, as in `flywheel run`.
    with (tmp_path / "flywheel.toml").open("a") as toml:
        toml.write(f'\n[tasks.{TASK}]\nproject = "shop"\ncuration = {{ eval_fraction = 0.25, seed = 4 }}\n')
    configured = flywheel("curate", "--task", TASK, "--data-dir", str(tmp_path))
    assert configured.returncode == 0 and "written to" in configured.stdout, configured.stderr
    with store.connect(load_settings(tmp_path).db_path, read_only=True) as con:
        project, curation = con.execute("SELECT project, config -> '$.curation' FROM datasets ORDER BY created_at DESC LIMIT 1").fetchone()
    assert project == "shop" and json.loads(curation)["seed"] == 4 and json.loads(curation)["eval_fraction"] == 0.25
    (tmp_path / "override.toml").write_text("[curation]\nseed = 5\n")
    overridden = flywheel("curate", "--task", TASK, "--config", str(tmp_path / "override.toml"), "--data-dir", str(tmp_path))
    assert overridden.returncode == 0, overridden.stderr
    with store.connect(load_settings(tmp_path).db_path, read_only=True) as con:
        curation = con.execute("SELECT config -> '$.curation' FROM datasets ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    assert json.loads(curation)["seed"] == 5 and json.loads(curation)["eval_fraction"] == 0.25  # the file over the task's table


def test_promote_and_rollback_commands(tmp_path):
    (tmp_path / "flywheel.toml").write_text(
        '[routes.big]\nkind = "upstream"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[routes.small]\nkind = "upstream"\nbase_url = "http://127.0.0.1:9/v1"\n')
    d = ["--data-dir", str(tmp_path), "--task", "triage"]
    first, bad, run = flywheels(("promote", *d, "--model", "big"), ("promote", *d, "--model", "nope"), ("run", *d))
    assert first.returncode == 0
    assert bad.returncode == 2 and "--model" in bad.stderr
    assert run.returncode == 2  # no [tasks.triage] section
    out = flywheel("promote", *d, "--model", "small", "--reason", "cheaper")
    assert out.returncode == 0 and "triage → small" in out.stdout
    out = flywheel("rollback", *d)
    assert out.returncode == 0 and "triage → big" in out.stdout
    with store.connect(load_settings(tmp_path).db_path) as con:
        actions = con.execute("SELECT action, model, reason FROM deployment_events ORDER BY ts").fetchall()
    assert actions == [("promote", "big", "promote: manual promotion"), ("promote", "small", "promote: cheaper"),
                       ("rollback", "big", "manual rollback")]  # fmt: skip
    # A task whose traffic is project `shop`: its alias moves there without --project.
    with (tmp_path / "flywheel.toml").open("a") as toml:
        toml.write('[tasks.orders]\nproject = "shop"\n')
    assert flywheel("promote", "--data-dir", str(tmp_path), "--task", "orders", "--model", "small").returncode == 0
    with store.connect(load_settings(tmp_path).db_path) as con:
        assert con.execute("SELECT project, model FROM deployments WHERE task = 'orders'").fetchall() == [("shop", "small")]
