"""What curation reads and why it drops a row, as data: the SQL `flywheel.curate.pipeline` runs.

`SELECT_SQL` and `HISTORY_SQL` are the two reads of the store; the fragments after them turn a
stored request into chat messages and the texts that splitting and dedup compare. `STAGES` is the
one list of reasons a row is dropped, in the order they apply: the SQL that assigns the first
one (`dropped_case`), the counts of a version and the labels of its report are all made from it.
"""

from __future__ import annotations

from dataclasses import dataclass

# The selection: one scan of the task's interactions and their feedback (latest value of each
# kind wins: a user may change their mind). Kept as text: it is stored with the version.
SELECT_SQL = """
WITH sel AS (
    SELECT id, ts, session_id, status, request, -- (an answer that called tools: a message with its calls)
        CASE WHEN response_tool_calls IS NULL THEN response
            ELSE json_object('content', response, 'tool_calls', response_tool_calls)::VARCHAR END AS response
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
    CASE WHEN h.was_eval AND i.response_tool_calls IS NULL THEN i.response WHEN h.was_eval
        THEN json_object('content', i.response, 'tool_calls', i.response_tool_calls)::VARCHAR END AS response, c.correction
FROM h LEFT JOIN interactions i ON i.project = $project AND i.id = h.id
LEFT JOIN (
    SELECT f.interaction_id, first(f.value ->> '$' ORDER BY f.ts DESC, f.id DESC) AS correction
    FROM feedback f WHERE f.project = $project AND f.kind = 'correction' GROUP BY f.interaction_id
) c ON h.was_eval AND c.interaction_id = h.id
"""

# The request is parsed once against a fixed shape (DuckDB's typed `from_json`, ~15x faster
# than extracting paths per message). Messages become {role, content} structs: `prompt` requests
# become one user turn, `developer` is a system turn, content given as text parts is joined; an
# assistant turn's tool calls and a tool result become text in `flywheel.tools`' format (the
# `tool_text` function, `flywheel.curate.pipeline`), so a call is a target like any answer; anything
# else (images) leaves a NULL content and makes the row malformed for SFT. The tools offered
# (`tools`, or `params.tools`) are kept as JSON text for training to render.
REQUEST_SHAPE = ('{"messages": [{"role": "VARCHAR", "content": "JSON", "tool_calls": "JSON"}], "prompt": "JSON", '
                 '"tools": "JSON", "params": {"tools": "JSON"}}')
_TEXT = """CASE json_type({c})
        WHEN 'VARCHAR' THEN {c} ->> '$'
        WHEN 'ARRAY' THEN CASE WHEN list_bool_and(list_transform(CAST({c} AS JSON[]),
                lambda q: coalesce(json_type(q, '$.text') = 'VARCHAR', false)))
            THEN array_to_string(list_transform(CAST({c} AS JSON[]), lambda q: q ->> '$.text'), '') END
    END"""
MESSAGES = f"""
list_transform(r.messages, lambda m: {{
    'role': CASE m.role WHEN 'developer' THEN 'system' WHEN 'function' THEN 'tool' ELSE m.role END,
    'content': CASE WHEN m.role = 'assistant' AND json_array_length(m.tool_calls) > 0
        THEN tool_text(json_object('content', m.content, 'tool_calls', m.tool_calls)::VARCHAR)
        ELSE {_TEXT.format(c='m.content')} END}})
"""
PROMPT = f"""CASE WHEN r.messages IS NOT NULL THEN {MESSAGES}
    WHEN json_type(r.prompt) = 'VARCHAR' THEN [{{'role': 'user', 'content': r.prompt ->> '$'}}] END"""
TOOLS = """CASE WHEN json_array_length(coalesce(r.tools, r.params.tools)) > 0
    THEN coalesce(r.tools, r.params.tools)::VARCHAR END"""
