"""Curation: one task's production traffic → a versioned, leak-free training dataset.

Every model Flywheel trains is only as good as this step, so each stage is explicit and counted:

    select (one short read of the store)
    → targets: a correction beats the logged response; negative feedback without one is dropped;
      a tool call (logged or corrected, and the calls and results earlier in the chat) becomes
      text in `flywheel.tools`' format, the tools offered stay beside it, and their names are part
      of the dedup and split keys
    → filters: failed calls, malformed messages, empty, oversized, regex rules      (SQL)
    → exact keys and MinHash signatures: one compiled pass over the text    (flywheel.curate.dedup)
    → PII re-check: a record that still holds PII after ingestion redaction  (flywheel.curate.pii_scan, .pii)
    → exact dedup (normalised words), keeping the best-labelled member              (SQL)
    → near dedup (MinHash + LSH), keeping the best-labelled member
    → carry-over: rows tied to what earlier versions held out stay held out (sketched too)
    → leak-free split (flywheel.curate.split) and DPO preference pairs
    → content hash → files (flywheel.curate.output) → `datasets` record with lineage

The store is opened three times, briefly: to read the selection (and the sides earlier versions
gave it) into Arrow, to see whether the version exists, and to register it (DESIGN: nobody keeps
the file longer than one unit of work; the ingestion server is waiting). All work in between
runs on an in-memory DuckDB over Arrow, set-at-a-time, and in numba over Arrow's bytes; no Python
runs per row except the PII patterns, on the few records a compiled scan flags as possibly holding
PII. (1M interactions: ~14.5 s, ~3.3 GB peak, `bench/curate.py`.) The config and result types
live in `flywheel.curate.config`; the SQL it runs and the list of stages, in `flywheel.curate.stages`.
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
from flywheel.curate.config import CurationConfig, CurationError, DatasetVersion
from flywheel.curate.stages import (
    CORRECTED,
    HISTORY_SQL,
    PROMPT,
    PROMPT_KEY,
    PROMPT_TEXT,
    REQUEST_SHAPE,
    SELECT_SQL,
    SKETCH_TEXT,
    STAGES,
    TARGET,
    TOOLS,
    blank,
    dropped_case,
    rule,
)
from flywheel.settings import Settings

if TYPE_CHECKING:  # numba (in flywheel.curate.dedup) is imported only when a curation runs
    from flywheel.curate.dedup import Sketch

__all__ = ["CurationConfig", "CurationError", "DatasetVersion", "curate"]


def _select(settings: Settings, project: str, task: str, since, until) -> tuple[pa.Table, pa.Table]:
    """The selection, and the side earlier versions of the task gave each interaction (for the
    sticky split: `flywheel.curate.split`)."""
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
    exclude = [r for r in (rule(PROMPT_TEXT, cfg.prompt_exclude, params, "pex"),
                           rule("target", cfg.response_exclude, params, "rex")) if r]  # fmt: skip
    include = [r for r in (rule(PROMPT_TEXT, cfg.prompt_include, params, "pin"),
                           rule("target", cfg.response_include, params, "rin")) if r]  # fmt: skip
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
            from_json(request, '{REQUEST_SHAPE}') AS r
        FROM sel
    ), p AS (
        SELECT * EXCLUDE (r),
            {PROMPT} AS prompt,
            {TOOLS} AS tools,
            {CORRECTED} AS corrected,
            CASE WHEN thumbs = false OR rating <= $bad THEN 'bad'
                 WHEN thumbs OR rating >= $good THEN 'good' END AS verdict
        FROM b
    ), t AS (
        SELECT *,
            {TARGET} AS target,
            CASE WHEN corrected THEN 2 WHEN verdict = 'good' THEN 1 ELSE 0 END AS quality,
            -- the model answers a user turn or tool results, never its own turn
            prompt IS NULL OR len(prompt) = 0 OR prompt[-1].role NOT IN ('user', 'tool')
              OR NOT coalesce(list_bool_and(list_transform(prompt, lambda m: coalesce(
                     m.role IN ('system', 'user', 'assistant', 'tool') AND m.content IS NOT NULL, false))), false) AS malformed
        FROM p
    )
    SELECT *,
        NOT malformed AND {blank('prompt[-1].content')} AS empty_prompt,
        CASE WHEN malformed THEN NULL ELSE {PROMPT_KEY} END AS pkey,
        {dropped_case(exclude, include)} AS dropped,
        NULL::BIGINT AS grp, false AS has_pii, NULL::VARCHAR AS carried, NULL::VARCHAR AS split
    FROM t
    """, params)  # fmt: skip
    con.unregister("sel")


