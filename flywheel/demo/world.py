"""A simulated product for the demo and the benchmarks: a support desk that routes tickets.

The incumbent "large model" is simulated (and labelled so): it answers with a known error rate,
latency and price, and simulated users give feedback on part of its answers (thumbs, and
agents' corrections of wrong routes). The point is an honest loop: the ground truth is known,
so a curated dataset and a trained student can be checked against it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASK = "support-triage"
SYSTEM = "Route the support ticket to one queue: billing, shipping, account, technical or refund. Answer with the queue name."
QUEUES = {
    "billing": ["I was charged twice for my {plan} plan", "my invoice for {month} shows the wrong amount",
                "why did my card get billed on {month} {day}", "please update the VAT number on my invoices"],
    "shipping": ["my parcel {order} has not arrived yet", "the courier says {order} was delivered but it was not",
                 "can you ship order {order} to a different address", "tracking for {order} is stuck since {month} {day}"],
    "account": ["I cannot log in to my account", "please change the e-mail on my account",
                "how do I delete my account and my data", "my password reset link has expired"],
    "technical": ["the app crashes when I open the {plan} dashboard", "error 500 when I export my reports",
                  "the sync has been failing since the {month} update", "the page is blank on my phone"],
    "refund": ["I want my money back for order {order}", "please refund the {plan} plan, I cancelled on {month} {day}",
               "the item in {order} is broken, I want a refund", "how long does a refund to my card take"],
}  # fmt: skip
PLANS = ["Basic", "Pro", "Team", "Enterprise"]
MONTHS = ["January", "March", "May", "July", "September", "November"]
CONTACTS = ["You can reach me at {name}@example.com", "Call me on +1 415 555 {four}", "", "", "", ""]


@dataclass(frozen=True)
class Incumbent:
    """The simulated upstream model the product uses today."""

    name: str = "simulated-gpt-large"
    error_rate: float = 0.18
    latency_ms: float = 850.0
    usd_per_call: float = 0.0021


def ticket(rng: random.Random) -> tuple[str, str]:
    """(ticket text, true queue); a random ticket number makes texts unique, as real tickets are."""
    number = rng.randint(1_000_000, 9_999_999)
    queue = rng.choice(list(QUEUES))
    text = rng.choice(QUEUES[queue]).format(
        plan=rng.choice(PLANS), month=rng.choice(MONTHS), day=rng.randint(1, 28), order=f"#{rng.randint(10000, 99999)}"
    )
    contact = rng.choice(CONTACTS).format(name=rng.choice(["ana", "li.wei", "sam"]), four=rng.randint(1000, 9999))
    return f"Ticket T{number}: {text}." + (f" {contact}" if contact else ""), queue


def true_queue(text: str) -> str | None:
    """The queue a ticket of ours belongs to (what a perfect router answers)."""
    for queue, templates in QUEUES.items():
        for template in templates:
            if template.split("{")[0] and template.split("{")[0] in text:
                return queue
    return None


def golden(n: int, *, seed: int = 10_000) -> list[dict]:
    """A hand-labelled benchmark set (simulated: labelled by the simulator's ground truth), built
    like a real one from stored tickets, so PII is already redacted."""
    from flywheel.ingest.pii import redact

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text, queue = ticket(rng)
        text = redact(text)[0]
        rows.append({"id": f"golden-{i}", "messages": [{"role": "system", "content": SYSTEM},
                     {"role": "user", "content": text}, {"role": "assistant", "content": queue}]})  # fmt: skip
    return rows


def traffic(n: int, *, seed: int = 0, incumbent: Incumbent = Incumbent(), start: int = 0) -> tuple[list[dict], list[dict]]:
    """`n` interactions as an app would send them, and the feedback its users would give."""
    rng = random.Random(seed)
    interactions, feedback = [], []
    for i in range(start, start + n):
        text, truth = ticket(rng)
        wrong = rng.random() < incumbent.error_rate
        answer = rng.choice([q for q in QUEUES if q != truth]) if wrong else truth
        iid = f"sim-{seed}-{i}"
        interactions.append({
            "id": iid, "task": TASK, "model": incumbent.name,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
            "response": answer, "latency_ms": round(rng.gauss(incumbent.latency_ms, 120), 1),
            "prompt_tokens": 40 + len(text) // 4, "completion_tokens": 2, "cost_usd": incumbent.usd_per_call,
            "user_id": f"user-{rng.randint(1, 400)}", "session_id": f"session-{i // 3}",
            "metadata": {"simulated": True, "true_queue": truth},
        })  # fmt: skip
        item = user_feedback(rng, iid, truth, answer)
        if item:
            feedback.append(item)
    return interactions, feedback


def user_feedback(rng: random.Random, interaction_id: str, truth: str, answer: str) -> dict | None:
    """What a simulated user or agent says about one answer: half of the wrong routes get
    corrected by an agent, a fifth get a thumb down; 30% of the right ones get a thumb up."""
    roll, right = rng.random(), answer.strip() == truth
    if not right and roll < 0.5:
        return {"interaction_id": interaction_id, "kind": "correction", "value": truth, "comment": "agent re-routed"}
    if roll < (0.7 if not right else 0.3):
        return {"interaction_id": interaction_id, "kind": "thumbs", "value": right}
    return None
