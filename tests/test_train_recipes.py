"""Recipes as data: files ↔ `Recipe` → TRL configs and a PEFT `LoraConfig`, with errors naming the field;
the methods table (`flywheel.train.methods`) and the model card, without training anything."""

from pathlib import Path

import pytest

from flywheel.train.methods import METHODS, Method
from flywheel.train.recipes import (
    LoraRecipe,
    Recipe,
    available_recipes,
    dump_recipe,
    load_recipe,
    lora_config,
    recipe_from_dict,
    recipe_hash,
    trl_config,
)


def test_defaults_load_and_build_configs(tmp_path):
    assert {"sft", "sft-full", "distill", "gkd", "dpo"} <= set(available_recipes())
    for name in available_recipes():
        r = load_recipe(name, base_model="some/model")
        cfg = trl_config(r, tmp_path)
        assert cfg.use_cpu and not cfg.bf16 and not cfg.gradient_checkpointing  # CPU pitfalls, STACK.md
        assert cfg.logging_nan_inf_filter is False  # the NaN guard must see the real loss
        assert type(cfg).__name__ == {"sft": "SFTConfig", "distill": "SFTConfig", "gkd": "GKDConfig", "dpo": "DPOConfig"}[r.method]
    assert load_recipe("sft-full", base_model="x").lora is None and lora_config(load_recipe("sft-full", base_model="x")) is None
    lora = lora_config(load_recipe("dpo", base_model="x"))
    assert (lora.r, lora.lora_alpha, lora.target_modules, lora.layers_to_transform) == (16, 32, "all-linear", None)
    for name in ("sft", "distill"):  # LoRA students on a pretrained base: measured defaults (recipes/sft.yaml)
        r = load_recipe(name, base_model="x")
        assert r.lora.top_layers == 8 and r.completion_only_loss and not r.assistant_only_loss
        assert trl_config(r, tmp_path).completion_only_loss is True


def _llama_folder(path: Path, layers: int) -> Path:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=64).save_pretrained(path)
    return path


def test_sft_default_puts_lora_on_the_top_layers_only(tmp_path):
    # SmolLM2-135M's shape (30 Llama layers): the sft recipe adapts layers 22-29, every linear
    # module in them, and PEFT builds exactly that (config only: meta weights, no training).
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    base = _llama_folder(tmp_path / "llama30", 30)
    lora = lora_config(load_recipe("sft", base_model=str(base)))
    assert lora.layers_to_transform == list(range(22, 30))
    assert sorted(lora.target_modules) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    adapted = {int(n.split(".layers.")[1].split(".")[0]) for n, _ in get_peft_model(model, lora).named_parameters() if "lora_A" in n}
    assert adapted == set(range(22, 30))
    # A base with fewer layers than top_layers gets them all; a given config wins over the path.
    small = AutoConfig.from_pretrained(_llama_folder(tmp_path / "llama4", 4))
    assert lora_config(load_recipe("sft", base_model=str(base)), small).layers_to_transform == [0, 1, 2, 3]
    explicit = recipe_from_dict({"base_model": str(base), "lora": {"layers_to_transform": [3, 1], "target_modules": ["q_proj"]}})
    assert (lora_config(explicit).layers_to_transform, lora_config(explicit).target_modules) == ([1, 3], {"q_proj"})
    with pytest.raises(ValueError, match="top_layers.*not both"):
        recipe_from_dict({"lora": {"top_layers": 2, "layers_to_transform": [0]}})
    with pytest.raises(ValueError, match="set base_model"):
        lora_config(load_recipe("sft"))


def test_yaml_toml_json_round_trip(tmp_path):
    (tmp_path / "r.yaml").write_text("base_model: m\nlearning_rate: 2e-4\nlora: {r: 4, alpha: 8}\nmax_steps: '50'\n")
    y = load_recipe(tmp_path / "r.yaml")
    assert y.learning_rate == 2e-4 and y.max_steps == 50 and y.lora == LoraRecipe(r=4, alpha=8)  # YAML 1.1 reads 2e-4 as text
    (tmp_path / "r.toml").write_text('base_model = "m"\nlearning_rate = 2e-4\nmax_steps = 50\n[lora]\nr = 4\nalpha = 8\n')
    assert load_recipe(tmp_path / "r.toml") == y
    (tmp_path / "r.json").write_text('{"base_model": "m", "learning_rate": 0.0002, "max_steps": 50, "lora": {"r": 4, "alpha": 8}}')
    assert load_recipe(tmp_path / "r.json") == y
    assert load_recipe(dump_recipe(y, tmp_path / "back.yaml")) == y
    assert recipe_hash(y) == recipe_hash(load_recipe(tmp_path / "back.yaml")) != recipe_hash(y.replace(seed=1))


