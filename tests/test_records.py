"""Item validation: any JSON a client sends either becomes a row or an ItemError naming the field
(never another exception, which the service would turn into a 500)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.ingest.records import INTERACTION_COLUMNS, ItemError, Limits, feedback_row, interaction_row

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
