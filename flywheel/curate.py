"""Curation: one task's production traffic → a versioned, leak-free training dataset.

Every model Flywheel trains is only as good as this step, so each stage is explicit and counted:

    select (one short read of the store)
    → targets: a correction beats the logged response; negative feedback without one is dropped
    → filters: failed calls, malformed messages, empty, oversized, regex rules      (SQL)
    → exact keys and MinHash signatures: one compiled pass over the text    (flywheel.dedup)
    → PII re-check: a record that still holds PII after ingestion redaction  (flywheel.pii_scan, .pii)
    → exact dedup (normalised words), keeping the best-labelled member              (SQL)
    → near dedup (MinHash + LSH), keeping the best-labelled member
    → carry-over: rows tied to what earlier versions held out stay held out (sketched too)
    → leak-free split (flywheel.split) and DPO preference pairs
    → content hash → files (flywheel.curation_output) → `datasets` record with lineage

The store is opened three times, briefly: to read the selection (and the sides earlier versions
gave it) into Arrow, to see whether the version exists, and to register it (DESIGN: nobody keeps
the file longer than one unit of work; the ingestion server is waiting). All work in between
runs on an in-memory DuckDB over Arrow, set-at-a-time, and in numba over Arrow's bytes; no Python
runs per row except the PII patterns, on the few records a compiled scan flags as possibly holding
PII. (1M interactions: ~14.5 s, ~3.3 GB peak, `bench/curate.py`.) The config and result types
live in `flywheel.curation_config`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flywheel import store
from flywheel.curation_config import CurationConfig, CurationError, DatasetVersion
from flywheel.settings import Settings

if TYPE_CHECKING:  # numba (in flywheel.dedup) is imported only when a curation runs
    from flywheel.dedup import Sketch

__all__ = ["CurationConfig", "CurationError", "DatasetVersion", "curate"]


# The selection: one scan of the task's interactions and their feedback (latest value of each
# kind wins: a user may change their mind). Kept as text: it is stored with the version.
SELECT_SQL = """
WITH sel AS (
    SELECT id, ts, session_id, status, request, response
    FROM interactions
    WHERE project = $project AND task = $task
      AND ($since IS NULL OR ts >= CAST($since AS TIMESTAMP))
      AND ($until IS NULL OR ts < CAST($until AS TIMESTAMP))
), fb AS (
    SELECT f.interaction_id AS id,
        first(f.value ->> '$' ORDER BY f.ts DESC, f.id DESC) FILTER (WHERE f.kind = 'correction') AS correction,
        first((f.value ->> '$') = 'true' ORDER BY f.ts DESC, f.id DESC) FILTER (WHERE f.kind = 'thumbs') AS thumbs,
        first(TRY_CAST(f.value ->> '$' AS DOUBLE) ORDER BY f.ts DESC, f.id DESC) FILTER (WHERE f.kind = 'rating') AS rating,
        first(f.value ->> '$' ORDER BY f.ts DESC, f.id DESC) FILTER (WHERE f.kind = 'label') AS label
    FROM feedback f SEMI JOIN sel ON f.interaction_id = sel.id
    WHERE f.project = $project
    GROUP BY f.interaction_id
)
SELECT sel.*, fb.correction, fb.thumbs, fb.rating, fb.label
FROM sel LEFT JOIN fb USING (id)
"""

# The sides earlier versions of the task gave interactions: every interaction any version held
# out (a benchmark may come from any of them), and the latest version's train side (each version
# keeps its parent's, so older ones add nothing but rows to read). Held-out ones come with their
# session, request, response and latest correction, whatever the window, so their sessions,
# prompts and near-duplicates stay held out too.
HISTORY_SQL = """
WITH versions AS (SELECT id, created_at FROM datasets WHERE project = $project AND task = $task),
h AS (
    SELECT interaction_id AS id, bool_or(split = 'eval') AS was_eval
    FROM dataset_interactions
    WHERE dataset_id IN (SELECT id FROM versions)
      AND (split = 'eval' OR split = 'train'
           AND dataset_id = (SELECT id FROM versions ORDER BY created_at DESC, id DESC LIMIT 1))
    GROUP BY interaction_id
)
SELECT h.id, h.was_eval, i.session_id, CASE WHEN h.was_eval THEN i.request END AS request,
    CASE WHEN h.was_eval THEN i.response END AS response, c.correction
