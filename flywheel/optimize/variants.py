"""Variants in the registry: an option of a task's model, registered, and applied to production.

A variant is registered in the `models` table like a candidate (method `serving-option`, its folder
`<home>/models/<task>/<id>/` as `merged_path`, the model it was made from and the option as its
recipe: its lineage, with the dataset of its trained draft or cut when it has one,
flywheel.optimize.draft and flywheel.optimize.draft_model), before the serving tier loads it: the
folder is then one the task's project may load (serving.adapters confines `lora_path` to its
project's candidates' folders).

Applying one loads it first, and only then moves the task's `production` alias, with action
`optimize` and the search's evidence in the deployment history. So the pick is in effect after a
restart (serving.restore loads whatever an alias points at), and `flywheel rollback` gives
production back to the model that served before, as it does after a promotion.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from flywheel import store
from flywheel.optimize.draft import write_draft
from flywheel.optimize.draft_model import CUT_DIR, DRAFT_DIR, LAYERS, build_draft_model, lineage_of
from flywheel.optimize.options import ServingOption, variant_id, write_variant
from flywheel.registry import deployments
from flywheel.registry.promotion import load_first
from flywheel.settings import Settings

METHOD = "serving-option"  # models.method of a variant


def prepare_variant(settings: Settings, *, task: str, parent: str, source: str, option: ServingOption) -> tuple[str, str]:
    """(model id, folder) to load `parent` served as `option`: the parent itself for the default
    option; else a variant, written and registered (once) with the parent's project and lineage."""
    if option.is_default:
        return parent, source
    model = variant_id(parent, option)
    folder = write_variant(settings.home / "models" / task / model, option, source, parent)
    lineage = {"parent": parent, "option": option.to_dict()}
    if option.layers is not None:  # the model it serves: the parent cut to its first layers, trained on its answers
        lineage["cut"] = _first_layers(settings, folder, task, parent, source, CUT_DIR, option.layers)
    if option.speculative == "table":  # its trained draft, from the answers the parent was trained on
        lineage["draft"] = _draft(settings, folder, parent, source)
    elif option.speculative == "model":  # its trained draft model, from the same answers
        lineage["draft"] = _first_layers(settings, folder, task, parent, source, DRAFT_DIR, LAYERS)
    recipe = json.dumps(lineage, sort_keys=True)
    with store.connect(settings.db_path) as con:
        con.execute(
            "INSERT INTO models (id, project, task, base_model, method, dataset_id, merged_path, recipe, recipe_hash,"
            " status) SELECT ?, project, ?, base_model, ?, dataset_id, ?, ?, ?, 'ready' FROM models"
            " WHERE id = ? AND NOT EXISTS (SELECT 1 FROM models WHERE id = ?)",
            [model, task, METHOD, str(folder), recipe, hashlib.sha256(recipe.encode()).hexdigest()[:16], parent,
             model])  # fmt: skip
    return model, str(folder)


def _draft(settings: Settings, folder: Path, parent: str, source: str) -> dict:
    base, dataset_id, dataset_path = _training_data(settings, parent, "speculative: table")
    tokenizer = source if (Path(source) / "tokenizer_config.json").exists() else base
    return write_draft(folder, tokenizer, dataset_path, dataset_id)


def _first_layers(settings: Settings, folder: Path, task: str, parent: str, source: str, sub: str,
                  layers: int) -> dict:  # fmt: skip
    """The lineage of `folder/<sub>` (its draft model, or its cut): `parent`'s first `layers` layers, built
    unless it or another variant of `parent` has them already (they depend on the parent and the number
    alone: the other's files are hard-linked, not trained again)."""
    from transformers import AutoConfig

    built = lineage_of(folder, sub)
    if built is not None:
        return built
    field = "layers" if sub == CUT_DIR else "speculative: model"
    base, dataset_id, dataset_path = _training_data(settings, parent, field)
    total = AutoConfig.from_pretrained(base).num_hidden_layers
    if sub == CUT_DIR and layers >= total:  # (it would be the whole model, trained again)
        raise ValueError(f"layers: {layers} is not fewer than the {total} layers of {parent!r}")
    layers = min(layers, total)  # (a draft of a model with fewer layers than LAYERS keeps them all)
    for other in sorted((settings.home / "models" / task).glob(glob.escape(parent) + "@*")):
        if other == folder:
            continue
        for other_sub in (DRAFT_DIR, CUT_DIR):
            found = lineage_of(other, other_sub)
            if found is not None and found.get("layers") == layers:
                shutil.rmtree(folder / sub, ignore_errors=True)  # (a build that did not finish)
                shutil.copytree(other / other_sub, folder / sub, copy_function=os.link)
                return lineage_of(folder, sub)
    return build_draft_model(folder, base=base, source=source, dataset_path=dataset_path, dataset_id=dataset_id,
                             parent=parent, layers=layers, folder=sub)  # fmt: skip


def _training_data(settings: Settings, parent: str, field: str) -> tuple[str, str, str]:
    """(base model, dataset id, dataset folder) `parent` was trained from, which its drafts and cuts learn from."""
    with store.connect(settings.db_path, read_only=True) as con:
        row = con.execute("SELECT m.base_model, d.id, d.path FROM models m LEFT JOIN datasets d ON d.id = m.dataset_id"
                          " WHERE m.id = ?", [parent]).fetchone()  # fmt: skip
    if row is None or row[2] is None:
        raise ValueError(f"{field}: {parent!r} has no training dataset to learn from")
    return row


def apply_option(settings: Settings, *, project: str, task: str, model: str, path: str, reason: str, evidence: dict,
                 load: Callable[[str, str], None]) -> deployments.Deployment:  # fmt: skip
    """Serve `task`'s production from `model` (a prepared variant, or the parent itself), loaded first."""
    load_first(load, model, path)
    with store.connect(settings.db_path) as con:
        return deployments.assign(con, project=project, task=task, alias="production", model=model, reason=reason,
                                  evidence=evidence, action="optimize")  # fmt: skip
