"""Variants (issue 16, item 3, serving side): a model served with its own serving option.

A variant folder (`serving.json`: an adapter or model folder and a `ServingOption`) loads wherever a
model folder does: in the engine's `adapters` at start, through `POST /v1/load_lora_adapter`, and
from a deployment at a restart. Lossless options (fp32, merged or not, with n-gram speculation)
answer exactly as the plain adapter (or whole model) does under greedy decoding; bf16 and int8
answer; a variant's `max_batch` caps its running rows and its `threads` are those of its forward
passes; a bad `serving.json` is a 400 naming the field. Trained drafts (an n-gram table, a draft
model fine-tuned from the adapter's first layers) are lossless and accepted, and a draft model is
registered with its lineage. A variant that keeps fewer layers serves its cut (the same fine-tuned
first layers, with the whole head), registered with its lineage.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import httpx
import openai
import pytest
from conftest import auth, make_keys
from lively_model import TICKETS, build_lively_model
from test_engine_batching import LONG, SHORT, Log, solo
from test_gateway import make_adapter
from test_restart import deploy, register

from flywheel.optimize.options import ServingOption, variant_id, write_variant
from flywheel.settings import load_settings
from serving.app import create_app, in_thread
from serving.engine import Engine, Generation
from serving.model_check import ModelLoadError

pytestmark = pytest.mark.slow  # (tiny models are built once per module; a few engines decode some hundred tokens)
OPTIONS = {
    "merged": ServingOption(merge=True),
    "ngram": ServingOption(speculative="ngram"),
    "bf16": ServingOption(dtype="bfloat16"),
    "int8": ServingOption(quantize="int8", merge=True),
    "one-row": ServingOption(merge=True, max_batch=1),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """The lively base, an adapter of it, and a variant folder of the adapter per option of OPTIONS."""
    root = tmp_path_factory.mktemp("models")
    base = build_lively_model(root / "base")
    ada = make_adapter(base, root / "ada", 1)
    variants = {name: str(write_variant(root / f"v-{name}", option, ada, "ada")) for name, option in OPTIONS.items()}
    # a whole model's variant: the base itself, with n-gram speculation
    variants["whole"] = str(write_variant(root / "v-whole", ServingOption(speculative="ngram"), base, "base"))
    return {"base": base, "ada": ada, **variants}


@pytest.fixture(scope="module")
def engine(models):
    """Every variant loaded at start, beside the plain adapter."""
    engine = Engine(models["base"], adapters={k: v for k, v in models.items() if k != "base"}, max_batch=8,
                    max_wait_ms=0)  # fmt: skip
    yield engine
    engine.close()


def test_lossless_variants_answer_as_the_plain_adapter(engine):
    assert engine.failed == {} and {*OPTIONS, "whole"} <= set(engine.full_models)
    prompts = [engine.encode_prompt(t) for t in TICKETS[:4]]
    expected = [solo(engine, ids, 24, "ada") for ids in prompts]
    assert expected != [solo(engine, ids, 24) for ids in prompts], "the adapter changes nothing: this proves nothing"
    assert [solo(engine, ids, 24, "merged") for ids in prompts] == expected
    drafted = engine.drafted
    assert [solo(engine, ids, 24, "ada") for ids in prompts] == expected and engine.drafted == drafted  # route: off
    assert [solo(engine, ids, 24, "ngram") for ids in prompts] == expected
    assert engine.drafted > drafted and engine.accepted > 0, "the ngram variant did not speculate"
    assert [solo(engine, ids, 24, "whole") for ids in prompts] == [solo(engine, ids, 24) for ids in prompts]


def test_bf16_and_int8_variants_load_and_answer(engine):
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    ids = engine.encode_prompt(TICKETS[0])
    for name in ("bf16", "int8"):
        log = Log()
        log.submit(engine, name, ids, SHORT, adapter=name)
        log.wait()
        assert log.done[name]["finish_reason"] in ("stop", "length") and log.done[name]["completion_tokens"] >= 1
    assert engine.full_models["bf16"].dtype == torch.bfloat16
    int8 = engine.full_models["int8"]
    assert any(isinstance(m, Int8Linear) for m in int8.modules())
    floats = {n for n, m in int8.named_modules() if type(m) is torch.nn.Linear}
    layers = len(int8.get_decoder().layers)
    # the head, and each layer's MLP up/down projections (serving.variants.INT8_KEEP_FLOAT): nothing else
    assert floats == {"lm_head", *(f"model.layers.{i}.mlp.{p}" for i in range(layers) for p in ("up_proj", "down_proj"))}


def test_a_variant_decodes_no_more_rows_than_its_max_batch(engine):
    prompts = [engine.encode_prompt(t) for t in TICKETS[:3]]
    orders = {}
    for model in ("ada", "one-row"):
        log = Log()
        log.submit(engine, "r0", prompts[0], LONG, adapter=model)
        while not log.events:  # the first is decoding when the others come
            log.finished["r0"].wait(0.01)
        for i in (1, 2):
            log.submit(engine, f"r{i}", prompts[i], SHORT, adapter=model)
        log.wait()
        assert log.done["r0"]["finish_reason"] == "length", "the long request ended early: it proves nothing"
        orders[model] = log
    ada, one = orders["ada"], orders["one-row"]
    assert ada.first("r1", "token") < ada.first("r0", "done")  # a plain adapter's rows run together
    starts = sorted(("r0", "r1", "r2"), key=lambda r: one.first(r, "token"))
    for earlier, later in itertools.pairwise(starts):  # the variant's: each starts once the one before finished
        assert one.first(earlier, "done") < one.first(later, "token")
    assert one.texts == {r: solo(engine, prompts[i], LONG if r == "r0" else SHORT, "one-row")
                         for i, r in enumerate(("r0", "r1", "r2"))}  # fmt: skip


def test_a_variants_forward_passes_use_its_threads(models):
    import torch

    default = torch.get_num_threads()
    folder = write_variant(Path(models["merged"] + "-threads"), ServingOption(merge=True, threads=default + 1),
                           models["ada"], "ada")  # fmt: skip
    engine = Engine(models["base"], adapters={"ada": models["ada"], "threaded": str(folder)}, max_batch=8,
                    max_wait_ms=0)  # fmt: skip
    seen: dict[str, set[int]] = {"ada": set(), "threaded": set()}
    finished = {name: threading.Event() for name in seen}
    try:
        for name in list(seen):  # together: the two batches' passes alternate step by step

            def emit(delta: str, done: dict | None, name=name) -> None:  # (in the engine thread, after its pass)
                seen[name].add(torch.get_num_threads())
                if done is not None:
                    finished[name].set()

            engine.submit(Generation(prompt_ids=engine.encode_prompt(TICKETS[1]), max_tokens=SHORT, emit=emit,
                                     temperature=0, adapter=name))  # fmt: skip
        assert all(event.wait(120) for event in finished.values())
    finally:
        engine.close()
    assert seen == {"ada": {default}, "threaded": {default + 1}}


def test_a_bad_variant_is_a_model_load_error_naming_the_field(engine, models, tmp_path):
    cases = {
        "dtype": {"source": models["ada"], "option": {"dtype": "float16"}},
        "speed": {"source": models["ada"], "option": {"speed": "max"}},
        "quantize": {"source": models["ada"], "option": {"quantize": "int8"}},  # an adapter: int8 needs merge
        "merge": {"source": models["ada"], "option": {"merge": "yes"}},
        "source": {"source": str(tmp_path / "gone"), "option": {}},
    }
    for field, spec in cases.items():
        folder = tmp_path / field
        folder.mkdir()
        (folder / "serving.json").write_text(json.dumps({"parent": "ada", **spec}))
        with pytest.raises(ModelLoadError, match=field) as info:
            engine.load_adapter(f"bad-{field}", str(folder)).result(60)
        assert str(folder) in str(info.value)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "serving.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read the variant"):
        engine.load_adapter("bad-corrupt", str(tmp_path / "corrupt")).result(60)
    assert not any(name.startswith("bad-") for name in engine.adapters)


def test_variants_load_over_http_and_after_a_restart(models, tmp_path):
    """`flywheel serve`: a deployed variant is loaded at start; another loads, answers and unloads at
    runtime; a variant with an invalid option value is a 400 naming the field."""
    home = tmp_path
    (home / "flywheel.toml").write_text(f"""