def _tool_text(texts: pa.Array) -> pa.Array:
    """SQL `tool_text`: a stored assistant answer (a response, a correction, or a message with
    `tool_calls` as JSON) as the text `flywheel.tools` trains and serves, so a tool call is a
    target like any answer. Only texts that may hold calls go through Python."""
    from flywheel import tools

    maybe = pc.fill_null(pc.or_(pc.match_substring_regex(texts, r"^\s*[\[{]"), pc.match_substring(texts, "<tool_call>")), False)
    if not pc.any(maybe).as_py():
        return texts
    out = texts.to_pylist()
    for i in np.flatnonzero(maybe.to_numpy(zero_copy_only=False)):
        out[i] = tools.assistant_text(tools.as_message(out[i]))
    return pa.array(out, pa.string())


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
            SELECT id, session_id, tool_text(CASE WHEN {CORRECTED} THEN correction ELSE response END) AS target,
                from_json(request, '{REQUEST_SHAPE}') AS r
            FROM _history WHERE was_eval),
        p AS (SELECT id, session_id, target, {PROMPT} AS prompt, {TOOLS} AS tools FROM b),
        q AS (SELECT id, session_id, {PROMPT_KEY} AS pkey, {SKETCH_TEXT} AS text FROM p)
        SELECT q.*, coalesce(rows.rid, (SELECT count(*) FROM rows) + row_number() OVER (ORDER BY q.id) - 1) AS rid
        FROM q LEFT JOIN rows USING (id)""")  # fmt: skip


def _sketch(con, cfg: CurationConfig) -> Sketch:
    """Exact keys and MinHash signatures of the rows still in play and of what earlier versions
    held out (for `_carry_over`), in one pass over their normalised text (the user turns and the
    target), streamed from DuckDB in batches."""
    from flywheel.curate.dedup import sketch

    n = con.execute("SELECT (SELECT count(*) FROM rows) + (SELECT count(*) FROM held_out)").fetchall()[0][0]
    reader = con.sql(f"""
        SELECT rid, {SKETCH_TEXT} AS text FROM rows WHERE dropped IS NULL
        UNION ALL
        SELECT rid, text FROM held_out WHERE rid NOT IN (SELECT rid FROM rows WHERE dropped IS NULL)""").fetch_arrow_reader(batch_size=100_000)  # fmt: skip
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
    preference-pair candidates. A compiled superset test (`flywheel.curate.pii_scan`) picks the few
    records that may hold PII; the Python patterns decide on those, a chunk of records per call,
    re-scanning record by record only a chunk that hits."""
    from flywheel.curate.pii_scan import suspects
    from flywheel.ingest.pii import contains_pii

    kinds_set = frozenset(kinds) if kinds else None
    # (tool-call arguments and results are in the prompt's text and the raw response/correction)
    reader = con.sql(f"""
        SELECT rid, {PROMPT_TEXT} || chr(10) || response || chr(10) || coalesce(correction, '')
            || chr(10) || coalesce(tools, '') AS text
        FROM rows
        WHERE dropped IS NULL OR (status = 'ok' AND NOT malformed AND (corrected OR verdict IS NOT NULL))
        """).fetch_arrow_reader(batch_size=100_000)  # fmt: skip
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
    from flywheel.curate.dedup import near_duplicate_groups

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
    from flywheel.curate.dedup import near_duplicate_groups

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
    counts.update({stage.name: by_stage.get(stage.name, 0) for stage in STAGES})
    counts["kept"] = by_stage.get("kept", 0)
    return counts


def curate(settings: Settings, *, project: str = "default", task: str, config: CurationConfig | None = None,
           since: datetime | None = None, until: datetime | None = None) -> DatasetVersion:
    """Curate the interactions of `task` (in `project`, `since` <= ts < `until`, UTC) into a
    dataset version under `settings.home / "datasets" / task / <id>` and register it.

    Same data and same config → same id, and nothing is written (`created=False`).
    Raises `CurationError` for an unknown task, an empty selection or too few examples.
    """
    from flywheel.curate.output import (
        content_id,
        output_tables,
        register,
        version_exists,
        write_version,
    )
    from flywheel.curate.split import preference_pairs, split

    cfg = config or CurationConfig()
    since, until = store.naive_utc(since), store.naive_utc(until)
    sel, history = _select(settings, project, task, since, until)

    con = duckdb.connect()  # in memory: the store is closed while we work
    con.create_function("tool_text", _tool_text, [duckdb.sqltype("VARCHAR")], duckdb.sqltype("VARCHAR"), type="arrow")
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