FROM h LEFT JOIN interactions i ON i.project = $project AND i.id = h.id
LEFT JOIN (
    SELECT f.interaction_id, first(f.value ->> '$' ORDER BY f.ts DESC, f.id DESC) AS correction
    FROM feedback f WHERE f.project = $project AND f.kind = 'correction' GROUP BY f.interaction_id
) c ON h.was_eval AND c.interaction_id = h.id
"""

# The request is parsed once against a fixed shape (DuckDB's typed `from_json`, ~15x faster
# than extracting paths per message). Messages become {role, content} structs: `prompt` requests
# become one user turn, `developer` is a system turn, content given as text parts is joined;
# anything else (tool calls, images) leaves a NULL content and makes the row malformed for SFT.
_REQUEST_SHAPE = '{"messages": [{"role": "VARCHAR", "content": "JSON"}], "prompt": "JSON"}'
_MESSAGES = """
list_transform(r.messages, lambda m: {
    'role': CASE m.role WHEN 'developer' THEN 'system' ELSE m.role END,
    'content': CASE json_type(m.content)
        WHEN 'VARCHAR' THEN m.content ->> '$'
        WHEN 'ARRAY' THEN CASE WHEN list_bool_and(list_transform(CAST(m.content AS JSON[]),
                lambda q: coalesce(json_type(q, '$.text') = 'VARCHAR', false)))
            THEN array_to_string(list_transform(CAST(m.content AS JSON[]), lambda q: q ->> '$.text'), '') END
    END})