[gateway]
max_tokens = 8
[routes.tiny]
kind = "local"
path = "{models['base']}"
adapters = {{ "ada" = "{models['ada']}" }}
[tasks.triage]
project = "acme"
route = "tiny"
""")
    key = make_keys(home, "acme", role="admin")["acme"]
    folders = {}
    for name, option in (("deployed", ServingOption(merge=True)), ("runtime", ServingOption(speculative="ngram"))):
        model = variant_id(f"cand-{name}", option)
        folders[name] = write_variant(home / "models" / "triage" / model, option, models["ada"], "cand")
        register(home, model, merged=str(folders[name]))
    bad = home / "models" / "triage" / "cand-bad"
    bad.mkdir(parents=True)
    (bad / "serving.json").write_text(json.dumps({"parent": "cand", "source": models["ada"],
                                                  "option": {"dtype": "float16"}}))  # fmt: skip
    register(home, "cand-bad", merged=str(bad))
    deploy(home, "triage", folders["deployed"].name)

    with in_thread(create_app(load_settings(home))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)

        def say(model: str) -> str:
            return client.chat.completions.create(model=model, messages=[{"role": "user", "content": TICKETS[2]}],
                                                  temperature=0, max_tokens=8).choices[0].message.content  # fmt: skip

        expected = say("ada")
        assert say("triage") == expected  # the deployed variant, loaded at start
        load = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth(key), timeout=120,
                          json={"lora_name": "runtime-variant", "lora_path": str(folders["runtime"])})  # fmt: skip
        assert load.status_code == 200, load.text
        assert "runtime-variant" in {m.id for m in client.models.list()}
        assert say("runtime-variant") == expected
        refused = httpx.post(f"{url}/v1/load_lora_adapter", headers=auth(key), timeout=120,
                             json={"lora_name": "bad-variant", "lora_path": str(bad)})  # fmt: skip
        assert refused.status_code == 400, refused.text
        assert "option.dtype" in refused.json()["error"]["message"] and str(bad) in refused.json()["error"]["message"]
        gone = httpx.post(f"{url}/v1/unload_lora_adapter", headers=auth(key), json={"lora_name": "runtime-variant"})
        assert gone.status_code == 200, gone.text
        with pytest.raises(openai.NotFoundError):
            say("runtime-variant")


def test_a_trained_draft_is_lossless_and_drafts_what_prompt_lookup_cannot(engine, models, tmp_path):
    """A `table` variant's draft comes from its task's answers (flywheel.optimize.draft): on prompts
    whose answers it learned, its greedy text is the adapter's, and far more draft tokens are
    accepted than prompt lookup alone finds."""
    from flywheel.optimize.draft import DRAFT_FILE, build_table

    chats = [[{"role": "user", "content": t}] for t in TICKETS[:6]]
    prompts = [engine.encode_chat(c) for c in chats]
    expected = [solo(engine, ids, 24, "ada") for ids in prompts]
    examples = [(c, None, {"role": "assistant", "content": text}) for c, text in zip(chats, expected)] * 2
    table = build_table(engine.tokenizer, examples)
    assert table, "no n-gram of the answers was kept"
    folder = write_variant(tmp_path / "v-table", ServingOption(speculative="table"), models["ada"], "ada")
    entries = [[*key, token] for key, token in table.items()]
    (folder / DRAFT_FILE).write_text(json.dumps({"dataset": "test", "answers": len(examples), "table": entries}))
    engine.load_adapter("table", str(folder)).result()
    accepted = {}
    for name in ("ngram", "table"):
        before = engine.accepted
        assert [solo(engine, ids, 24, name) for ids in prompts] == expected
        accepted[name] = engine.accepted - before
    assert accepted["table"] > accepted["ngram"], accepted
    # a table variant without its table is refused, naming the field
    bare = write_variant(tmp_path / "v-bare", ServingOption(speculative="table"), models["ada"], "ada")
    with pytest.raises(ModelLoadError, match="option.speculative"):
        engine.load_adapter("bare", str(bare)).result()
    assert "bare" not in engine.adapters
    engine.unload_adapter("table").result()


@pytest.fixture(scope="module")
def draft_model_variant(engine, models, tmp_path_factory) -> dict:
    """A `model` variant of the adapter, prepared as `flywheel optimize` prepares it: the adapter is a
    registered candidate whose training dataset holds its own answers to the tickets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flywheel import store
    from flywheel.optimize.variants import prepare_variant

    home = tmp_path_factory.mktemp("home")
    chats = [[{"role": "user", "content": t}] for t in TICKETS]
    answers = [solo(engine, engine.encode_chat(c), 24, "ada") for c in chats]
    dataset = home / "datasets" / "d1"
    (dataset / "parquet").mkdir(parents=True)
    rows = [{"messages": [*c, {"role": "assistant", "content": a}]} for c, a in zip(chats, answers)] * 4
    pq.write_table(pa.Table.from_pylist(rows), dataset / "parquet" / "sft-train.parquet")
    settings = load_settings(home)
    with store.connect(settings.db_path) as con:
        con.execute("INSERT INTO datasets (id, project, task, path, config, query, counts) VALUES ('d1', 'acme', "
                    "'triage', ?, '{}', 'test', '{}')", [str(dataset)])  # fmt: skip
        con.execute("INSERT INTO models (id, project, task, base_model, method, adapter_path, dataset_id, recipe, "
                    "recipe_hash, status) VALUES ('cand', 'acme', 'triage', ?, 'sft', ?, 'd1', '{}', 'test', 'ready')",
                    [models["base"], models["ada"]])  # fmt: skip
    prepared = {name: prepare_variant(settings, task="triage", parent="cand", source=models["ada"], option=option)
                for name, option in (("model", ServingOption(speculative="model")),
                                     ("merged-model", ServingOption(speculative="model", merge=True)),
                                     ("cut", ServingOption(merge=True, layers=1)),
                                     ("cut-ngram", ServingOption(merge=True, speculative="ngram", layers=1)))}  # fmt: skip
    return {"settings": settings, "chats": chats, "answers": answers, **prepared}