def test_bad_recipes_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="learing_rate"):
        recipe_from_dict({"learing_rate": 1e-4})
    with pytest.raises(ValueError, match="max_steps"):
        recipe_from_dict({"max_steps": "many"})
    with pytest.raises(ValueError, match="unknown training method"):
        Recipe(method="rlhf")
    with pytest.raises(FileNotFoundError, match="defaults: "):
        load_recipe("no-such-recipe")
    (tmp_path / "broken.yaml").write_text("lora: {r: 4\n")
    (tmp_path / "list.yaml").write_text("- sft\n")
    (tmp_path / "folder.yaml").mkdir()
    for name, problem in (("broken", "cannot read it"), ("list", "expected a mapping of settings, got list"),
                          ("folder", "cannot read it")):  # fmt: skip
        with pytest.raises(ValueError, match=f"recipe .*{name}.yaml: {problem}"):
            load_recipe(tmp_path / f"{name}.yaml")
    assert recipe_from_dict({"lora": False}).lora is None  # TOML has no null


def test_packing_and_early_stopping_map_to_trl(tmp_path):
    cfg = trl_config(Recipe(base_model="m", packing=True, early_stopping_patience=2, eval_steps=20, extra={"dataloader_num_workers": 1}), tmp_path)
    assert cfg.packing and cfg.padding_free and cfg.assistant_only_loss
    assert cfg.load_best_model_at_end and cfg.metric_for_best_model == "eval_loss" and cfg.eval_steps == 20 == cfg.save_steps
    assert cfg.dataloader_num_workers == 1
    assert trl_config(Recipe(base_model="m"), tmp_path, has_eval=False).eval_strategy == "no"


def test_methods_are_one_table():
    # Everything method-specific is read from METHODS: the name a recipe gives, the TRL classes,
    # the dataset columns, the card's line, whether a teacher is required.
    assert set(METHODS) == {"sft", "distill", "gkd", "dpo"}
    assert METHODS["dpo"].columns == ("prompt", "chosen", "rejected") and not METHODS["dpo"].answers_chats
    assert all(METHODS[m].answers_chats for m in ("sft", "distill", "gkd"))
    assert METHODS["distill"].prepare is not None and METHODS["distill"].trainer == METHODS["sft"].trainer
    METHODS["sft"].check(Recipe(base_model="m"))
    with pytest.raises(ValueError, match="method 'gkd' needs a local teacher"):
        METHODS["gkd"].check(Recipe(base_model="m", method="gkd"))
    METHODS["gkd"].check(Recipe(base_model="m", method="gkd", teacher="t"))


def test_a_new_method_is_one_entry(tmp_path, monkeypatch):
    # KTO as a user would add it: one `Method`, nothing else edited; recipes accept the name and
    # build its TRL config with the shared fields and its own.
    kto = Method(name="kto", summary="KTO (TRL `KTOTrainer`)", config="trl:KTOConfig", trainer="trl:KTOTrainer",
                 columns=("prompt", "completion", "label"), config_args=lambda recipe, cpu: {"beta": recipe.dpo_beta})  # fmt: skip
    monkeypatch.setitem(METHODS, "kto", kto)
    cfg = trl_config(recipe_from_dict({"base_model": "m", "method": "kto", "dpo_beta": 0.3, "max_steps": 7}), tmp_path)
    assert type(cfg).__name__ == "KTOConfig" and cfg.beta == 0.3 and cfg.max_steps == 7 and cfg.use_cpu
    assert kto.trainer_class().__name__ == "KTOTrainer"


def test_coercion_errors_name_nested_fields_and_typos():
    with pytest.raises(ValueError, match=r"unknown recipe key 'learing_rate': did you mean 'learning_rate'"):
        recipe_from_dict({"learing_rate": 1e-4})
    with pytest.raises(ValueError, match=r"recipe field 'lora.r'.*'x'.*unknown recipe key 'lora.rank'"):
        recipe_from_dict({"lora": {"r": "x", "rank": 4}})
    with pytest.raises(ValueError, match=r"recipe field 'packing'.*'maybe'"):
        recipe_from_dict({"packing": "maybe"})
    with pytest.raises(ValueError, match="unknown training method 'rlhf': use one of sft, distill, gkd, dpo"):
        recipe_from_dict({"method": "rlhf"})
    r = recipe_from_dict({"packing": "true", "max_steps": "50", "lora": {"r": "4", "target_modules": ["q_proj"]}})
    assert r.packing is True and r.max_steps == 50 and r.lora == LoraRecipe(r=4, target_modules=["q_proj"])
    assert Recipe(lora={"r": 4}).lora == LoraRecipe(r=4)  # a dict in Python is read like a file's


def test_model_card_front_matter_and_content():
    from huggingface_hub import ModelCard

    from flywheel.train.card import model_card
    from flywheel.train.run import Candidate

    r = load_recipe("distill", base_model="/m/base", teacher="/m/teacher")
    c = Candidate("distill-1", "acme", "triage", "distill", "/m/base", "ds-v1", Path("/h/c"), Path("/h/c/adapter"), None, "abcd", "ready",
                  {"eval_loss": 0.123456, "global_step": 20})  # fmt: skip
    text = model_card(c, r, dataset_path="/d/v1")
    card = ModelCard(text)
    assert card.data.base_model == "/m/base" and card.data.library_name == "peft" and "lora" in card.data.tags
    assert "SFT on a teacher's answers" in text and "teacher `/m/teacher`" in text and "| eval_loss | 0.1235 |" in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("/h/c/adapter")' in text and "method: distill" in text
