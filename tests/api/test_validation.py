"""Validation that agrees with itself and with OpenAI, in every execution mode.

Invalid Unicode is a 400 at the boundary wherever text enters (never a 500 from a
tokenizer, never a store's error page); metadata has OpenAI's limits on create and
update alike; ids carry no control characters; the OpenAPI document lists the statuses
the server really sends, in its error shape, and no 422; a 405 names what is allowed.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of

SURROGATE = '"\\ud800x"'


def _raw(http: httpx.Client, path: str, body: str) -> httpx.Response:
    return http.post(path, content=body, headers={"content-type": "application/json"})


def _error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize("where", ["content", "metadata", "tool"])
def test_lone_surrogate_in_chat_is_400(api: LiveApi, http: httpx.Client, where: str) -> None:
    model = models_of(api)["openai"]
    content = SURROGATE if where == "content" else '"Hi"'
    metadata = f'{{"k": {SURROGATE}}}' if where == "metadata" else "{}"
    tools = ""
    if where == "tool":
        tools = (', "tools": [{"type": "function", "function": {"name": "f", '
                 f'"description": {SURROGATE}, "parameters": {{"type": "object"}}}}}}]')
    body = (f'{{"model": "{model}", "max_tokens": 2, "metadata": {metadata}, '
            f'"messages": [{{"role": "user", "content": {content}}}]{tools}}}')
    err = _error(_raw(http, "/v1/chat/completions", body), 400)
    assert err["code"] == "invalid_unicode" and err["param"]


def test_lone_surrogate_in_embeddings_and_completions_is_400(api: LiveApi,
                                                             http: httpx.Client) -> None:
    embedder, llm = models_of(api)["onnx"], models_of(api)["openai"]
    err = _error(_raw(http, "/v1/embeddings", f'{{"model": "{embedder}", "input": '
                                              f'["fine", {SURROGATE}]}}'), 400)
    assert err["param"] == "input[1]"
    err = _error(_raw(http, "/v1/completions", f'{{"model": "{llm}", "max_tokens": 2, '
                                               f'"prompt": {SURROGATE}}}'), 400)
    assert err["param"] == "prompt"


def test_metadata_limits_on_create_and_update(api: LiveApi, http: httpx.Client) -> None:
    model = models_of(api)["openai"]
    base = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k" * 65: "v"}, {"k": "v" * 513}):
        _error(http.post("/v1/chat/completions", json={**base, "metadata": metadata}), 400)
    ok = http.post("/v1/chat/completions", json={**base, "metadata": {"k": "v" * 512}})
    assert ok.status_code == 200, ok.text
    cid = ok.json()["id"]
    for metadata in ({f"k{i}": "v" for i in range(17)}, {"k": "v" * 513}):
        _error(http.post(f"/v1/chat/completions/{cid}", json={"metadata": metadata}), 400)


def test_control_characters_in_model_ids_are_400(http: httpx.Client) -> None:
    for bad in ("a\u0000b", "tab\there", "new\nline"):
        r = http.post("/v1/models", json={"model_id": bad, "provider_id": "openai"})
        _error(r, 400)


def test_openapi_documents_the_real_statuses(http: httpx.Client) -> None:
    doc = http.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc.get("components", {}).get("schemas", {})
    operations = [op for path in doc["paths"].values() for op in path.values()]
    assert operations
    for op in operations:
        responses = op["responses"]
        assert "422" not in responses
        for status in ("400", "401", "404", "429", "500"):
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            # OpenAI's error shape; Anthropic's on the Anthropic Messages routes.
            assert ref.endswith(("/ErrorResponse", "/AnthropicErrorResponse")), ref


def test_405_names_the_allowed_methods(http: httpx.Client) -> None:
    r = http.request("TRACE", "/v1/models")
    err = _error(r, 405)
    assert err["code"] == "method_not_allowed"
    assert "GET" in r.headers["allow"]