"""
_PROMPT = f"""CASE WHEN r.messages IS NOT NULL THEN {_MESSAGES}
    WHEN json_type(r.prompt) = 'VARCHAR' THEN [{{'role': 'user', 'content': r.prompt ->> '$'}}] END"""
_PROMPT_TEXT = "array_to_string(list_transform(prompt, lambda m: m.content), chr(10))"
_USER_TEXT = "array_to_string(list_transform(list_filter(prompt, lambda m: m.role <> 'system'), lambda m: m.content), chr(10))"
_PROMPT_KEY = f"hash(lower({_USER_TEXT}))"  # what links rows with the same prompt (split, pairs)
STAGES = ("failed_call", "negative_feedback", "unlabelled", "malformed", "empty", "oversized",
          "rule_exclude", "rule_include", "pii", "exact_duplicate", "near_duplicate")  # fmt: skip


def _blank(column: str) -> str:
    # (a regex, not trim(x, chars): DuckDB's trim with a character set is ~40x slower)
    return f"regexp_full_match({column}, '\\s*')"


_CORRECTED = f"coalesce(NOT {_blank('correction')}, false)"  # (a blank correction is none)
_SKETCH_TEXT = f"lower({_USER_TEXT} || chr(10) || target)"  # what dedup compares


def _rule(column: str, patterns: list[str], params: dict, name: str) -> str | None:
    if not patterns:
        return None
    params[name] = "|".join(f"(?:{p})" for p in patterns)
    return f"regexp_matches({column}, ${name})"


def _select(settings: Settings, project: str, task: str, since, until) -> tuple[pa.Table, pa.Table]:
    """The selection, and the side earlier versions of the task gave each interaction (for the
    sticky split: `flywheel.split`)."""
    params = {"project": project, "task": task, "since": since, "until": until}
    if not Path(settings.db_path).exists():
        raise CurationError(f"no Flywheel database at {settings.db_path}: nothing to curate")
    with store.connect(settings.db_path, read_only=True) as con:
        table = con.sql(SELECT_SQL, params=params).to_arrow_table()
        if table.num_rows == 0:
            known = [t for (t,) in con.execute(
                "SELECT DISTINCT task FROM interactions WHERE project = ? ORDER BY task", [project]).fetchall()]
        history = con.sql(HISTORY_SQL, params={"project": project, "task": task}).to_arrow_table()
    if table.num_rows == 0:
        if task not in known:
            raise CurationError(f"unknown task {task!r} in project {project!r}; known tasks: {', '.join(known) or 'none'}")
        raise CurationError(f"no interactions of task {task!r} between {since or 'the start'} and {until or 'now'}")
    return table, history


def _prepare(con: duckdb.DuckDBPyConnection, sel: pa.Table, cfg: CurationConfig) -> None:
    """Table `rows`: one row per selected interaction with its target, flags and the first stage
    that drops it (`dropped`, NULL while it survives)."""
    params: dict[str, Any] = {"good": cfg.good_rating, "bad": cfg.bad_rating, "keep": cfg.keep_unlabelled,
                              "cpt": cfg.chars_per_token, "max_tokens": cfg.max_tokens}  # fmt: skip
    exclude = [r for r in (_rule(_PROMPT_TEXT, cfg.prompt_exclude, params, "pex"),
                           _rule("target", cfg.response_exclude, params, "rex")) if r]  # fmt: skip
    include = [r for r in (_rule(_PROMPT_TEXT, cfg.prompt_include, params, "pin"),
                           _rule("target", cfg.response_include, params, "rin")) if r]  # fmt: skip
    # rid: the row's rank by id, so every run sees the rows in the same order whatever order the
    # store returned them in (cheaper here than a window in SQL, which sorts every column along).
    order = pc.sort_indices(sel.column("id")).to_numpy()
    rid = np.empty(len(order), dtype=np.int64)
    rid[order] = np.arange(len(order))
    con.register("sel", sel.append_column("rid", pa.array(rid)))
    con.execute(f"""
    CREATE TABLE rows AS
    WITH b AS (
        SELECT * EXCLUDE (request),
            from_json(request, '{_REQUEST_SHAPE}') AS r
        FROM sel
    ), p AS (
        SELECT * EXCLUDE (r),
            {_PROMPT} AS prompt,
            {_CORRECTED} AS corrected,
            CASE WHEN thumbs = false OR rating <= $bad THEN 'bad'
                 WHEN thumbs OR rating >= $good THEN 'good' END AS verdict
        FROM b
    ), t AS (
        SELECT *,
            CASE WHEN corrected THEN correction ELSE response END AS target,
            CASE WHEN corrected THEN 2 WHEN verdict = 'good' THEN 1 ELSE 0 END AS quality,
            prompt IS NULL OR len(prompt) = 0 OR prompt[-1].role IS DISTINCT FROM 'user'
              OR NOT coalesce(list_bool_and(list_transform(prompt, lambda m: coalesce(
                     m.role IN ('system', 'user', 'assistant') AND m.content IS NOT NULL, false))), false) AS malformed
        FROM p
    )
    SELECT *,
        NOT malformed AND {_blank('prompt[-1].content')} AS empty_prompt,
        CASE WHEN malformed THEN NULL ELSE {_PROMPT_KEY} END AS pkey,
        CASE
            WHEN status <> 'ok' THEN 'failed_call'
            WHEN NOT corrected AND verdict = 'bad' THEN 'negative_feedback'
            WHEN NOT corrected AND verdict IS NULL AND NOT $keep THEN 'unlabelled'
            WHEN malformed THEN 'malformed'
            WHEN {_blank('prompt[-1].content')} OR {_blank('target')} THEN 'empty'
            WHEN ceil((list_sum(list_transform(prompt, lambda m: length(m.content) + 1)) - 1 + length(target)) / $cpt) > $max_tokens
              THEN 'oversized'
            WHEN {' OR '.join(exclude) or 'false'} THEN 'rule_exclude'
            WHEN NOT ({' AND '.join(include) or 'true'}) THEN 'rule_include'
        END AS dropped,
        NULL::BIGINT AS grp, false AS has_pii, NULL::VARCHAR AS carried, NULL::VARCHAR AS split
    FROM t
    """, params)  # fmt: skip
    con.unregister("sel")


def _drop(con, rids: np.ndarray | pa.Array, reason: str) -> None:
    con.register("_d", pa.table({"rid": pa.array(rids, pa.int64())}))
    con.execute("UPDATE rows SET dropped = $r FROM _d WHERE rows.rid = _d.rid", {"r": reason})
    con.unregister("_d")


def _held_out(con) -> None:
    """Table `held_out` (id, session_id, pkey, text, rid): what earlier versions held out
    (`_history`), selected now or not. `rid` is the row's own when it is selected, else one past
    the selection's, so `_sketch` can sketch it beside them; `text` is what it sketches."""
    con.execute(f"""
        CREATE TEMP TABLE held_out AS
        WITH b AS (
            SELECT id, session_id, CASE WHEN {_CORRECTED} THEN correction ELSE response END AS target,
                from_json(request, '{_REQUEST_SHAPE}') AS r
            FROM _history WHERE was_eval),
        p AS (SELECT id, session_id, target, {_PROMPT} AS prompt FROM b),
        q AS (SELECT id, session_id, {_PROMPT_KEY} AS pkey, {_SKETCH_TEXT} AS text FROM p)
        SELECT q.*, coalesce(rows.rid, (SELECT count(*) FROM rows) + row_number() OVER (ORDER BY q.id) - 1) AS rid
        FROM q LEFT JOIN rows USING (id)""")  # fmt: skip