def test_a_trained_draft_model_is_registered_with_its_lineage(draft_model_variant):
    """Its draft is a Hugging Face folder in the variant's, its lineage there and in the registry; a
    second variant of the same model reuses it instead of training again."""
    from flywheel import store
    from flywheel.optimize.draft_model import DRAFT_DIR, LINEAGE_FILE

    model, folder = draft_model_variant["model"]
    assert model == "cand@fp32-adapter-model"
    draft = Path(folder) / DRAFT_DIR
    config = json.loads((draft / "config.json").read_text())
    stored = json.loads((draft / LINEAGE_FILE).read_text())
    with store.connect(draft_model_variant["settings"].db_path, read_only=True) as con:
        method, dataset, recipe = con.execute("SELECT method, dataset_id, recipe FROM models WHERE id = ?", [model]).fetchone()
    lineage = json.loads(recipe)["draft"]
    assert (method, dataset) == ("serving-option", "d1")
    assert lineage == {k: v for k, v in stored.items() if k != "token_ids"}
    assert lineage["parent"] == "cand" and lineage["dataset"] == "d1" and lineage["examples"] == 4 * len(TICKETS)
    assert lineage["layers"] == config["num_hidden_layers"] and lineage["steps"] >= 1 and lineage["loss"] is not None
    assert len(stored["token_ids"]) == lineage["tokens"] > 0
    other = Path(draft_model_variant["merged-model"][1]) / DRAFT_DIR
    assert (other / "model.safetensors").stat().st_ino == (draft / "model.safetensors").stat().st_ino


