"""Promotion and rollback: a model serves a task only when the gate says so, and the previous
production is one command away.

The gate itself lives in `flywheel.registry.gate` (re-exported here: callers import `decide`,
`Decision`, `Evidence` and `GateConfig` from this module too); its decision and evidence are
stored with every outcome, refusals included. Promotion is atomic: the serving tier loads the
model first (through the vLLM-style admin API our gateway and vLLM share), and only then does
the alias move; if loading fails, nothing moves. When the gate sets `canary_share`, a passing
candidate takes `TASK:canary` instead, and `flywheel.registry.canary.settle` finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from flywheel import store
from flywheel.registry import deployments
from flywheel.registry.gate import QUALITY_RULES, Decision, Evidence, GateConfig, decide
from flywheel.registry.models import candidate
from flywheel.settings import Settings

__all__ = ["QUALITY_RULES", "Decision", "Evidence", "GateConfig", "PromotionError", "decide", "http_loader",
           "http_unloader", "load_first", "promote", "rollback"]  # fmt: skip


class PromotionError(RuntimeError):
    """The candidate could not be put in service; no alias moved."""


# What the serving tier answers when the model is loaded already (ours, then vLLM's).
_ALREADY_LOADED = ("is already loaded", "is already a model name", "has already been loaded")


def http_loader(base_url: str, api_key: str, route: str | None = None) -> Callable[[str, str], None]:
    """Load a model into a running Flywheel gateway or vLLM server through its admin API."""

    def load(name: str, path: str) -> None:
        body = {"lora_name": name, "lora_path": path, **({"route": route} if route else {})}
        try:
            r = httpx.post(f"{base_url.rstrip('/')}/v1/load_lora_adapter", json=body,
                           headers={"Authorization": f"Bearer {api_key}"}, timeout=300)  # fmt: skip
        except httpx.HTTPError as exc:
            raise PromotionError(f"the serving tier at {base_url} is unreachable: {exc}") from exc
        already = f"'{name}'" in r.text and any(answer in r.text for answer in _ALREADY_LOADED)
        if r.status_code != 200 and not already:
            raise PromotionError(f"the serving tier refused to load {name!r}: {r.status_code} {r.text[:300]}")

    return load


def http_unloader(base_url: str, api_key: str) -> Callable[[str], None]:
    """Unload a model from a running Flywheel gateway or vLLM server (tidying: a failure changes
    nothing that serves, so it is not an error)."""

    def unload(name: str) -> None:
        try:
            httpx.post(f"{base_url.rstrip('/')}/v1/unload_lora_adapter", json={"lora_name": name},
                       headers={"Authorization": f"Bearer {api_key}"}, timeout=60)  # fmt: skip
        except httpx.HTTPError:
            pass

    return unload


def load_first(load: Callable[[str, str], None], name: str, path: str) -> None:
    """Load `name` into the serving tier before any alias moves to it: whatever the loader raises becomes
    a `PromotionError` naming the model, so a failed load leaves production as it was."""
    try:
        load(name, path)
    except PromotionError:
        raise
    except Exception as exc:
        raise PromotionError(f"loading {name!r} failed: {exc}") from exc


def promote(settings: Settings, *, project: str, task: str, model: str, path: str, decision: Decision,
            load: Callable[[str, str], None], alias: str = "production", share: float = 1.0) -> deployments.Deployment | None:
    """Put `model` in service under `alias` if the gate said so; store the decision either way.
    Returns the new deployment, or None when the gate refused.

    A passing decision with a `canary_share` (from the gate config) turns a `production` promotion
    into a canary at that share, when there is a production model to compare it with and it is
    not that model already (a reload stays a reload)."""
    if not decision.promote:
        with store.connect(settings.db_path) as con:
            deployments.record_decision(con, project=project, task=task, model=model, reason=decision.summary(),
                                        evidence=decision.evidence)  # fmt: skip
        return None
    load_first(load, model, path)
    reason = decision.summary()
    with store.connect(settings.db_path) as con:  # (one open: production is read where the alias moves)
        if decision.canary_share is not None and alias == "production":
            current = deployments.holder(con, project=project, task=task)
            if current is None:
                reason += "; no production model to run a canary against: straight to production"
            elif current != model:
                alias, share = "canary", decision.canary_share
                reason += f"; canary for {share:.0%} of users until `flywheel settle` decides from live feedback"
        return deployments.assign(con, project=project, task=task, alias=alias, model=model, share=share,
                                  reason=reason, evidence=decision.evidence)  # fmt: skip


def rollback(settings: Settings, *, project: str, task: str, reason: str = "manual rollback",
             load: Callable[[str, str], None] | None = None) -> deployments.Deployment:
    """Give `production` back to the model that held it before the last change (a promotion of
    the model already in production, e.g. to reload it, is no change).

    With `load` (e.g. `http_loader`), the previous model is loaded into the serving tier first, as
    `promote` does (a restart since may have dropped it; loading one that is loaded is a no-op), and
    the alias moves only when that worked. A route name or an adapter of flywheel.toml needs no load."""
    with store.connect(settings.db_path) as con:
        last = _last_production_change(con, project, task)
        target = last["previous_model"]
        record = candidate(con, target)
    if load is not None and record is not None and record.path:
        load_first(load, target, record.path)
    with store.connect(settings.db_path) as con:
        if _last_production_change(con, project, task) != last:  # (a promotion while the model loaded)
            raise PromotionError(f"task {task!r} changed production while {target!r} was loading; run the rollback again")
        return deployments.assign(con, project=project, task=task, alias="production", model=target,
                                  reason=reason, action="rollback",
                                  evidence={"rolled_back": last["model"]})  # fmt: skip


def _last_production_change(con: store.Connection, project: str, task: str) -> dict:
    events = [e for e in deployments.history(con, project=project, task=task)
              if e["alias"] == "production" and e["action"] in ("promote", "rollback", "optimize")
              and e["model"] != e["previous_model"]]  # fmt: skip
    if not events or events[-1]["previous_model"] is None:
        raise PromotionError(f"task {task!r} has no previous production model to roll back to")
    return events[-1]
