"""The API never answers a client's input with a 5xx: a bounded schemathesis run over every operation
of the OpenAPI document, and a Hypothesis fuzzer that puts any JSON value into any field of a valid
body of each POST endpoint (a real service on 127.0.0.1 with a local tiny model behind the gateway)."""

from __future__ import annotations

import collections

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from conftest import auth, make_keys
from flywheel import store
from flywheel.settings import load_settings
from serving.app import create_app, in_thread

pytestmark = pytest.mark.slow
FUZZ = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate])
CHAT = [{"role": "user", "content": "my parcel is late"}]
VALID = {  # one valid body per POST endpoint; the fuzzer replaces one field at a time
    "/v1/interactions": {"interactions": [{"id": "it-1", "task": "t", "model": "m", "response": "r", "messages": CHAT,
                                           "metadata": {"k": "v"}, "user_id": "u1", "tags": ["a"]}]},
    "/v1/feedback": {"feedback": [{"interaction_id": "it-1", "kind": "label", "value": "billing", "comment": "c"}]},
    "/v1/chat/completions": {"model": "tiny", "messages": CHAT, "max_tokens": 3, "temperature": 0.5, "seed": 1},
    "/v1/completions": {"model": "tiny", "prompt": "my parcel", "max_tokens": 3, "top_p": 0.9, "stop": ["x"]},
    "/v1/load_lora_adapter": {"lora_name": "a", "lora_path": "/tmp"},
    "/v1/unload_lora_adapter": {"lora_name": "a"},
}  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from flywheel.demo.tiny import build_tiny_model, ticket_texts

    home = tmp_path_factory.mktemp("fuzz")
    base = build_tiny_model(home / "base", ticket_texts(50), max_length=64)
    (home / "flywheel.toml").write_text(f'[gateway]\nmax_tokens = 4\n\n[routes.tiny]\nkind = "local"\npath = "{base}"\n')
    with store.connect(load_settings(home).db_path):
        pass
    key = make_keys(home, "acme", role="admin")["acme"]
    with in_thread(create_app(load_settings(home))) as url:
        httpx.post(f"{url}/v1/interactions", json=VALID["/v1/interactions"], headers=auth(key), timeout=60)  # feedback's target
        yield url, key


def test_schemathesis_over_the_whole_api_finds_no_server_error(service):
    url, key = service
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    statuses: dict[str, collections.Counter] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        seen = statuses[f"{operation.method.upper()} {operation.path}"] = collections.Counter()

        @settings(FUZZ, max_examples=25)
        @given(case=operation.as_strategy())
        def call(case):
            seen[case.call(headers=auth(key)).status_code] += 1

        call()
    print({name: dict(seen) for name, seen in statuses.items()})
    assert all(operation in statuses for operation in ("POST /v1/interactions", "POST /v1/chat/completions"))
    server_errors = {name: n for name, seen in statuses.items() if (n := sum(c for s, c in seen.items() if s >= 500))}
    assert server_errors == {}
    posted = sum(sum(seen.values()) for name, seen in statuses.items() if name.startswith("POST"))
    assert posted >= 25 * len(VALID)  # the bodies were generated, not skipped


def _paths(value, path=()):
    """Every place in a JSON body a value can be put: each key and list index, at any depth."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*path, i))


def _replace(body, path, new):
    if not path:
        return new
    copy = list(body) if isinstance(body, list) else dict(body)
    copy[path[0]] = _replace(body[path[0]], path[1:], new)
    return copy


@pytest.mark.parametrize("endpoint", list(VALID))
def test_any_json_value_in_any_field_of_a_post_body_is_a_client_error(service, endpoint):
    url, key = service
    body, statuses = VALID[endpoint], collections.Counter()
    with httpx.Client(base_url=url, headers=auth(key), timeout=60) as client:

        @settings(FUZZ, max_examples=40)
        @given(path=st.sampled_from(list(_paths(body))), value=JSON)
        def post(path, value):
            response = client.post(endpoint, json=_replace(body, path, value))
            statuses[response.status_code] += 1
            assert response.status_code < 500, (path, value, response.text[:300])

        post()
        assert client.post(endpoint, content=b'{"unterminated').status_code == 400
    print(endpoint, dict(statuses))
    assert sum(statuses.values()) == 40


def test_the_openapi_document_describes_every_body_and_the_bearer_scheme(service):
    url, _ = service
    doc = httpx.get(f"{url}/openapi.json", timeout=30).json()
    posts = {path: ops["post"] for path, ops in doc["paths"].items() if "post" in ops}
    assert set(posts) == set(VALID)
    for path, operation in posts.items():
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in doc["components"]["schemas"], path
    assert doc["components"]["schemas"]["InteractionIn"]["required"] == ["task", "model"]  # (or response_tool_calls)
    assert doc["components"]["securitySchemes"]["bearer"] == {**doc["components"]["securitySchemes"]["bearer"],
                                                              "type": "http", "scheme": "bearer"}  # fmt: skip
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/healthz"]["get"]["security"] == []
