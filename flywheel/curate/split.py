"""The leak-free train/eval split and the DPO preference pairs of a curation run.

The eval side is what private benchmarks are built from, so nothing the model trains on may
reappear there: a split *unit* is a connected component of examples linked by a shared session,
a shared near-duplicate group or the same user prompt, and whole units go to one side. Units are
ordered by a stable hash (md5 of seed and the unit's lowest session id or interaction id, never
Python's salted `hash`) and, when the task has feedback labels, the eval share is taken per
label, so a rare label is held out in proportion. Both functions work on the `rows` table that
`flywheel.curate.pipeline` builds in its in-memory DuckDB.

The split is sticky across versions: a benchmark built from version N's eval side must stay
clean for a model trained on version N+1. `flywheel.curate.pipeline` marks the rows tied to what earlier
versions held out (`rows.carried`, table `held_out`); a unit with such a row stays on the eval
side, a unit the latest version trained on stays on the train side, only new units are ranked,
and they fill what is left of each label's eval share. Preference pairs never use a prompt held
out now or before.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from flywheel.curate.dedup import components


class LeakError(AssertionError):
    """A session, near-duplicate group or prompt ended up on both sides: a bug, never bad input."""


def split(con, cfg) -> dict[str, int]:
    """Set `rows.split` to 'train' or 'eval' for the kept rows; return the counts."""
    con.execute("""
        CREATE TEMP TABLE k AS
        SELECT (row_number() OVER (ORDER BY rid) - 1)::BIGINT AS k, rid, id, session_id, grp, pkey, label, carried
        FROM rows WHERE dropped IS NULL""")  # fmt: skip
    # Each row links to the lowest row of its session, of its near-dup group and of its prompt.
    links = con.sql("""
        SELECT k,
            CASE WHEN session_id IS NULL THEN k ELSE min(k) OVER (PARTITION BY session_id) END AS s,
            CASE WHEN grp IS NULL THEN k ELSE min(k) OVER (PARTITION BY grp) END AS g,
            CASE WHEN pkey IS NULL THEN k ELSE min(k) OVER (PARTITION BY pkey) END AS p
        FROM k ORDER BY k""").fetchnumpy()  # fmt: skip
    n = len(links["k"])
    u = np.concatenate([links["k"]] * 3)
    v = np.concatenate([links["s"], links["g"], links["p"]])
    con.register("_c", pa.table({"k": links["k"], "unit": components(n, u, v)}))
    stratify = cfg.stratify_by_label and con.execute("SELECT count(label) > 0 FROM k").fetchall()[0][0]
    # A unit that merges rows of both sides (a new session or near-dup link) goes to eval: moving
    # trained-on rows into eval only costs benchmark rows, the other way round leaks them.
    con.execute(f"""
        CREATE TEMP TABLE units AS
        WITH u AS (
            SELECT unit, min(coalesce(session_id, id)) AS unit_key, {'min(label)' if stratify else 'NULL'} AS stratum,
                CASE WHEN bool_or(carried = 'eval') THEN 'eval' WHEN bool_or(carried = 'train') THEN 'train' END AS carried
            FROM k JOIN _c USING (k) GROUP BY unit
        ), q AS (
            SELECT *,
                round($frac * count(*) OVER (PARTITION BY stratum))
                    - count(CASE WHEN carried = 'eval' THEN 1 END) OVER (PARTITION BY stratum) AS open,
                row_number() OVER (PARTITION BY stratum, carried ORDER BY md5($seed || ':' || unit_key), unit_key, unit) AS r
            FROM u
        )
        SELECT unit, carried, coalesce(carried, CASE WHEN r <= open THEN 'eval' ELSE 'train' END) AS split
        FROM q""", {"seed": str(cfg.seed), "frac": cfg.eval_fraction})  # fmt: skip
    con.execute("""
        UPDATE rows SET split = s.split
        FROM (SELECT k.rid, units.split FROM k JOIN _c USING (k) JOIN units USING (unit)) s
        WHERE rows.rid = s.rid""")  # fmt: skip
    con.unregister("_c")
    _assert_leak_free(con)
    counts = dict(con.execute("SELECT split, count(*) FROM rows WHERE dropped IS NULL GROUP BY split").fetchall())
    units, carried = con.execute("SELECT count(*), count(carried) FROM units").fetchall()[0]
    con.execute("DROP TABLE k; DROP TABLE units")
    return {"train": counts.get("train", 0), "eval": counts.get("eval", 0), "split_units": units, "split_carried": carried}


def _assert_leak_free(con) -> None:
    # Checked on the result, not assumed from the construction: a regression here would
    # silently inflate every benchmark built from the eval side.
    for column, what in (("session_id", "session"), ("grp", "near-duplicate group"), ("pkey", "prompt")):
        crossing = con.execute(f"""
            SELECT count(*) FROM (
                SELECT {column} FROM rows WHERE dropped IS NULL AND {column} IS NOT NULL
                GROUP BY {column} HAVING count(DISTINCT split) > 1)""").fetchall()[0][0]  # fmt: skip
        if crossing:
            raise LeakError(f"{crossing} {what}(s) span both train and eval")


def preference_pairs(con, enabled: bool = True) -> dict[str, int]:
    """Table `pairs` (prompt, chosen, rejected, chosen_id, rejected_id, pkey) in TRL's
    conversational preference format; one pair per prompt.

    Chosen: a correction, else a response with good feedback. Rejected: a response with bad
    feedback, else a response that a user corrected. Pairs whose prompt is on the eval side, or
    was in an earlier version (`held_out`), are dropped: preference training never sees a
    benchmark prompt.
    """
    # Rows dropped from SFT (negative feedback, duplicates) are still good pair material; only
    # failed, malformed, empty-prompt and PII records are not.
    con.execute(f"""
    CREATE TABLE pairs AS
    WITH c AS (
        SELECT * FROM rows
        WHERE {'true' if enabled else 'false'} AND status = 'ok' AND NOT malformed AND NOT empty_prompt
          AND NOT has_pii AND (corrected OR verdict IS NOT NULL)
    ), chosen AS (  -- (tool_text: a tool call as the text SFT trains on, `flywheel.curate.pipeline`)
        SELECT pkey, id, ts, prompt, tool_text(correction) AS text, 2 AS q FROM c WHERE corrected
        UNION ALL
        SELECT pkey, id, ts, prompt, tool_text(response), 1 FROM c WHERE NOT corrected AND verdict = 'good'
    ), rejected AS (
        SELECT pkey, id, ts, tool_text(response) AS text, 2 AS q FROM c WHERE verdict = 'bad'
        UNION ALL
        SELECT pkey, id, ts, tool_text(response), 1 FROM c WHERE corrected AND verdict IS DISTINCT FROM 'bad'
    ), ch AS (
        SELECT pkey, first(prompt ORDER BY q DESC, ts DESC, id) AS prompt,
            first(text ORDER BY q DESC, ts DESC, id) AS text, first(id ORDER BY q DESC, ts DESC, id) AS id
        FROM chosen WHERE NOT regexp_full_match(text, '\\s*') GROUP BY pkey
    ), rj AS (
        SELECT pkey, first(text ORDER BY q DESC, ts DESC, id) AS text, first(id ORDER BY q DESC, ts DESC, id) AS id
        FROM rejected WHERE NOT regexp_full_match(text, '\\s*') GROUP BY pkey
    )
    SELECT ch.prompt, [{{'role': 'assistant', 'content': ch.text}}] AS chosen,
        [{{'role': 'assistant', 'content': rj.text}}] AS rejected, ch.id AS chosen_id, rj.id AS rejected_id, pkey
    FROM ch JOIN rj USING (pkey)
    WHERE lower(trim(ch.text, ' ' || chr(9) || chr(10) || chr(13))) <> lower(trim(rj.text, ' ' || chr(9) || chr(10) || chr(13)))
    """)  # fmt: skip
    overlap = con.execute("""DELETE FROM pairs WHERE pkey IN (SELECT pkey FROM rows WHERE split = 'eval')
                                                 OR pkey IN (SELECT pkey FROM held_out)""").fetchall()[0][0]  # fmt: skip
    total = con.execute("SELECT count(*) FROM pairs").fetchall()[0][0]
    pii = con.execute("""SELECT count(*) FROM rows WHERE has_pii AND status = 'ok' AND NOT malformed
                         AND (corrected OR verdict IS NOT NULL)""").fetchall()[0][0]  # fmt: skip
    return {"preference_pairs": total, "preference_eval_overlap": overlap, "preference_pii": pii if enabled else 0}