def test_a_trained_draft_model_is_lossless_and_its_drafts_are_accepted(engine, draft_model_variant):
    """Greedy answers through the draft model are the adapter's own, and some of its drafts are accepted.
    (The lively model writes bytes that re-tokenize differently from what it wrote, so its draft learns
    far worse than a real task's: bench/serve.py measures the acceptance on SmolLM2.)"""
    model, folder = draft_model_variant["model"]
    engine.load_adapter(model, folder).result(120)
    try:
        prompts = [engine.encode_chat(c) for c in draft_model_variant["chats"]]
        drafted, accepted = engine.drafted, engine.accepted
        assert [solo(engine, ids, 24, model) for ids in prompts] == draft_model_variant["answers"]
        assert engine.drafted > drafted and engine.accepted > accepted, "the draft model did not speculate"
    finally:
        engine.unload_adapter(model).result(60)


def test_a_draft_model_variant_without_its_draft_is_a_model_load_error(engine, models, draft_model_variant, tmp_path):
    import shutil

    from flywheel.optimize.draft_model import DRAFT_DIR

    bare = write_variant(tmp_path / "v-bare-model", ServingOption(speculative="model"), models["ada"], "ada")
    corrupt = write_variant(tmp_path / "v-corrupt-model", ServingOption(speculative="model"), models["ada"], "ada")
    shutil.copytree(Path(draft_model_variant["model"][1]) / DRAFT_DIR, corrupt / DRAFT_DIR)
    (corrupt / DRAFT_DIR / "model.safetensors").write_bytes(b"not weights")
    for name, folder in (("bare", bare), ("corrupt", corrupt)):
        with pytest.raises(ModelLoadError, match="option.speculative") as info:
            engine.load_adapter(name, str(folder)).result(60)
        assert str(folder / (DRAFT_DIR if name == "corrupt" else "")) in str(info.value)
        assert name not in engine.adapters


