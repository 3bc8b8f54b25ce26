"""A simulated upstream provider for the demo: an OpenAI-compatible "large model" that routes
support tickets with a known error rate, latency and price, and, offered `tools`, acts as the
support agent (flywheel.demo.agent) with known rates of a wrong tool, a wrong argument and a call
when none was needed. It is labelled simulated everywhere it appears; it exists so the demo's
incumbents are a real HTTP upstream with honest, known numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time

from fastapi import FastAPI, Request

from flywheel.demo.agent import AgentIncumbent, incumbent_answer
from flywheel.demo.world import QUEUES, Incumbent, true_queue


def create_app(incumbent: Incumbent | None = None, *, agent: AgentIncumbent | None = None,
               latency_scale: float = 1.0, seed: int = 0) -> FastAPI:  # fmt: skip
    """The provider; `incumbent` routes tickets, `agent` calls tools (both: the defaults' rates)."""
    incumbent, agent = incumbent or Incumbent(), agent or AgentIncumbent()
    app = FastAPI(title="simulated provider (not a real model)")
    rng = random.Random(seed)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        text = " ".join(str(m.get("content") or "") for m in body.get("messages", []) if m.get("role") == "user")
        message, finish, latency_ms, completion_tokens = {"role": "assistant", "content": None}, "stop", agent.latency_ms, 2
        if body.get("tools"):  # the support agent
            calls, reply = incumbent_answer(text, agent, seed=seed)
            if calls:
                message["tool_calls"] = [{"id": f"call_{rng.getrandbits(48):x}", "type": "function", "function": {
                    "name": c["name"], "arguments": json.dumps(c["arguments"])}} for c in calls]  # fmt: skip
                finish = "tool_calls"
            else:
                message["content"] = reply
            completion_tokens = len(json.dumps(calls or reply)) // 4 + 1
        else:  # the ticket router
            # Which tickets it gets wrong depends on the ticket alone, so a demo run is repeatable
            # however the app's concurrent calls interleave.
            draw = int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")
            truth = true_queue(text) or list(QUEUES)[draw % len(QUEUES)]
            wrong = [q for q in QUEUES if q != truth]
            message["content"] = wrong[draw % len(wrong)] if (draw >> 16) % 10_000 < incumbent.error_rate * 10_000 else truth
            latency_ms = incumbent.latency_ms
        await asyncio.sleep(max(0.0, rng.gauss(latency_ms, latency_ms / 8)) / 1000 * latency_scale)
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in body.get("messages", [])) // 4 + 8
        prompt_tokens += len(json.dumps(body.get("tools") or [])) // 4
        return {"id": f"sim-{rng.getrandbits(48):x}", "object": "chat.completion", "created": int(time.time()),
                "model": incumbent.name, "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}  # fmt: skip

    return app
