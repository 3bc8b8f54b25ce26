"""Curation: targets, every filter and its count, dedup, the leak-free split, preference pairs,
the time window and bad input — on a real DuckDB file filled with batched inserts."""

from __future__ import annotations

import random
from datetime import timedelta

import datasets
import pyarrow.parquet as pq
import pytest

from curation_data import CFG, T0, background, db_rows, fb, fill, interaction, sentence, sft_rows
from flywheel.curate.pipeline import CurationConfig, CurationError, curate
from flywheel.curate.dedup import components
from flywheel.settings import load_settings
from flywheel.curate.split import LeakError, _assert_leak_free


@pytest.fixture
def settings(tmp_path):
    return load_settings(tmp_path / "data")


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