def _sketch(con, cfg: CurationConfig) -> Sketch:
    """Exact keys and MinHash signatures of the rows still in play and of what earlier versions
    held out (for `_carry_over`), in one pass over their normalised text (the user turns and the
    target), streamed from DuckDB in batches."""
    from flywheel.dedup import sketch

    n = con.execute("SELECT (SELECT count(*) FROM rows) + (SELECT count(*) FROM held_out)").fetchall()[0][0]
    reader = con.sql(f"""
        SELECT rid, {_SKETCH_TEXT} AS text FROM rows WHERE dropped IS NULL
        UNION ALL
        SELECT rid, text FROM held_out WHERE rid NOT IN (SELECT rid FROM rows WHERE dropped IS NULL)""").to_arrow_reader(batch_size=100_000)  # fmt: skip
    return sketch(((batch.column(0).to_numpy(), batch.column(1)) for batch in reader), n,
                  threshold=cfg.near_dup_threshold, shingle_size=cfg.shingle_size, num_perm=cfg.num_perm, seed=cfg.seed)  # fmt: skip


def _in_play(con) -> np.ndarray:
    return con.sql("SELECT rid FROM rows WHERE dropped IS NULL").fetchnumpy()["rid"]


def _drop_all_but_best(con, groups: pa.Table, reason: str) -> None:
    """In each group of `groups` (rid, grp), drop all but the best-labelled member: correction >
    good feedback > none, then a label, then the newest; the id breaks ties, so the choice is the
    same on every run."""
    con.register("_g", groups)
    losers = con.sql("""
        SELECT rid FROM (
            SELECT rid, row_number() OVER (PARTITION BY _g.grp ORDER BY quality DESC, label IS NULL, ts DESC, id) AS n
            FROM rows JOIN _g USING (rid))
        WHERE n > 1""").to_arrow_table()  # fmt: skip
    con.unregister("_g")
    _drop(con, losers.column("rid"), reason)


def _exact_dedup(con, sk: Sketch) -> None:
    rids = _in_play(con)
    _drop_all_but_best(con, pa.table({"rid": rids, "grp": sk.exact[rids]}), "exact_duplicate")


def _pii_check(con, kinds: list[str] | None, chunk: int = 256) -> None:
    """Flag records (prompt, response, correction) that still contain PII: SFT survivors and
    preference-pair candidates. A compiled superset test (`flywheel.pii_scan`) picks the few
    records that may hold PII; the Python patterns decide on those, a chunk of records per call,
    re-scanning record by record only a chunk that hits."""
    from flywheel.pii import contains_pii
    from flywheel.pii_scan import suspects

    kinds_set = frozenset(kinds) if kinds else None
    reader = con.sql(f"""
        SELECT rid, {_PROMPT_TEXT} || chr(10) || response || chr(10) || coalesce(correction, '') AS text
        FROM rows
        WHERE dropped IS NULL OR (status = 'ok' AND NOT malformed AND (corrected OR verdict IS NOT NULL))
        """).to_arrow_reader(batch_size=100_000)  # fmt: skip
    hits = []
    for batch in reader:
        flagged = np.flatnonzero(suspects(batch.column(1)))
        rids = batch.column(0).to_numpy()[flagged]
        texts = batch.column(1).take(pa.array(flagged)).to_pylist()
        for start in range(0, len(texts), chunk):
            block = texts[start : start + chunk]
            if contains_pii("\n\n".join(block), kinds_set):
                hits.extend(rids[start + i] for i, text in enumerate(block) if contains_pii(text, kinds_set))
    if hits:
        con.register("_p", pa.table({"rid": pa.array(hits, pa.int64())}))
        con.execute("UPDATE rows SET has_pii = true FROM _p WHERE rows.rid = _p.rid")
        con.execute("UPDATE rows SET dropped = 'pii' WHERE has_pii AND dropped IS NULL")
        con.unregister("_p")


def _near_dedup(con, cfg: CurationConfig, sk: Sketch) -> None:
    from flywheel.dedup import near_duplicate_groups

    rids = _in_play(con)
    in_play = np.zeros(len(sk.valid), dtype=bool)
    in_play[rids] = True
    groups = pa.table({"rid": rids, "grp": near_duplicate_groups(sk, in_play, cfg.near_dup_threshold)[rids]})
    con.register("_g", groups)
    con.execute("UPDATE rows SET grp = _g.grp FROM _g WHERE rows.rid = _g.rid")
    con.unregister("_g")
    if cfg.near_dup_drop:
        _drop_all_but_best(con, groups, "near_duplicate")


