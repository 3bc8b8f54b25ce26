"""Curation: targets, every filter and its count, dedup, the leak-free split, preference pairs,
idempotent versions and bad input — on a real DuckDB file filled with batched inserts."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel import store
from flywheel.curate import CurationConfig, CurationError, curate
from flywheel.dedup import components, estimated_jaccard, near_duplicate_groups, sketch
from flywheel.settings import load_settings
from flywheel.split import LeakError, _assert_leak_free

T0 = datetime(2026, 1, 1)
WORDS = ("order refund shipping invoice account password delivery parcel warehouse courier payment card "
         "subscription upgrade cancel renew discount voucher address street city country phone support "
         "agent ticket status delayed lost damaged replace return label printer scanner network router").split()  # fmt: skip


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def interaction(i: int | str, prompt: str, response: str, **kw) -> dict:
    """One `interactions` row as the ingestion server stores it."""
    messages = kw.pop("messages", None)
    request = kw.pop("request", None) or {"messages": messages or [
        {"role": "system", "content": "You are the support assistant of Acme."},
        {"role": "user", "content": prompt}]}  # fmt: skip
    row = {"project": "default", "id": str(i), "task": "support", "ts": T0 + timedelta(minutes=int(kw.pop("minute", 0))),
           "model": "big", "request": json.dumps(request), "response": response, "status": "ok",
           "session_id": None, "source": "ingest", "pii_redacted": 0, "received_at": T0}  # fmt: skip
    row.update(kw)
    return row


def fb(interaction_id: str, kind: str, value, minute: int = 1, project: str = "default") -> dict:
    return {"project": project, "id": f"{interaction_id}-{kind}-{minute}", "interaction_id": interaction_id,
            "kind": kind, "value": json.dumps(value), "ts": T0 + timedelta(minutes=minute), "pii_redacted": 0,
            "received_at": T0}  # fmt: skip


def fill(settings, interactions: list[dict], feedback: list[dict] = ()) -> None:
    """Batched inserts from Arrow tables (never a statement per row)."""
    with store.connect(settings.db_path) as con:
        if interactions:
            con.register("_i", pa.Table.from_pylist(interactions))
            cols = ", ".join(interactions[0])
            con.execute(f"INSERT INTO interactions ({cols}) SELECT {cols} FROM _i")
        if feedback:
            con.register("_f", pa.Table.from_pylist(list(feedback)))
            cols = ", ".join(feedback[0])
            con.execute(f"INSERT INTO feedback ({cols}) SELECT {cols} FROM _f")


def background(rng: random.Random, n: int, start: int = 1000, **kw) -> list[dict]:
    """Distinct ordinary examples (long enough that none are near-duplicates of each other)."""
    return [interaction(start + i, sentence(rng, 25), sentence(rng, 20), session_id=f"s{(start + i) // 3}", **kw)
            for i in range(n)]  # fmt: skip


def sft_rows(version, split: str | None = None) -> list[dict]:
    dd = datasets.load_from_disk(str(version.path / "sft"))
    splits = [split] if split else list(dd)
    return [row for s in splits for row in dd[s]]


def db_rows(settings, sql: str, params=()) -> list[tuple]:
    with store.connect(settings.db_path, read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def settings(tmp_path):
    return load_settings(tmp_path / "data")


CFG = CurationConfig(min_examples=5, eval_fraction=0.2)


def test_every_filter_drops_and_counts(settings):
    rng = random.Random(1)
    planted = [
        interaction("failed", "why is my order late", "upstream timeout", status="error"),
        interaction("thumbsdown", sentence(rng, 20), "a bad answer " + sentence(rng, 10)),
        interaction("badrating", sentence(rng, 20), "another bad answer " + sentence(rng, 10)),
        interaction("malformed-role", "", "x", request={"messages": [{"role": "wizard", "content": "hi there"}]}),
        interaction("malformed-last", "", "x", request={"messages": [{"role": "user", "content": "q"},
                                                                     {"role": "assistant", "content": "a"}]}),  # fmt: skip
        interaction("malformed-none", "", "x", request={"params": {"temperature": 0}}),
        interaction("empty-prompt", "   ", sentence(rng, 10)),
        interaction("empty-response", sentence(rng, 10), "  \n "),
        interaction("oversized", sentence(rng, 10), "word " * 2000),
        interaction("excluded", "please ignore this TESTDATA " + sentence(rng, 15), sentence(rng, 15)),
        interaction("pii", "my mail is jane.doe@example.com " + sentence(rng, 15), sentence(rng, 15)),
        interaction("dup-a", "Where is my PARCEL?  It's late.", "It ships tomorrow, sorry!", minute=1),
        interaction("dup-b", "where is my parcel it's late", "it ships tomorrow sorry", minute=2),
    ]
    base = sentence(rng, 40)
    near = base.split()
    near[20] = "changed"
    planted += [interaction("near-a", base, "the same long answer " + sentence(random.Random(7), 30), minute=3),
                interaction("near-b", " ".join(near), "the same long answer " + sentence(random.Random(7), 30), minute=4)]  # fmt: skip
    rows = planted + background(rng, 20)
    fill(settings, rows, [fb("thumbsdown", "thumbs", False), fb("badrating", "rating", 1)])

    cfg = CurationConfig(min_examples=5, eval_fraction=0.2, max_tokens=1000, prompt_exclude=["TESTDATA"])
    version = curate(settings, task="support", config=cfg)
    c = version.counts
    assert c["selected"] == len(rows)
    assert (c["failed_call"], c["negative_feedback"], c["malformed"], c["empty"], c["oversized"]) == (1, 2, 3, 2, 1)
    assert (c["rule_exclude"], c["rule_include"], c["pii"], c["exact_duplicate"], c["near_duplicate"]) == (1, 0, 1, 1, 1)
    assert c["kept"] == 20 + 2 == c["train"] + c["eval"]
    kept = {r["interaction_id"] for r in sft_rows(version)}
    assert len(kept) == 22
    assert not kept & {"failed", "thumbsdown", "badrating", "malformed-role", "malformed-last", "malformed-none",
                       "empty-prompt", "empty-response", "oversized", "excluded", "pii"}  # fmt: skip
    assert len(kept & {"dup-a", "dup-b"}) == 1 and len(kept & {"near-a", "near-b"}) == 1
    # The newest member wins when none is better labelled.
    assert {"dup-b", "near-b"} <= kept
    report = (version.path / "report.md").read_text()
    assert "| malformed messages | 3 |" in report and "| PII after redaction | 1 |" in report


def test_include_rules_and_unlabelled(settings):
    rng = random.Random(2)
    rows = background(rng, 12)
    rows += [interaction("refund-1", "chargeback please " + sentence(rng, 20), sentence(rng, 20)),
             interaction("refund-2", "I want a chargeback " + sentence(rng, 20), sentence(rng, 20))]  # fmt: skip
    fill(settings, rows, [fb("refund-1", "thumbs", True), fb("1000", "rating", 5), fb("1001", "rating", 3)])
    cfg = CurationConfig(min_examples=1, prompt_include=[r"\bchargeback\b"], keep_unlabelled=False)
    version = curate(settings, task="support", config=cfg)
    # 1000 is good but has no "chargeback"; 1001's rating 3 is neutral, i.e. unlabelled.
    assert version.counts["unlabelled"] == 12 and version.counts["rule_include"] == 1
    assert {r["interaction_id"] for r in sft_rows(version)} == {"refund-1"}


def test_correction_beats_response_and_sft_format(settings):
    rng = random.Random(3)
    rows = background(rng, 10) + [
        interaction("corrected", "how do I reset my password", "I don't know."),
        interaction("corrected-down", "can I change my address", "No."),
        interaction("plain", request={"prompt": "translate hello to French"}, prompt="", response="bonjour"),
        interaction("parts", "", "ok then", request={"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]}]}),
    ]  # fmt: skip
    fill(settings, rows, [
        fb("corrected", "correction", "Go to Settings > Security > Reset password."),
        fb("corrected-down", "thumbs", False), fb("corrected-down", "correction", "Yes: Account > Addresses."),
        fb("corrected", "correction", "an older correction", minute=0),
    ])  # fmt: skip
    version = curate(settings, task="support", config=CurationConfig(min_examples=5, eval_fraction=0.0))
    by_id = {r["interaction_id"]: r for r in sft_rows(version)}
    assert by_id["corrected"]["messages"] == [
        {"role": "system", "content": "You are the support assistant of Acme."},
        {"role": "user", "content": "how do I reset my password"},
        {"role": "assistant", "content": "Go to Settings > Security > Reset password."}]  # fmt: skip
    assert by_id["corrected"]["target_source"] == "correction"
    assert by_id["corrected-down"]["messages"][-1]["content"] == "Yes: Account > Addresses."
    assert by_id["plain"]["messages"] == [{"role": "user", "content": "translate hello to French"},
                                          {"role": "assistant", "content": "bonjour"}]  # fmt: skip
    assert by_id["parts"]["messages"][:2] == [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "part one, part two"}]  # fmt: skip
    assert version.counts["corrections"] == 2 and version.counts["negative_feedback"] == 0
    assert all(r["messages"][-1]["role"] == "assistant" for r in by_id.values())
    parquet = pq.read_table(version.path / "parquet" / "sft-train.parquet")
    assert parquet.num_rows == len(by_id) and "messages" in parquet.column_names


def test_dedup_keeps_best_labelled_member(settings):
    rng = random.Random(4)
    text = sentence(rng, 40)
    answer = sentence(rng, 30)
    group = [interaction(f"g{i}", text if i % 2 else text.upper(), answer, minute=i) for i in range(4)]
    near = text.split()
    near[5] = "different"
    group += [interaction("g-near-good", " ".join(near), answer, minute=0)]
    fill(settings, background(rng, 10) + group, [fb("g1", "thumbs", True), fb("g-near-good", "correction", answer + " indeed")])
    version = curate(settings, task="support", config=CurationConfig(min_examples=5))
    kept = {r["interaction_id"] for r in sft_rows(version)}
    # g0..g3 are exact duplicates: g1 (thumbs up) beats the newer ones; then the near-duplicate
    # with a correction beats g1.
    assert version.counts["exact_duplicate"] == 3 and version.counts["near_duplicate"] == 1
    assert "g-near-good" in kept and not kept & {"g0", "g1", "g2", "g3"}


def test_dedup_keeps_a_clean_member_when_the_best_one_holds_pii(settings):
    """The corrected duplicate would win, but its logged response holds an e-mail address: it is
    dropped for PII first, and its clean duplicate is kept (not dropped as a duplicate of it)."""
    rng = random.Random(6)
    prompt, fixed = "how do I change the delivery address of my parcel", "Open your order page and edit the address."
    rows = [interaction("leaky", prompt, "write to bob.smith@example.com, he fixes it", minute=1),
            interaction("clean", prompt, fixed, minute=0)]  # fmt: skip
    fill(settings, rows + background(rng, 10), [fb("leaky", "correction", fixed)])
    version = curate(settings, task="support", config=CurationConfig(min_examples=5))
    assert "clean" in {r["interaction_id"] for r in sft_rows(version)}
    assert (version.counts["pii"], version.counts["exact_duplicate"]) == (1, 0)


def test_split_is_leak_free_with_planted_near_duplicates(settings):
    rng = random.Random(5)
    rows = []
    # 40 near-duplicate families, members in different sessions; kept (near_dup_drop off) so the
    # split itself must keep each family on one side.
    for f in range(40):
        base = sentence(rng, 80).split()
        for m in range(3):
            words = list(base)
            words[m * 25] = f"edit{m}"
            rows.append(interaction(f"f{f}-{m}", " ".join(words), f"answer for family {f} " + sentence(random.Random(f), 15),
                                    session_id=f"fam{f}-sess{m}", minute=m))  # fmt: skip
    # Sessions with several distinct examples.
    for s in range(30):
        for j in range(3):
            rows.append(interaction(f"s{s}-{j}", sentence(rng, 25), sentence(rng, 20), session_id=f"sess{s}"))
    fill(settings, rows)
    cfg = CurationConfig(min_examples=5, eval_fraction=0.3, near_dup_drop=False, seed=7)
    version = curate(settings, task="support", config=cfg)
    assert version.counts["near_duplicate"] == 0 and version.counts["kept"] == len(rows)
    side = {r["interaction_id"]: split for split in ("train", "eval") for r in sft_rows(version, split)}
    for f in range(40):
        assert len({side[f"f{f}-{m}"] for m in range(3)}) == 1, f"family {f} crosses the split"
    for s in range(30):
        assert len({side[f"s{s}-{j}"] for j in range(3)}) == 1, f"session {s} crosses the split"
    # 70 units, 30% held out (exactly: ranked by the stable hash).
    assert version.counts["split_units"] == 70
    assert sum(1 for f in range(40) if side[f"f{f}-0"] == "eval") + sum(1 for s in range(30) if side[f"s{s}-0"] == "eval") == 21
    lineage = db_rows(settings, "SELECT split, count(*) FROM dataset_interactions WHERE dataset_id = ? GROUP BY split ORDER BY 1", [version.id])
    assert lineage == [("eval", version.counts["eval"]), ("train", version.counts["train"])]


def test_split_is_stratified_by_label(settings):
    rng = random.Random(6)
    rows = background(rng, 100)
    labels = [fb(r["id"], "label", "billing" if i < 80 else "outage") for i, r in enumerate(rows)]
    for r in rows:
        r["session_id"] = None
    fill(settings, rows, labels)
    version = curate(settings, task="support", config=CurationConfig(min_examples=5, eval_fraction=0.1))
    ev = sft_rows(version, "eval")
    assert sorted(r["label"] for r in ev) == ["billing"] * 8 + ["outage"] * 2


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


def test_assert_leak_free_catches_a_crossing_session():
    import duckdb

    con = duckdb.connect()
    con.execute("""CREATE TABLE rows AS SELECT * FROM (VALUES
        (NULL, 's1', 1, 10, 'train'), (NULL, 's1', 2, 20, 'eval')) t(dropped, session_id, grp, pkey, split)""")
    with pytest.raises(LeakError, match="session"):
        _assert_leak_free(con)


def test_components():
    labels = components(7, [0, 2, 5, 3], [1, 3, 6, 1])
    assert labels.tolist() == [0, 0, 0, 0, 4, 5, 5]


def test_preference_pairs(settings):
    rng = random.Random(8)
    rows = background(rng, 20) + [
        interaction("up", "which plan should I pick", "The Pro plan fits a team of five.", minute=1, session_id="p1"),
        interaction("down", "which plan should I pick", "Whatever.", minute=2, session_id="p2"),
        interaction("fixed", "is the router covered by warranty", "No idea.", session_id="p3"),
        interaction("lonely-up", "what is your phone support schedule", "Nine to five.", session_id="p4"),
    ]  # fmt: skip
    fill(settings, rows, [fb("up", "thumbs", True), fb("down", "thumbs", False), fb("lonely-up", "thumbs", True),
                          fb("fixed", "correction", "Yes, for two years.")])  # fmt: skip
    version = curate(settings, task="support", config=CurationConfig(min_examples=5, eval_fraction=0.0))
    pairs = datasets.load_from_disk(str(version.path / "preference"))["train"]
    by_chosen = {p["chosen_id"]: p for p in pairs}
    assert set(by_chosen) == {"up", "fixed"} and version.counts["preference_pairs"] == 2
    assert by_chosen["up"]["rejected_id"] == "down"
    assert by_chosen["up"]["prompt"][-1] == {"role": "user", "content": "which plan should I pick"}
    assert by_chosen["up"]["chosen"] == [{"role": "assistant", "content": "The Pro plan fits a team of five."}]
    assert by_chosen["up"]["rejected"] == [{"role": "assistant", "content": "Whatever."}]
    assert by_chosen["fixed"]["chosen"][0]["content"] == "Yes, for two years."
    assert by_chosen["fixed"]["rejected"][0]["content"] == "No idea."
    # "down" has no correction: not an SFT target, but it is the rejected side of a pair.
    assert "down" not in {r["interaction_id"] for r in sft_rows(version)}
    lineage = db_rows(settings, "SELECT interaction_id FROM dataset_interactions WHERE dataset_id = ? AND split = 'preference' ORDER BY 1", [version.id])
    assert [i for (i,) in lineage] == ["down", "fixed", "up"]


def test_preference_pairs_never_use_an_eval_prompt(settings):
    rng = random.Random(9)
    rows, feedback = background(rng, 10), []
    for k in range(30):
        rows.append(interaction(f"c{k}", f"question number {k} " + sentence(rng, 10), "wrong", session_id=f"q{k}"))
        feedback.append(fb(f"c{k}", "correction", f"right answer {k}"))
    fill(settings, rows, feedback)
    version = curate(settings, task="support", config=CurationConfig(min_examples=5, eval_fraction=0.3))
    eval_ids = {r["interaction_id"] for r in sft_rows(version, "eval")}
    pairs = datasets.load_from_disk(str(version.path / "preference"))["train"]
    assert eval_ids and not eval_ids & set(pairs["chosen_id"])
    assert version.counts["preference_eval_overlap"] == len(eval_ids & {f"c{k}" for k in range(30)})
    assert version.counts["preference_pairs"] + version.counts["preference_eval_overlap"] == 30


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
    from flywheel.curation_output import content_id

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


def test_time_window_and_project(settings):
    rng = random.Random(11)
    rows = [dict(r, ts=T0 + timedelta(days=i)) for i, r in enumerate(background(rng, 20))]
    other = [dict(r, project="other") for r in background(rng, 5, start=9000)]
    fill(settings, rows + other)
    version = curate(settings, task="support", config=CFG, since=T0 + timedelta(days=5), until=T0 + timedelta(days=15))
    assert version.counts["selected"] == 10
    assert {r["interaction_id"] for r in sft_rows(version)} == {str(1000 + i) for i in range(5, 15)}


@pytest.mark.parametrize("case", ["unknown task", "empty window", "too few", "no database"])
def test_bad_input_registers_nothing(settings, case):
    if case != "no database":
        fill(settings, background(random.Random(12), 4))
    kwargs = {"task": "support", "config": CurationConfig(min_examples=5)}
    if case == "unknown task":
        kwargs["task"] = "nope"
    if case == "empty window":
        kwargs["since"] = T0 + timedelta(days=1)
    match = {"unknown task": "unknown task 'nope'.*known tasks: support", "empty window": "no interactions",
             "too few": "only 4 examples", "no database": "no Flywheel database"}[case]  # fmt: skip
    with pytest.raises(CurationError, match=match):
        curate(settings, **kwargs)
    assert not (settings.home / "datasets").exists()
    if case != "no database":
        assert db_rows(settings, "SELECT count(*) FROM datasets") == [(0,)]


def test_config_from_files(tmp_path):
    (tmp_path / "c.toml").write_text('[curation]\nnear_dup_threshold = 0.9\nprompt_exclude = ["^test"]\nmin_examples = 3\n')
    (tmp_path / "c.yaml").write_text("eval_fraction: 0.25\nkeep_unlabelled: false\n")
    assert CurationConfig.from_file(tmp_path / "c.toml") == CurationConfig(near_dup_threshold=0.9, prompt_exclude=["^test"], min_examples=3)
    assert CurationConfig.from_file(tmp_path / "c.yaml") == CurationConfig(eval_fraction=0.25, keep_unlabelled=False)
    with pytest.raises(CurationError, match="unknown curation setting"):
        CurationConfig.from_dict({"near_dup": 0.9})
    with pytest.raises(CurationError, match="invalid regex"):
        CurationConfig(prompt_exclude=["(unclosed"])
    with pytest.raises(CurationError, match="eval_fraction"):
        CurationConfig(eval_fraction=1.5)
