"""Variants in the registry: an option of a task's model, registered, and applied to production.

A variant is registered in the `models` table like a candidate (method `serving-option`, its folder
`<home>/models/<task>/<id>/` as `merged_path`, the model it was made from and the option as its
recipe: its lineage), before the serving tier loads it: the folder is then one the task's project
may load (serving.adapters confines `lora_path` to its project's candidates' folders).

Applying one loads it first, and only then moves the task's `production` alias, with action
`optimize` and the search's evidence in the deployment history. So the pick is in effect after a
restart (serving.restore loads whatever an alias points at), and `flywheel rollback` gives
production back to the model that served before, as it does after a promotion.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from flywheel import store
from flywheel.optimize.options import ServingOption, variant_id, write_variant
from flywheel.registry import deployments
from flywheel.registry.promotion import PromotionError
from flywheel.settings import Settings

METHOD = "serving-option"  # models.method of a variant


def prepare_variant(settings: Settings, *, task: str, parent: str, source: str, option: ServingOption) -> tuple[str, str]:
    """(model id, folder) to load `parent` served as `option`: the parent itself for the default
    option; else a variant, written and registered (once) with the parent's project and lineage."""
    if option.is_default:
        return parent, source
    model = variant_id(parent, option)
    folder = write_variant(settings.home / "models" / task / model, option, source, parent)
    recipe = json.dumps({"parent": parent, "option": option.to_dict()}, sort_keys=True)
    with store.connect(settings.db_path) as con:
        con.execute(
            "INSERT INTO models (id, project, task, base_model, method, dataset_id, merged_path, recipe, recipe_hash,"
            " status) SELECT ?, project, ?, base_model, ?, dataset_id, ?, ?, ?, 'ready' FROM models"
            " WHERE id = ? AND NOT EXISTS (SELECT 1 FROM models WHERE id = ?)",
            [model, task, METHOD, str(folder), recipe, hashlib.sha256(recipe.encode()).hexdigest()[:16], parent,
             model])  # fmt: skip
    return model, str(folder)


def apply_option(settings: Settings, *, project: str, task: str, model: str, path: str, reason: str, evidence: dict,
                 load: Callable[[str, str], None]) -> deployments.Deployment:  # fmt: skip
    """Serve `task`'s production from `model` (a prepared variant, or the parent itself), loaded first."""
    try:
        load(model, path)  # first: if the serving tier cannot load it, no alias moves
    except PromotionError:
        raise
    except Exception as exc:
        raise PromotionError(f"loading {model!r} failed: {exc}") from exc
    with store.connect(settings.db_path) as con:
        return deployments.assign(con, project=project, task=task, alias="production", model=model, reason=reason,
                                  evidence=evidence, action="optimize")  # fmt: skip