def _carry_over(con, cfg: CurationConfig, history: pa.Table, sk: Sketch) -> None:
    """`rows.carried`: the side a kept row must keep because of an earlier version.

    Eval wins: a kept row is held out when it was, or shares a session or a prompt with an
    interaction held out before, or is in one near-duplicate group with one (`held_out`:
    selected now or not, kept or dropped). Groups chain through every row sketched, dropped
    ones too, as near-dedup's own groups do; an exact duplicate is a near duplicate."""
    from flywheel.dedup import near_duplicate_groups

    if history.num_rows:
        kept = _in_play(con)
        held = con.sql("SELECT rid FROM held_out").fetchnumpy()["rid"]
        group = near_duplicate_groups(sk, np.ones(len(sk.valid), dtype=bool), cfg.near_dup_threshold)
        tied = np.isin(group[kept], group[held[sk.valid[held]]])
        con.register("_tied", pa.table({"rid": kept, "tied": tied}))
        con.execute("""
            UPDATE rows SET carried = c.side FROM (
                SELECT r.rid, CASE
                    WHEN h.was_eval OR t.tied OR r.session_id IN (SELECT session_id FROM held_out)
                      OR r.pkey IN (SELECT pkey FROM held_out) THEN 'eval'
                    WHEN NOT h.was_eval THEN 'train' END AS side
                FROM rows r JOIN _tied t USING (rid) LEFT JOIN _history h USING (id)) c
            WHERE rows.rid = c.rid AND c.side IS NOT NULL""")  # fmt: skip
        con.unregister("_tied")
    con.unregister("_history")


def _counts(con) -> dict[str, int]:
    by_stage = dict(con.execute("SELECT coalesce(dropped, 'kept'), count(*) FROM rows GROUP BY ALL").fetchall())
    counts = {"selected": sum(by_stage.values())}
    counts.update({stage: by_stage.get(stage, 0) for stage in STAGES})
    counts["kept"] = by_stage.get("kept", 0)
    return counts


def curate(settings: Settings, *, project: str = "default", task: str, config: CurationConfig | None = None,
           since: datetime | None = None, until: datetime | None = None) -> DatasetVersion:
    """Curate the interactions of `task` (in `project`, `since` <= ts < `until`, UTC) into a
    dataset version under `settings.home / "datasets" / task / <id>` and register it.

    Same data and same config → same id, and nothing is written (`created=False`).
    Raises `CurationError` for an unknown task, an empty selection or too few examples.
    """
    from flywheel.curation_output import content_id, output_tables, register, version_exists, write_version
    from flywheel.split import preference_pairs, split

    cfg = config or CurationConfig()
    since, until = store.naive_utc(since), store.naive_utc(until)
    sel, history = _select(settings, project, task, since, until)

    con = duckdb.connect()  # in memory: the store is closed while we work
    # Never checkpoint this scratch database: a checkpoint compresses the 1M-row table (seconds)
    # only for the next UPDATE to touch it.
    con.execute("SET checkpoint_threshold = '1TB'")
    try:
        _prepare(con, sel, cfg)
        del sel
        con.register("_history", history)  # read by _held_out and _carry_over
        _held_out(con)
        sk = _sketch(con, cfg)
        # PII before dedup: the best-labelled member of a group must be one that can be kept
        # (its response or correction may hold PII where its duplicates' do not).
        if cfg.pii_check:
            _pii_check(con, cfg.pii_kinds)
        _exact_dedup(con, sk)
        _near_dedup(con, cfg, sk)
        _carry_over(con, cfg, history, sk)
        del sk, history
        counts = _counts(con)
        if counts["kept"] < cfg.min_examples:
            stages = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            raise CurationError(f"only {counts['kept']} examples of task {task!r} survive curation, fewer than "
                                f"min_examples={cfg.min_examples} ({stages})")  # fmt: skip
        counts.update(split(con, cfg))
        counts.update(preference_pairs(con, cfg.preference_pairs))
        counts["corrections"] = con.execute("SELECT count(*) FROM rows WHERE dropped IS NULL AND corrected").fetchall()[0][0]

        window = {"since": since.isoformat() if since else None, "until": until.isoformat() if until else None}
        record_config = {"curation": cfg.to_dict(), "project": project, "task": task, **window}
        tables = output_tables(con)
        version_id = content_id(tables, {"curation": cfg.to_dict(), "project": project, "task": task})
        path = settings.home / "datasets" / task / version_id
        existing = version_exists(settings, version_id)
        if existing is not None:
            return DatasetVersion(version_id, project, task, Path(existing["path"]), existing["counts"],
                                  created=False, parent_id=existing["parent_id"])  # fmt: skip
        write_version(tables, path, version_id, project, task, counts)
        del tables
        created, parent_id = register(con, settings, version_id=version_id, project=project, task=task, path=path,
                                      config=record_config, query=SELECT_SQL, counts=counts)  # fmt: skip
    finally:
        con.close()
    return DatasetVersion(version_id, project, task, path, counts, created=created, parent_id=parent_id)

