"""The demo's second task: a support agent that calls tools (look up, refund, re-address, escalate).

It runs beside the ticket router (flywheel.demo.world) on the same simulated support desk, so the
demo shows two experts on one base: each task gets its own LoRA adapter on SmolLM2. As there, the
ground truth is known: every request comes from a template that says which call is right (or that
none is: "irrelevance" requests, which the agent must answer without a tool), so the simulated
incumbent's mistakes are drawn at known rates (`AgentIncumbent`) and a student can be checked.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

TASK = "support-agent"
SYSTEM = "You are the support desk's agent. Call a tool when the request needs one, else answer in one sentence."
ESCALATIONS = ["complaint", "legal", "security"]


def _tool(name: str, description: str, **params: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": params, "required": list(params)}}}  # fmt: skip


# Short descriptions on purpose: the tools are rendered into every prompt (flywheel.tools), and the
# prompt's length is what a training step and a served request cost on CPU.
TOOLS = [
    _tool("lookup_order", "Order status", order_id={"type": "string"}),
    _tool("refund", "Refund an amount in USD", order_id={"type": "string"}, amount={"type": "number"}),
    _tool("update_address", "Change the delivery address", order_id={"type": "string"}, address={"type": "string"}),
    _tool("escalate", "Hand over to a human", reason={"type": "string", "enum": ESCALATIONS}),
]
TOOL_NAMES = [t["function"]["name"] for t in TOOLS]

# Request templates per right call; `None`: no tool is needed, the agent answers (the reply is the target).
# Every template has slots besides the customer number: curation drops near-duplicates (user turn
# and target, MinHash at Jaccard 0.8), so with fixed wording the requests that need no tool, and the
# escalations, came down to a few examples each (10 and 4 of 97), and the student learned to call a
# tool whatever it was asked.
REQUESTS = {
    "lookup_order": ["Where is my order {order}?", "Has order {order} shipped yet?", "What is the status of {order}?"],
    "refund": ["Please refund ${amount} on order {order}, it arrived broken.",
               "I was overcharged ${amount} for order {order}, I want it back."],
    "update_address": ["Please send order {order} to {address} instead.", "I moved: the new address for order {order} is {address}."],
    "escalate": ["I have written {times} times about order {order} now, I want to talk to a manager.",
                 "My lawyer will contact you about order {order}.",
                 "Someone changed the password of my account on {day} from {city} and it was not me."],
    None: ["What are the opening hours of your {city} shop on {day}?", "Thanks, the {item} arrived on {day} and that is all for today!",
           "Do you ship to {country}? I would like to order a {item}.", "Do you sell a {color} {item}?",
           "Can I pay for a {item} with {payment}?", "How long is the warranty on a {color} {item}?"],
}  # fmt: skip
ESCALATE_REASON = dict(zip(REQUESTS["escalate"], ESCALATIONS))
REPLIES = dict(zip(REQUESTS[None], ["Our {city} shop is open 9:00 to 17:00 on {day}.", "You are welcome, enjoy the {item}!",
                                    "Yes, we ship to {country} in 5 to 8 days.", "Yes, the {item} comes in {color}.",
                                    "Yes, we accept {payment} for every order.", "Every {item} has a two-year warranty."],
                   strict=True))  # fmt: skip
STREETS = ["Rose Street", "Mill Lane", "Harbour Road", "Elm Avenue"]
CITIES = ["Springfield", "Leeds", "Austin", "Porto"]
SLOT_VALUES = {"day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
               "country": ["Canada", "Mexico", "Japan", "Norway", "Chile", "Kenya", "Spain", "India"],
               "item": ["lamp", "kettle", "chair", "rug", "teapot", "desk", "mirror"], "city": CITIES,
               "color": ["red", "blue", "green", "black", "white", "grey"],
               "payment": ["PayPal", "a gift card", "a credit card", "bank transfer", "Apple Pay"]}  # fmt: skip
# What each slot looks like in a request's text, to read it back (`truth`); others: any words.
SLOT_PATTERNS = {"order": r"#\d+", "amount": r"[\d.]+", "times": r"\d+"}
# How often each kind of request comes: most need a tool, a fifth do not.
KIND_WEIGHTS = {"lookup_order": 3, "refund": 2, "update_address": 2, "escalate": 1, None: 2}


@dataclass(frozen=True)
class AgentIncumbent:
    """The simulated upstream model the agent uses today, with its known error rates: on a request
    that needs a call, it calls the wrong tool (`wrong_tool`) or the right one with a wrong argument
    (`wrong_argument`); on one that needs none, it calls a tool anyway (`needless_call`)."""

    name: str = "simulated-gpt-large"
    wrong_tool: float = 0.08
    wrong_argument: float = 0.10
    needless_call: float = 0.30
    latency_ms: float = 900.0
    usd_per_call: float = 0.0035

    def expected_accuracy(self) -> float:
        """The share of right answers (call accuracy) this incumbent gives on the request mix."""
        share_none = KIND_WEIGHTS[None] / sum(KIND_WEIGHTS.values())
        return (1 - share_none) * (1 - self.wrong_tool - self.wrong_argument) + share_none * (1 - self.needless_call)


def call(name: str, **arguments) -> dict:
    """A call as curation, corrections and benchmarks store it."""
    return {"name": name, "arguments": arguments}


def request(rng: random.Random) -> tuple[str, list[dict], str | None]:
    """(request text, the right calls (none for an irrelevance request), the reply when no call)."""
    kind = rng.choices(list(KIND_WEIGHTS), weights=list(KIND_WEIGHTS.values()))[0]
    template = rng.choice(REQUESTS[kind])
    slots = {"order": f"#{rng.randint(10000, 99999)}", "amount": rng.choice([12.5, 19.99, 25, 40, 49.99, 80]),
             "address": f"{rng.randint(2, 99)} {rng.choice(STREETS)}, {rng.choice(CITIES)}", "times": rng.randint(2, 9),
             **{name: rng.choice(values) for name, values in SLOT_VALUES.items()}}  # fmt: skip
    # A customer number opens each request, as a ticket number does in the router's: real requests
    # are unique (and identical ones would be deduplicated by curation, or all drawn wrong at once).
    text = f"Customer {rng.randint(100_000, 999_999)}: " + template.format(**slots)
    return (text, *_answer(kind, template, slots))


def _answer(kind: str | None, template: str, slots: dict) -> tuple[list[dict], str | None]:
    """(the right calls, the reply when no call) for a request made from `template` with `slots`."""
    if kind is None:
        return [], REPLIES[template].format(**slots)
    if kind == "escalate":
        return [call(kind, reason=ESCALATE_REASON[template])], None
    args = {"order_id": slots["order"]}
    if kind == "refund":
        args["amount"] = slots["amount"]
    if kind == "update_address":
        args["address"] = slots["address"]
    return [call(kind, **args)], None


def slots_of(template: str, text: str) -> dict | None:
    """The slot values of request `text` when it was made from `template` (amounts as numbers), else None."""
    parts = re.split(r"\{(\w+)\}", template)  # text, slot, text, slot, ..., text
    pattern = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{SLOT_PATTERNS.get(part, '.+?')})"
                      for i, part in enumerate(parts))  # fmt: skip
    m = re.fullmatch(r"(?:Customer \d+: )?" + pattern, text.strip())
    if m is None:
        return None
    slots = m.groupdict()
    if "amount" in slots:
        slots["amount"] = float(slots["amount"]) if "." in slots["amount"] else int(slots["amount"])
    return slots


def truth(text: str) -> tuple[list[dict], str | None]:
    """The right calls (and reply) for a request of ours, read back from its text (what the
    simulated provider knows); unknown text: no call, no reply."""
    for kind, templates in REQUESTS.items():
        for template in templates:
            if (slots := slots_of(template, text)) is not None:
                return _answer(kind, template, slots)
    return [], None


def incumbent_answer(text: str, incumbent: AgentIncumbent = AgentIncumbent(), *, seed: int = 0) -> tuple[list[dict], str | None]:
    """What the simulated incumbent answers: the truth, or one of its known mistakes. Which
    requests it gets wrong depends on the text alone, so a run is repeatable however calls interleave."""
    want, reply = truth(text)
    draw = int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big")
    roll, pick = (draw % 10_000) / 10_000, draw >> 16
    if not want:
        if roll < incumbent.needless_call:
            return [call("lookup_order", order_id=f"#{10000 + pick % 90000}")], None
        return [], reply or "Sorry, I cannot help with that."
    name, args = want[0]["name"], dict(want[0]["arguments"])
    if roll < incumbent.wrong_tool:
        other = [n for n in TOOL_NAMES if n != name]
        name = other[pick % len(other)]
        args = {"reason": ESCALATIONS[pick % 3]} if name == "escalate" else {"order_id": args.get("order_id", "#00000")}
        if name == "refund":
            args["amount"] = 10
        if name == "update_address":
            args["address"] = "unknown"
        return [call(name, **args)], None
    if roll < incumbent.wrong_tool + incumbent.wrong_argument:
        key = sorted(args)[pick % len(args)]
        args[key] = _wrong(key, args[key], pick)
    return [call(name, **args)], None


def _wrong(key: str, value, pick: int):
    """A plausible wrong value: a digit slip in an order number, another amount, city or reason."""
    if key == "order_id":
        return value[:-1] + str((int(value[-1]) + 1 + pick % 8) % 10)
    if key == "amount":
        return round(value * 10, 2) if pick % 2 else round(value + 1, 2)
    if key == "address":
        return value.rsplit(", ", 1)[0] + ", " + next(c for c in CITIES if c not in value)
    return next(r for r in ESCALATIONS if r != value)


def right(calls: list[dict], want: list[dict]) -> bool:
    """The call-accuracy rule the demo's live figure uses (the benchmark's is evals' typed match)."""
    from evals.metrics import args_match, tool_calls_of

    got, expected = tool_calls_of("", calls), tool_calls_of("", want)
    return len(got) == len(expected) and all(
        g[0] == w[0] and isinstance(g[1], dict) and args_match(g[1], w[1], typed=True) for g, w in zip(got, expected))


def golden(n: int, *, seed: int = 20_000) -> list[dict]:
    """The agent's hand-checked benchmark (simulated: labelled by the ground truth): each line
    offers the tools and expects the right calls, or none and a reply."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text, want, reply = request(rng)
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
        target = {"role": "assistant", "content": reply or ""}
        rows.append({"id": f"agent-golden-{i}", "messages": [*prompt, target], "tools": TOOLS, "expected_tool_calls": want})
    return rows


def user_feedback(rng: random.Random, interaction_id: str, want: list[dict], reply: str | None,
                  calls: list[dict]) -> dict | None:  # fmt: skip
    """What a simulated reviewer says about one answer: half of the wrong ones get the right
    call (or reply) as a correction, a fifth a thumb down; 30% of the right ones a thumb up."""
    roll, ok = rng.random(), right(calls, want)
    if not ok and roll < 0.5:
        value = want if want else reply
        return {"interaction_id": interaction_id, "kind": "correction", "value": value, "comment": "reviewer fixed the call"}
    if roll < (0.7 if not ok else 0.3):
        return {"interaction_id": interaction_id, "kind": "thumbs", "value": ok}
    return None
