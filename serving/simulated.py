"""A simulated upstream provider for the demo: an OpenAI-compatible "large model" that routes
support tickets with a known error rate, latency and price. It is labelled simulated everywhere
it appears; it exists so the demo's incumbent is a real HTTP upstream with honest, known numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time

from fastapi import FastAPI, Request

from flywheel.demo.world import QUEUES, Incumbent, true_queue


def create_app(incumbent: Incumbent = Incumbent(), *, latency_scale: float = 1.0, seed: int = 0) -> FastAPI:
    app = FastAPI(title="simulated provider (not a real model)")
    rng = random.Random(seed)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        text = " ".join(str(m.get("content") or "") for m in body.get("messages", []) if m.get("role") == "user")
        # Which tickets it gets wrong depends on the ticket alone, so a demo run is repeatable
        # however the app's concurrent calls interleave.
        draw = int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")
        truth = true_queue(text) or list(QUEUES)[draw % len(QUEUES)]
        wrong = [q for q in QUEUES if q != truth]
        answer = wrong[draw % len(wrong)] if (draw >> 16) % 10_000 < incumbent.error_rate * 10_000 else truth
        await asyncio.sleep(max(0.0, rng.gauss(incumbent.latency_ms, incumbent.latency_ms / 8)) / 1000 * latency_scale)
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in body.get("messages", [])) // 4 + 8
        return {"id": f"sim-{rng.getrandbits(48):x}", "object": "chat.completion", "created": int(time.time()),
                "model": incumbent.name, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2}}  # fmt: skip

    return app
