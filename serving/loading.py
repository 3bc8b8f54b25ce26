"""The engine's models: loading and unloading LoRA adapters, whole models and variants at runtime.

Part of serving.engine.Engine (it inherits `Loading`), kept apart because it is about folders and
their checks, not decoding. These methods run in the engine thread, between two decoding steps
(the engine's `_run_admin`), so a load or an unload never races a forward pass. Each folder is
checked first (serving.model_check), so a wrong folder is refused before the model changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flywheel.optimize.options import is_variant
from serving.model_check import (
    ModelLoadError,
    check_adapter_base,
    check_folder,
    check_shapes,
    check_whole_model,
    is_adapter,
    read_adapter,
)

log = logging.getLogger("flywheel.engine")


class Loading:
    """Expects the engine's `model`, `path`, `route`, `home`, `device`, `adapters`, `full_models`,
    `variants` and `prefixes`."""

    def check_adapter(self, path: str) -> None:
        """Raise `ModelLoadError` unless the LoRA adapter at `path` belongs on this route's base."""
        config, shapes = read_adapter(path)
        check_adapter_base(path, config, self.route, self.path, self.home)
        if shapes is not None:
            base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
            check_shapes(path, config, shapes, base, self.route, self.path, self.home)

    def whole_model(self, path: str, dtype) -> object:
        """The whole model at `path` (checked first) in `dtype`, on our device; it must share our vocabulary."""
        from transformers import AutoModelForCausalLM

        check_whole_model(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        if model.config.vocab_size != self.model.config.vocab_size:
            raise ModelLoadError(f"{path} has another vocabulary ({model.config.vocab_size} tokens) than route "
                                 f"{self.route!r}'s base model {self.path!r} ({self.model.config.vocab_size})")  # fmt: skip
        return model

    def _load(self, name: str, path: str) -> None:
        """A variant folder (`serving.json`) is built by serving.variants; a folder with
        `adapter_config.json` is a LoRA adapter on our base; any other folder is a whole small model
        (e.g. a fully fine-tuned student), served side by side."""
        if name in self.adapters:
            raise ValueError(f"lora_name: adapter {name!r} is already loaded")
        if is_variant(check_folder(path)):
            self.full_models[name] = self._guarded(name, path, lambda: self.variants.load(self, name, path))
        elif is_adapter(path):
            self.check_adapter(path)
            self._guarded(name, path, lambda: self._load_adapter(name, path))
        else:
            self.full_models[name] = self._guarded(name, path, lambda: self.whole_model(path, self.model.dtype))
        self.adapters[name] = path

    def _guarded(self, name: str, path: str, load: Callable[[], object]) -> object:
        """`load()`; whatever the libraries raise becomes a `ModelLoadError` naming the folder."""
        try:
            return load()
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt file raises anything; the caller gets a 4xx
            if name in getattr(self.model, "peft_config", {}):  # a half-loaded adapter goes again
                try:
                    self.model.delete_adapter(name)
                except Exception:  # noqa: BLE001 - best effort; the load already failed
                    log.warning("could not remove the half-loaded adapter %r", name)
            raise ModelLoadError(f"{path}: cannot load: {type(exc).__name__}: {exc}") from None

    def _load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()

    def _unload(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(f"lora_name: no adapter {name!r} is loaded")
        self.variants.forget(name)
        self.prefixes.forget(name)  # (a model loaded later under this name has other keys and values)
        if self.full_models.pop(name, None) is None:
            remaining = [n for n in self.model.peft_config if n != name]
            if not remaining:  # the last one: back to the plain base (PEFT would keep pointing at it)
                self.model = self.model.unload().eval()
            else:
                if name in self.model.active_adapters:  # a loaded adapter must stay active for the next load
                    self.model.set_adapter(remaining[0])
                self.model.delete_adapter(name)
        del self.adapters[name]