# The names of the tools offered, sorted: two prompts offering different tools are different prompts.
TOOL_NAMES = """array_to_string(list_sort(list_transform(CAST(tools AS JSON[]),
    lambda t: coalesce(t ->> '$.function.name', t ->> '$.name', ''))), ',')"""
PROMPT_TEXT = "array_to_string(list_transform(prompt, lambda m: m.content), chr(10))"
USER_TEXT = "array_to_string(list_transform(list_filter(prompt, lambda m: m.role <> 'system'), lambda m: m.content), chr(10))"
_WITH_TOOLS = f"coalesce(chr(10) || 'tools: ' || {TOOL_NAMES}, '')"  # ('' without tools: keys as before)
PROMPT_KEY = f"hash(lower({USER_TEXT} || {_WITH_TOOLS}))"  # what links rows with the same prompt (split, pairs)
TARGET = "tool_text(CASE WHEN corrected THEN correction ELSE response END)"  # (a call in flywheel.tools' text)


def blank(column: str) -> str:
    # (a regex, not trim(x, chars): DuckDB's trim with a character set is ~40x slower)
    return f"regexp_full_match({column}, '\\s*')"


CORRECTED = f"coalesce(NOT {blank('correction')}, false)"  # (a blank correction is none)
SKETCH_TEXT = f"lower({USER_TEXT} || chr(10) || target || {_WITH_TOOLS})"  # what dedup compares


def rule(column: str, patterns: list[str], params: dict, name: str) -> str | None:
    """SQL that is true when `column` matches any of `patterns` (given as the parameter `$name`,
    added to `params`), or None without patterns."""
    if not patterns:
        return None
    params[name] = "|".join(f"(?:{p})" for p in patterns)
    return f"regexp_matches({column}, ${name})"


@dataclass(frozen=True)
class Stage:
    """A reason to drop a row. `name` is what `rows.dropped` and the version's counts call it,
    `label` what the report says; `condition` is the SQL (over one row of `_prepare`'s CTE `t`,
    with its parameters $keep, $cpt and $max_tokens, and `{exclude}`/`{include}` for the
    config's regex rules) for a stage the SQL decides, None for one a later compiled step
    decides (PII, dedup), which only ever drops rows every SQL stage kept."""

    name: str
    label: str
    condition: str | None = None


_TOKENS = ("ceil((list_sum(list_transform(prompt, lambda m: length(m.content) + 1)) - 1 + length(target)"
           " + coalesce(length(tools), 0)) / $cpt)")

STAGES: tuple[Stage, ...] = (
    Stage("failed_call", "failed calls (status error)", "status <> 'ok'"),
    Stage("negative_feedback", "negative feedback, no correction", "NOT corrected AND verdict = 'bad'"),
    Stage("unlabelled", "no good feedback (keep_unlabelled off)", "NOT corrected AND verdict IS NULL AND NOT $keep"),
    Stage("malformed", "malformed messages", "malformed"),
    Stage("empty", "empty prompt or target", f"{blank('prompt[-1].content')} OR {blank('target')}"),
    Stage("oversized", "over max_tokens", f"{_TOKENS} > $max_tokens"),
    Stage("rule_exclude", "regex exclude rules", "{exclude}"),
    Stage("rule_include", "regex include rules not matched", "NOT ({include})"),
    Stage("pii", "PII after redaction"),
    Stage("exact_duplicate", "exact duplicates"),
    Stage("near_duplicate", "near duplicates (MinHash)"),
)


def dropped_case(exclude: list[str], include: list[str]) -> str:
    """The SQL CASE naming the first stage of `STAGES` whose condition a row meets (NULL while it
    meets none), given the config's regex rules (`rule`): a row is excluded by any exclude rule
    and must match every include rule."""
    rules = {"exclude": " OR ".join(exclude) or "false", "include": " AND ".join(include) or "true"}
    whens = "".join(f"\n    WHEN {s.condition.format(**rules)} THEN '{s.name}'" for s in STAGES if s.condition)
    return f"CASE{whens}\nEND"