def test_a_cut_variant_serves_its_first_layers_fine_tuned_and_registered(engine, models, draft_model_variant):
    """`layers = 1`: the adapter merged and cut to its first layer, trained on the candidate's dataset,
    registered with that lineage, shared by the variants that keep as many layers, and served."""
    from flywheel import store
    from flywheel.optimize.draft_model import CUT_DIR
    from flywheel.optimize.variants import prepare_variant

    model, folder = draft_model_variant["cut"]
    assert model == "cand@fp32-merged-off-l1"
    cut = Path(folder) / CUT_DIR
    assert json.loads((cut / "config.json").read_text())["num_hidden_layers"] == 1
    with store.connect(draft_model_variant["settings"].db_path, read_only=True) as con:
        recipe = json.loads(con.execute("SELECT recipe FROM models WHERE id = ?", [model]).fetchone()[0])
    assert recipe["option"]["layers"] == 1 and "draft" not in recipe
    assert recipe["cut"]["parent"] == "cand" and recipe["cut"]["dataset"] == "d1" and recipe["cut"]["layers"] == 1
    assert recipe["cut"]["steps"] >= 1 and recipe["cut"]["loss"] is not None
    other = Path(draft_model_variant["cut-ngram"][1]) / CUT_DIR
    assert (other / "model.safetensors").stat().st_ino == (cut / "model.safetensors").stat().st_ino
    engine.load_adapter(model, folder).result(120)
    try:
        assert engine.full_models[model].config.num_hidden_layers == 1
        chats = draft_model_variant["chats"]
        answers = [solo(engine, engine.encode_chat(c), 24, model) for c in chats]
        assert all(answers) and answers != [solo(engine, engine.encode_chat(c), 24, "ada") for c in chats]
    finally:
        engine.unload_adapter(model).result(60)
    # as many layers as the model has is no cut: refused before anything is trained
    with pytest.raises(ValueError, match="layers: 2 is not fewer than the 2 layers of 'cand'"):
        prepare_variant(draft_model_variant["settings"], task="triage", parent="cand", source=models["ada"],
                        option=ServingOption(merge=True, layers=2))  # fmt: skip


def test_a_cut_variant_without_its_cut_is_a_model_load_error(engine, models, tmp_path):
    bare = write_variant(tmp_path / "v-bare-cut", ServingOption(merge=True, layers=1), models["ada"], "ada")
    with pytest.raises(ModelLoadError, match="option.layers: cannot load the cut model") as info:
        engine.load_adapter("bare-cut", str(bare)).result(60)
    assert str(bare / "cut") in str(info.value) and "bare-cut" not in engine.adapters


def test_a_cut_is_an_option_of_a_merged_model_only():
    from flywheel.optimize.options import space

    with pytest.raises(ValueError, match="layers: a cut model is a whole model: it needs merge true"):
        ServingOption(layers=6)
    with pytest.raises(ValueError, match="layers: expected a whole number >= 1, got 0"):
        ServingOption(merge=True, layers=0)
    options = space(dtypes=["float32"], quantize=["none"], merge=[False, True], speculative=["off", "model"],
                    max_batch=[], threads=[], layers=[6])  # fmt: skip
    assert [o.name for o in options if o.layers] == ["fp32-merged-off-l6"]
