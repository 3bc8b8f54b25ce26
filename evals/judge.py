"""The LLM judge: any sampler, with its prompt in the spec.

Pairwise: the judge sees the candidate's and the incumbent's answers twice, once in each order.
Judges favour a position; asking both ways and calling it a tie when the two verdicts disagree
cancels that bias (a judge that always says "first" produces only ties). The candidate scores 1
(wins both ways), 0 (loses both ways) or 0.5; the incumbent's run gets the complement.

Rubric: the judge grades one answer; the first number in its reply (or after "score") divided by
`scale` (default 10), clamped to [0, 1].

Placeholders (replaced literally, so JSON braces in a prompt are safe): {question}, {reference},
{answer} (rubric), {answer_a} and {answer_b} (pairwise). The judge's verdict: `[[A]]`, `[[B]]`,
`[[tie]]`, or a reply that starts with A, B or tie.
"""

from __future__ import annotations

import re

from evals.types import Example, Messages, SamplerBase

_BRACKET = re.compile(r"\[\[\s*(A|B|tie)\s*\]\]", re.I)
_LEADING = re.compile(r"^\W*(A|B|tie)\b", re.I)
_SCORE = re.compile(r"score\D{0,10}(\d+(?:\.\d+)?)", re.I)
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


def question_text(messages: Messages) -> str:
    return "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)


def fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def parse_preference(reply: str) -> str | None:
    """'A', 'B', 'tie' or None (unreadable: counted as a tie)."""
    m = _BRACKET.search(reply) or _LEADING.search(reply.strip())
    return m.group(1).upper() if m and m.group(1).lower() != "tie" else ("tie" if m else None)


def judge_pairwise(judge: SamplerBase, prompt: str, examples: list[Example],
                   candidate: list[str], incumbent: list[str]) -> list[float]:  # fmt: skip
    """Per example, the candidate's score against the incumbent: 1, 0.5 or 0 (position-swapped)."""
    asks = []
    for ex, c, i in zip(examples, candidate, incumbent):
        q = question_text(ex.messages)
        asks.append(fill(prompt, question=q, reference=ex.expected, answer_a=c, answer_b=i))  # candidate first
        asks.append(fill(prompt, question=q, reference=ex.expected, answer_a=i, answer_b=c))  # incumbent first
    replies = judge.batch([[{"role": "user", "content": a}] for a in asks])
    scores = []
    for k in range(len(examples)):
        first = parse_preference(replies[2 * k].text)  # A is the candidate
        second = parse_preference(replies[2 * k + 1].text)  # B is the candidate
        cand_wins = first == "A" and second == "B"
        inc_wins = first == "B" and second == "A"
        scores.append(1.0 if cand_wins else 0.0 if inc_wins else 0.5)
    return scores


def parse_grade(reply: str, scale: float) -> float:
    m = _SCORE.search(reply) or _NUMBER.search(reply)
    return min(1.0, max(0.0, float(m.group(1)) / scale)) if m else 0.0


def judge_rubric(judge: SamplerBase, prompt: str, examples: list[Example], outputs: list[str],
                 scale: float = 10.0) -> list[float]:  # fmt: skip
    """Per example, the judge's grade of the output against the rubric, in [0, 1]."""
    asks = [[{"role": "user", "content": fill(prompt, question=question_text(ex.messages), reference=ex.expected, answer=o)}]
            for ex, o in zip(examples, outputs)]  # fmt: skip
    return [parse_grade(r.text, scale) for r in judge.batch(asks)]
