"""Duplicate detection on its own: exact keys ignore case/punctuation/spacing only, the MinHash
estimate tracks the true Jaccard similarity, and LSH finds planted near-duplicates (each bucket
member linked to its lowest row)."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa

from flywheel.curate.dedup import candidate_pairs, near_duplicate_groups, sketch

WORDS = [f"w{i}" for i in range(2000)]


def _sketch(texts: list[str], threshold: float = 0.8, **kw):
    return sketch([(np.arange(len(texts)), pa.array(texts))], len(texts), threshold=threshold, **kw)


def _shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = text.split()
    return {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}


def test_exact_key_ignores_case_punctuation_and_spacing_only():
    texts = ["where is my order 123", "where is my order 123", "Where, is my order 123?!",
             "where   is\tmy\norder (123)", "where is my order 124", "where is order my 123", "", "?!"]  # fmt: skip
    sk = _sketch([t.lower() for t in texts])
    assert sk.exact[0] == sk.exact[1] == sk.exact[2] == sk.exact[3]
    assert len({int(sk.exact[i]) for i in (0, 4, 5)}) == 3  # a changed word, a changed order
    assert sk.valid.tolist() == [True] * 6 + [False, False]  # no words: nothing to compare
    assert (sk.sig16[6] == 0).all()


def test_minhash_estimate_tracks_true_jaccard():
    rng = random.Random(0)
    errors = []
    for _ in range(200):
        base = [rng.choice(WORDS) for _ in range(rng.randint(30, 120))]
        other = list(base)
        for _ in range(rng.randint(0, 25)):  # change some words in place
            other[rng.randrange(len(other))] = rng.choice(WORDS)
        a, b = " ".join(base), " ".join(other)
        sa, sb = _shingles(a), _shingles(b)
        true = len(sa & sb) / len(sa | sb)
        sk = _sketch([a, b], num_perm=128)
        errors.append((sk.sig16[0] == sk.sig16[1]).mean() - true)
    errors = np.abs(errors)
    assert np.median(errors) < 0.04 and errors.max() < 0.2, (np.median(errors), errors.max())


def test_lsh_finds_planted_near_duplicates_and_nothing_else():
    rng = random.Random(1)
    texts, twin = [], {}
    for i in range(3000):
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 80))]
        texts.append(" ".join(words))
        if i % 10 == 0:  # plant a near-duplicate: one word changed (Jaccard ≈ 0.9)
            words[rng.randrange(len(words))] = "changed"
            twin[len(texts)] = len(texts) - 1
            texts.append(" ".join(words))
    sk = _sketch(texts)
    groups = near_duplicate_groups(sk, np.ones(len(texts), bool), 0.8)
    found = sum(groups[a] == groups[b] for a, b in twin.items())
    assert found / len(twin) >= 0.95
    sizes = np.bincount(groups)
    assert (sizes[sizes > 1] == 2).all()  # random texts are never grouped
    assert int((sizes == 2).sum()) == found
    # Only rows still in play are linked: a twin whose partner was dropped stays alone.
    in_play = np.ones(len(texts), bool)
    in_play[list(twin.values())] = False
    alone = near_duplicate_groups(sk, in_play, 0.8)
    assert all(alone[a] == a for a in twin)


def test_candidate_pairs_link_each_bucket_member_to_its_lowest_valid_row():
    # Band 0 buckets: {0, 2, 5} and {1, 4}; band 1: {3, 5}. Row 0 is not valid (no words).
    keys = np.array([[7, 1], [8, 2], [7, 3], [9, 4], [8, 5], [7, 4]], dtype=np.uint64)
    valid = np.array([False, True, True, True, True, True])
    u, v = candidate_pairs(keys, valid)
    assert sorted(zip(u.tolist(), v.tolist(), strict=True)) == [(1, 4), (2, 5), (3, 5)]
    assert [len(a) for a in candidate_pairs(keys, np.zeros(6, bool))] == [0, 0]
