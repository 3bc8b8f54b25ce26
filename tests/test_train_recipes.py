"""Recipes as data: files ↔ `Recipe` → TRL configs and a PEFT `LoraConfig`, with errors naming the field."""

import pytest

from flywheel.recipes import (
    LoraRecipe, Recipe, available_recipes, dump_recipe, load_recipe, lora_config, recipe_from_dict, recipe_hash, trl_config,
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
    lora = lora_config(load_recipe("sft", base_model="x"))
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (16, 32, "all-linear")


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
