"""Item validation: any JSON a client sends either becomes a row or an ItemError naming the field
(never another exception, which the service would turn into a 500)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.ingest.records import INTERACTION_COLUMNS, ItemError, Limits, feedback_row, interaction_row
from flywheel.ingest.text_fields import ROLES

LIMITS = Limits(max_text_chars=100, max_messages=3)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ["id", "task", "model", "messages", "prompt", "response", "ts", "latency_ms", "prompt_tokens",
          "completion_tokens", "cost_usd", "status", "user_id", "session_id", "tags", "metadata", "params"]  # fmt: skip
items = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=10) | json_values
good = {"task": "t", "model": "m", "messages": [{"role": "user", "content": "hi"}], "response": "ok"}


@settings(max_examples=300, deadline=None)
@given(items)
def test_any_json_is_a_row_or_an_item_error(item):
    for make in (interaction_row, feedback_row):
        try:
            make(msgspec.json.encode(item), project="p", redact=True, limits=LIMITS)
        except ItemError as exc:
            assert str(exc)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIELDS), json_values)
def test_one_field_changed_on_a_good_item(field, value):
    try:
        row = interaction_row(msgspec.json.encode({**good, field: value}), project="p", redact=False, limits=LIMITS)
    except ItemError as exc:
        assert str(exc).split(":")[0].split("[")[0].split(".")[0] in (field, "messages")
    else:
        assert len(row) == len(INTERACTION_COLUMNS)


@pytest.mark.parametrize(("change", "message"), [
    ({"messages": [{"role": "user", "content": "x" * 101}]}, "messages[0].content: text of 101 characters is over the limit of 100"),
    ({"messages": [{"role": "user", "content": "a"}] * 4}, "messages: 4 messages is over the limit of 3"),
    ({"messages": []}, "messages: expected a non-empty array"),
    ({"prompt_tokens": -1}, "prompt_tokens: Expected `int` >= 0"),
    ({"ts": "yesterday"}, "ts: Invalid RFC3339"),
    ({"status": "maybe"}, "status: Invalid enum value 'maybe'"),
])  # fmt: skip
def test_messages_name_the_field_and_the_limit(change, message):
    with pytest.raises(ItemError) as info:
        interaction_row(msgspec.json.encode({**good, **change}), project="p", redact=False, limits=LIMITS)
    assert str(info.value).startswith(message)


def test_timestamps_are_stored_in_utc_and_pii_counted():
    row = dict(zip(INTERACTION_COLUMNS, interaction_row(
        msgspec.json.encode({**good, "ts": "2026-01-02T03:04:05+02:00", "response": "mail me: a.b@example.org"}),
        project="p", redact=True, limits=LIMITS)))  # fmt: skip
    assert row["ts"].isoformat() == "2026-01-02T01:04:05"
    assert row["response"] == "mail me: <EMAIL>" and row["pii_redacted"] == 1


def test_repeated_system_prompts_are_redacted_every_time():
    item = {**good, "messages": [{"role": "system", "content": "Escalate to ops@example.com."},
                                 {"role": "user", "content": "hi"}]}  # fmt: skip
    for _ in range(3):  # the second and third answers come from the cache of redacted prompts
        row = dict(zip(INTERACTION_COLUMNS, interaction_row(msgspec.json.encode(item), project="p", redact=True,
                                                            limits=LIMITS)))  # fmt: skip
        assert msgspec.json.decode(row["request"])["messages"][0]["content"] == "Escalate to <EMAIL>."
        assert row["pii_redacted"] == 1
    raw = dict(zip(INTERACTION_COLUMNS, interaction_row(msgspec.json.encode(item), project="p", redact=False,
                                                        limits=LIMITS)))  # fmt: skip
    assert "ops@example.com" in raw["request"]


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    items: list[int]


@pytest.mark.parametrize("body, top_level, expected", [
    (b'{"items": ["x"]}', True, ("items[0]", "Expected `int`, got `str`")),
    (b"{}", True, ("items", "required field missing")),
    (b'{"items": [], "bogus": 1}', True, ("bogus", "unknown field")),
    (b'{"items": [], "bogus": 1}', False, (None, "Object contains unknown field `bogus`")),
    (b"[]", True, (None, "Expected `object`, got `array`")),
])  # fmt: skip
def test_a_msgspec_error_names_its_field(body, top_level, expected):
    from flywheel.ingest.records import field_error

    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.json.decode(body, type=_Envelope)
    assert field_error(info.value, name_top_level=top_level) == expected


# --- totality: odd JSON in every field is a row or an ItemError naming the field (issue 19) ---
def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


ODD = [b"null", b"true", b"0", b"-1", b"1.5", b"1e308", b"18446744073709551616", b"-9223372036854775809",
       b'""', b'"x"', b'"\\u0000"', b'"\\ud83d\\ude00\\u200b"', b'"' + b"y" * 101 + b'"', b"[]", b"[null]", b"[[]]",
       b"[{}]", b"{}", b'{"": null}', b'{"role": {}}', b'[{"type": "text", "text": 5}]', nested(40), nested(980),
       b"[" * 980 + b"]" * 980]  # fmt: skip
MESSAGE_KEYS = ["role", "content", "name", "tool_calls", "tool_call_id", "function_call"]
FEEDBACK = {"interaction_id": "i1", "kind": "label", "value": "billing"}
FEEDBACK_FIELDS = ["interaction_id", "kind", "value", "id", "comment", "user_id", "ts"]


def with_odd(item: dict, odd: bytes) -> bytes:
    return msgspec.json.encode(item).replace(b'"__ODD__"', odd)


def odd_interactions():
    """(field the error must name, item bytes) for every field and every odd value."""
    prompt_form = {k: v for k, v in good.items() if k != "messages"}
    for field in FIELDS:
        for odd in ODD:
            yield field, with_odd({**(prompt_form if field == "prompt" else good), field: "__ODD__"}, odd)
    for key in MESSAGE_KEYS:
        for odd in ODD:
            yield "messages", with_odd({**good, "messages": [{"role": "user", "content": "hi", key: "__ODD__"}]}, odd)
            yield "messages", with_odd({**good, "messages": [{"role": "user", "content": ["__ODD__"]}]}, odd)


def named_field(error: str) -> str:
    return error.split(":")[0].split("[")[0].split(".")[0].split(" ")[0]


def test_odd_values_in_every_field_are_rows_or_errors_naming_the_field(tmp_path):
    from flywheel import store
    from flywheel.ingest.interactions import write_feedback, write_interactions

    rows, errors = [], 0
    for field, raw in odd_interactions():
        for redact in (True, False):
            try:
                rows.append(interaction_row(raw, project="p", redact=redact, limits=LIMITS, secret=b"k"))
            except ItemError as exc:
                errors += 1
                allowed = {field, "messages"} if field == "prompt" else {field}  # (one of the two is required)
                assert named_field(str(exc)) in allowed, (raw[:200], str(exc))
    feedback = []
    for field in FEEDBACK_FIELDS:
        for odd in ODD:
            try:
                feedback.append(feedback_row(with_odd({**FEEDBACK, field: "__ODD__"}, odd), project="p", redact=True,
                                             limits=LIMITS, secret=b"k"))  # fmt: skip
            except ItemError as exc:
                errors += 1
                assert named_field(str(exc)) == field, (field, odd[:200], str(exc))
    assert rows and feedback and errors
    interaction_ids = {r.id for r in rows}
    feedback = [f._replace(interaction_id=rows[0].id) for f in feedback]
    with store.connect(tmp_path / "t.duckdb") as con:  # and every row made is one the store takes
        assert len(write_interactions(con, rows)) == len(interaction_ids)
        assert write_feedback(con, feedback)[1] == set()


def test_the_gateway_records_odd_messages_as_sent_and_redacted():
    """A route answered them, so they are recorded whatever their shape; only limits refuse them."""
    for key in MESSAGE_KEYS:
        for odd in ODD:
            raw = with_odd({**good, "messages": [{"role": "user", "content": "hi", key: "__ODD__"}]}, odd)
            try:
                row = interaction_row(raw, project="p", redact=True, limits=LIMITS, source="gateway", secret=b"k")
            except ItemError as exc:
                assert "over the limit" in str(exc) or "nested too deeply" in str(exc), str(exc)
            else:
                assert row.source == "gateway"
    raw = msgspec.json.encode({**good, "messages": [{"role": {"who": "ann@example.com"}, "content": 7}]})
    row = interaction_row(raw, project="p", redact=True, limits=LIMITS, source="gateway", secret=b"k")
    assert msgspec.json.decode(row.request)["messages"] == [{"role": {"who": "<EMAIL>"}, "content": 7}]
    with pytest.raises(ItemError, match=r"^messages\[0\]\.role: expected one of .*, got \{'who'"):
        interaction_row(raw, project="p", redact=True, limits=LIMITS, secret=b"k")


def test_the_reported_item_is_an_error_naming_the_role():
    raw = b'{"task":"t","model":"m","response":"r","messages":[{"role":{},"content":"x"}]}'
    with pytest.raises(ItemError, match=r"^messages\[0\]\.role: expected one of"):
        interaction_row(raw, project="p", redact=True, limits=LIMITS)


message = st.fixed_dictionaries({}, optional={"role": json_values | st.sampled_from(sorted(ROLES)),
                                              "content": json_values, "name": json_values,
                                              "tool_calls": json_values})  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(message, max_size=3), st.sampled_from(["ingest", "gateway"]), st.booleans())
def test_any_messages_are_a_row_or_an_item_error(messages, source, redact):
    try:
        row = interaction_row(msgspec.json.encode({**good, "messages": messages}), project="p", redact=redact,
                              limits=LIMITS, source=source, secret=b"k")  # fmt: skip
    except ItemError as exc:
        assert named_field(str(exc)) == "messages", str(exc)
    else:
        assert len(msgspec.json.decode(row.request)["messages"]) == len(messages)
