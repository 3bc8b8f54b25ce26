"""Settings are strict: a key that names no setting, in flywheel.toml or a FLYWHEEL_* variable, is
an error at load naming the key, its file and line, and the closest valid name; every command exits
2 on it and the service refuses to start."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.settings import UnknownSetting, load_settings

REPO = Path(__file__).resolve().parents[1]


def flywheel(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flywheel.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)  # fmt: skip


@pytest.mark.parametrize(("toml", "message"), [
    ("[ingest]\nmax_items = 3\nmax_itemz = 5000\n", "line 3: unknown setting 'ingest.max_itemz' (did you mean 'max_items'?)"),
    ("port = 9000\n\n[stor]\nkind = 'lake'\n", "line 3: unknown setting 'stor' (did you mean 'store'?)"),
    ("[routes.a]\nkind = 'local'\npath = 'p'\n\n[routes.b]\nkind = 'local'\npaht = 'p'\n",
     "line 7: unknown setting 'routes.b.paht' (did you mean 'path'?)"),
    ("[tasks.t]\nrecipie = 'sft'\n", "line 2: unknown setting 'tasks.t.recipie' (did you mean 'recipe'?)"),
    ("[evals.prices.big]\nprompt = 1.0\ncompletoin = 2.0\n", "line 3: unknown setting 'evals.prices.big.completoin' (did you mean 'completion'?)"),
])  # fmt: skip
def test_an_unknown_key_in_the_file_is_an_error_naming_it(tmp_path, toml, message):
    (tmp_path / "flywheel.toml").write_text(toml)
    with pytest.raises(UnknownSetting) as raised:
        load_settings(tmp_path)
    assert str(raised.value) == f"{tmp_path / 'flywheel.toml'}, {message}"


def test_an_unknown_environment_variable_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_INGEST__MAX_ITEMZ", "5")
    with pytest.raises(UnknownSetting, match=r"environment variable FLYWHEEL_INGEST__MAX_ITEMZ: unknown setting "
                                             r"'ingest.max_itemz' \(did you mean 'max_items'\?\)"):  # fmt: skip
        load_settings(tmp_path)
    monkeypatch.delenv("FLYWHEEL_INGEST__MAX_ITEMZ")
    monkeypatch.setenv("FLYWHEEL_INGEST__MAX_ITEMS", "5")  # a valid one still works
    assert load_settings(tmp_path).ingest.max_items == 5


def test_free_tables_and_the_example_config_load(tmp_path):
    shutil.copy(REPO / "infra" / "flywheel.example.toml", tmp_path / "flywheel.toml")
    settings = load_settings(tmp_path)
    assert settings.evals.hardware_usd_per_hour > 0 and settings.routes
    (tmp_path / "flywheel.toml").write_text("[tasks.t]\ncuration = { anything = 1 }\n")
    assert load_settings(tmp_path).tasks["t"].curation == {"anything": 1}  # checked by curation itself


def test_every_command_exits_2_and_the_service_refuses_to_start(tmp_path):
    assert flywheel("init", "--data-dir", str(tmp_path)).returncode == 0
    config = tmp_path / "flywheel.toml"
    config.write_text(config.read_text() + "\n[gatway]\nmax_tokens = 64\n")
    for args in (["status"], ["serve"], ["keys", "list"], ["models", "list"]):
        out = flywheel(*args, "--data-dir", str(tmp_path))
        assert out.returncode == 2, (args, out.stderr)
        assert "unknown setting 'gatway' (did you mean 'gateway'?)" in out.stderr, args
        assert "Traceback" not in out.stderr
    config.write_text(config.read_text().replace("[gatway]", "[gateway]"))
    out = flywheel("serve", "--data-dir", str(tmp_path), env={"FLYWHEEL_PROT": "8000"})
    assert out.returncode == 2 and "FLYWHEEL_PROT: unknown setting 'prot' (did you mean 'port'?)" in out.stderr


def test_a_typo_in_a_gate_table_names_the_key(tmp_path):
    (tmp_path / "flywheel.toml").write_text("[tasks.t.gate]\nquality_margn = 0.02\n")
    with pytest.raises(ValueError, match=r"gate.quality_margn: unknown gate setting \(did you mean 'quality_margin'\?\)"):
        load_settings(tmp_path)
