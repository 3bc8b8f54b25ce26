"""`kind = "vllm"`: a vLLM server, i.e. an upstream that also loads LoRA adapters at runtime.

Calls are proxied as for any upstream; adapter loads and unloads are forwarded to vLLM's own
`/load_lora_adapter` and `/unload_lora_adapter` (the server runs with `--enable-lora` and
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), so promotion is the same on a GPU tier as on our engine.
"""

from __future__ import annotations

from pathlib import Path

from serving.backends.upstream import UpstreamBackend, send
from serving.errors import ApiError
from serving.model_check import ModelLoadError, is_adapter

_ALREADY = ("has already been loaded", "is already a model name")  # vLLM's answer, then ours (a Flywheel upstream)


class VllmBackend(UpstreamBackend):
    holds_adapters = True

    async def load_adapter(self, name: str, path: str) -> None:
        if Path(path).is_dir() and not is_adapter(path):  # (the folder may live on the vLLM machine only)
            raise ModelLoadError(f"{path}: a whole model; a vllm route loads only LoRA adapters at runtime "
                                 "(serve the model as a route of its own)")  # fmt: skip
        try:
            await self._forward("/load_lora_adapter", {"lora_name": name, "lora_path": path})
        except ApiError as exc:  # vLLM kept it while we restarted: it is loaded, as asked
            if exc.status != 400 or f"'{name}'" not in exc.message or not any(a in exc.message for a in _ALREADY):
                raise

    async def unload_adapter(self, name: str) -> None:
        await self._forward("/unload_lora_adapter", {"lora_name": name})

    async def _forward(self, path: str, body: dict) -> None:
        response = await send(self.http, self.route, path, body)
        if response.status_code >= 400:
            raise ApiError(response.status_code, f"{self.name}: {response.text[:500]}", code="adapter_error")
