"""Curated versions over time: the split is sticky (what an earlier version held out, and its
sessions, prompts and near-duplicates, never reaches a later train side), the same data and
config give the same version, and the id hashes the content, not its chunking."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import timedelta

import datasets
import numpy as np
import pyarrow as pa
import pytest

from curation_data import CFG, T0, background, db_rows, fb, fill, interaction, sentence, sft_rows
from flywheel.curate.pipeline import CurationConfig, curate
from flywheel.curate.dedup import estimated_jaccard, near_duplicate_groups, sketch
from flywheel.settings import load_settings


@pytest.fixture
def settings(tmp_path):
    return load_settings(tmp_path / "data")


def test_split_is_sticky_across_versions(settings):
    """Data grows between versions; a benchmark built from the first version's eval side must
    stay clean for a model trained on the second (the contamination guard's check)."""
    from evals.contamination import training_prompt_hashes
    from evals.spec import prompt_hash

    rng = random.Random(12)
    first_rows = [dict(r, session_id=None) for r in background(rng, 60)]
    fill(settings, first_rows)
    cfg = CurationConfig(min_examples=5, eval_fraction=0.3)
    first = curate(settings, task="support", config=cfg)
    eval1 = {r["interaction_id"]: r for r in sft_rows(first, "eval")}
    train1 = {r["interaction_id"] for r in sft_rows(first, "train")}
    assert len(eval1) == 18 and first.counts["split_carried"] == 0
    # More traffic: 90 new examples whose ids all rank inside the held-out share of the split
    # hash (so a fresh split would move most old held-out examples to train), and the prompt of
    # one held-out example asked again while its first answer now has a thumbs-down (dropped:
    # only the new row carries the prompt).
    rank = lambda key: hashlib.md5(f"{cfg.seed}:{key}".encode()).hexdigest()  # noqa: E731
    cutoff = max(map(rank, eval1))
    ahead = [i for i in (f"n{k}" for k in range(2_000)) if rank(i) < cutoff][:90]
    new_rows = [interaction(i, sentence(rng, 25), sentence(rng, 20), minute=5) for i in ahead]
    asked_again = sorted(eval1)[0]
    prompt = next(r["content"] for r in eval1[asked_again]["messages"] if r["role"] == "user")
    fill(settings, new_rows + [interaction("again", prompt, sentence(rng, 20), minute=5)], [fb(asked_again, "thumbs", False)])
    second = curate(settings, task="support", config=cfg)
    side = {r["interaction_id"]: split for split in ("train", "eval") for r in sft_rows(second, split)}
    assert side["again"] == "eval" and asked_again not in side
    assert all(side[i] == "eval" for i in eval1 if i != asked_again)
    assert all(side[i] == "train" for i in train1)
    assert second.counts["split_carried"] == 60  # 17 eval + 42 train + "again"
    # The eval share is topped up from the new units: 30% of all 150 units.
    assert second.counts["eval"] == round(0.3 * second.counts["split_units"]) == 45
    trained = training_prompt_hashes(second.path)
    assert not {prompt_hash(r["messages"][:-1]) for r in eval1.values()} & trained


def test_sticky_split_follows_what_was_held_out_even_when_dropped_or_outside_the_window(settings):
    """What an earlier version held out keeps its sessions, prompts and near-duplicates on the
    eval side: when the held-out row is dropped now, and when it is outside the selected window."""
    rng = random.Random(13)
    near = {f"x{j}": sentence(rng, 80) for j in range(30)}
    answer = {x: sentence(rng, 20) for x in near}
    rows = ([interaction(x, text, answer[x], session_id=None) for x, text in near.items()]
            + [interaction(f"s{j}-1", sentence(rng, 25), sentence(rng, 20), session_id=f"S{j}") for j in range(20)]
            + [dict(r, session_id=None) for r in background(rng, 40)])  # fmt: skip
    fill(settings, rows)
    cfg = CurationConfig(min_examples=5, eval_fraction=0.3)
    first = curate(settings, task="support", config=cfg)
    held = {r["interaction_id"]: r for r in sft_rows(first, "eval")}
    prompt = {i: next(m["content"] for m in r["messages"] if m["role"] == "user") for i, r in held.items()}
    xs = sorted(i for i in held if i.startswith("x"))
    sessions = sorted(i[1:-2] for i in held if i.startswith("s"))
    others = sorted(i for i in held if i[0].isdigit())
    assert len(xs) >= 4 and len(sessions) >= 3 and len(others) >= 4
    late = T0 + timedelta(hours=2)
    new, feedback = [], []
    xs, later = xs[: len(xs) // 2], xs[len(xs) // 2 :]
    for n, x in enumerate(xs):  # a near-duplicate arrives; the held-out one is dropped now:
        words = near[x].split()
        words[40] = "edited"
        new.append(interaction(f"w-{x}", " ".join(words), answer[x], minute=130))
        if n % 2:  # displaced by the better-labelled newcomer
            feedback.append(fb(f"w-{x}", "thumbs", True, minute=131))
        else:  # or filtered out by a thumbs-down
            feedback.append(fb(x, "thumbs", False, minute=131))
    for j in sessions:  # the held-out turn gets a thumbs-down (dropped); the session goes on
        feedback.append(fb(f"s{j}-1", "thumbs", False, minute=131))
        new.append(interaction(f"s{j}-2", sentence(rng, 25), sentence(rng, 20), session_id=f"S{j}", minute=130))
    for i in others[:2]:  # corrected with an oversized answer: dropped from SFT, still a pair
        feedback.append(fb(i, "correction", "word " * 20_000, minute=131))
    for i in others[2:]:  # asked again later
        new.append(interaction(f"again-{i}", prompt[i], sentence(rng, 20), minute=130))
    fill(settings, new + background(rng, 30, start=7000, minute=130), feedback)

    second = curate(settings, task="support", config=cfg)
    side = {r["interaction_id"]: split for split in ("train", "eval") for r in sft_rows(second, split)}
    assert all(side[f"w-{x}"] == "eval" and f"{x}" not in side for x in xs)
    assert all(side[f"s{j}-2"] == "eval" and f"s{j}-1" not in side for j in sessions)
    assert all(side[f"again-{i}"] == "eval" for i in others[2:])
    pairs = datasets.load_from_disk(str(second.path / "preference"))["train"] if second.counts["preference_pairs"] else []
    assert not {p["chosen_id"] for p in pairs} & set(others[:2])
    assert second.counts["preference_eval_overlap"] >= 2
    # Only the new traffic selected: the held-out sessions, prompts and near-duplicates are
    # outside the window.
    for x in later:
        words = near[x].split()
        words[60] = "changed"
        new.append(interaction(f"v-{x}", " ".join(words), answer[x], minute=140))
    fill(settings, new[-len(later) :])
    windowed = curate(settings, task="support", config=cfg, since=late)
    side = {r["interaction_id"]: split for split in ("train", "eval") for r in sft_rows(windowed, split)}
    assert all(side[f"s{j}-2"] == "eval" for j in sessions) and all(side[f"again-{i}"] == "eval" for i in others[2:])
    assert all(side[f"v-{x}"] == "eval" for x in later) and not set(later) & set(side)


def test_sticky_split_follows_near_duplicate_chains_through_dropped_rows(settings):
    """H was held out; N1 is a near-duplicate of H and N2 of N1, but N2 is not one of H. N2 has
    a thumbs-up, so near-dedup keeps it and drops H and N1: N2 is still tied to H, through N1."""
    rng = random.Random(21)
    cfg = CurationConfig(min_examples=5, eval_fraction=0.3)
    base = {f"h{j}": (sentence(rng, 30), sentence(rng, 12)) for j in range(40)}
    fill(settings, [interaction(h, q, a) for h, (q, a) in base.items()] + [dict(r, session_id=None) for r in background(rng, 40)])
    held = {r["interaction_id"] for r in sft_rows(curate(settings, task="support", config=cfg), "eval")} & set(base)

    def edit(text: str, i: int) -> str:
        words = text.split()
        words[i] = f"edited{i}"
        return " ".join(words)

    new, feedback, chains = [], [], []
    for h in sorted(held):
        q, a = base[h]
        texts = [q, edit(q, 8), edit(edit(q, 8), 20)]
        new += [interaction(f"{h}-n1", texts[1], a, minute=130), interaction(f"{h}-n2", texts[2], a, minute=131)]
        feedback.append(fb(f"{h}-n2", "thumbs", True, minute=132))
        # Which triples chain only through N1, as curation sketches them (user text + target).
        sk = sketch([(np.arange(3), pa.array([f"{t}\n{a}".lower() for t in texts]))], 3, threshold=cfg.near_dup_threshold,
                    shingle_size=cfg.shingle_size, num_perm=cfg.num_perm, seed=cfg.seed)  # fmt: skip
        group = near_duplicate_groups(sk, np.ones(3, bool), cfg.near_dup_threshold)
        if group[0] == group[2] and estimated_jaccard(sk.sig16, np.array([0]), np.array([2]))[0] < cfg.near_dup_threshold:
            chains.append(h)
    fill(settings, new + background(rng, 30, start=7000, minute=130), feedback)
    side = {r["interaction_id"]: split for split in ("train", "eval")
            for r in sft_rows(curate(settings, task="support", config=cfg), split)}  # fmt: skip
    assert len(chains) >= 3
    assert all(side[f"{h}-n2"] == "eval" and h not in side and f"{h}-n1" not in side for h in chains)


def test_same_data_same_config_same_version(settings):
    rng = random.Random(10)
    fill(settings, background(rng, 30))
    first = curate(settings, task="support", config=CFG)
    assert first.created and first.parent_id is None
    files = {p: p.stat().st_mtime_ns for p in first.path.rglob("*")}
    again = curate(settings, task="support", config=CFG)
    assert (again.id, again.created, again.counts) == (first.id, False, first.counts)
    assert {p: p.stat().st_mtime_ns for p in first.path.rglob("*")} == files
    assert db_rows(settings, "SELECT count(*) FROM datasets") == [(1,)]
    assert db_rows(settings, "SELECT count(*) FROM dataset_interactions") == [(30,)]
    # New data → a new version whose parent is the first.
    fill(settings, background(rng, 5, start=5000))
    second = curate(settings, task="support", config=CFG)
    assert second.created and second.id != first.id and second.parent_id == first.id
    assert second.counts["kept"] == 35
    # Another config over the same data → another version.
    third = curate(settings, task="support", config=CurationConfig(min_examples=5, eval_fraction=0.2, seed=1))
    assert third.id not in (first.id, second.id)
    record = db_rows(settings, "SELECT config, query, counts FROM datasets WHERE id = ?", [third.id])[0]
    assert json.loads(record[0])["curation"]["seed"] == 1 and "FROM interactions" in record[1]
    assert json.loads(record[2]) == third.counts


def test_content_id_hashes_values_not_chunking():
    from flywheel.curate.output import content_id

    rows = [{"interaction_id": f"i{k}", "messages": [{"role": "user", "content": f"q{k}"}, {"role": "assistant", "content": "a" * k}],
             "label": None if k % 3 else "billing"} for k in range(10)]  # fmt: skip
    table = pa.Table.from_pylist(rows)
    rechunked = pa.Table.from_batches(table.slice(0, 3).to_batches() + table.slice(3).to_batches())
    sliced = pa.concat_tables([pa.Table.from_pylist(rows[:7]), pa.Table.from_pylist(rows[7:])])
    same = {content_id({"sft-train": t}, {"seed": 0}) for t in (table, rechunked, sliced, table.combine_chunks())}
    assert len(same) == 1 and next(iter(same)).startswith("ds-")
    for changed in ([dict(rows[0], label="")] + rows[1:],  # an empty label is not a missing one
                    rows[:4] + [dict(rows[4], messages=rows[4]["messages"][:1])] + rows[5:],
                    [dict(rows[0], interaction_id="i1"), dict(rows[1], interaction_id="i0")] + rows[2:]):
        assert content_id({"sft-train": pa.Table.from_pylist(changed)}, {"seed": 0}) not in same
    assert content_id({"sft-train": table}, {"seed": 1}) not in same
    empty = table.slice(0, 0)
    assert content_id({"sft-train": empty}, {}) == content_id({"sft-train": pa.Table.from_batches([], empty.schema)}, {})
