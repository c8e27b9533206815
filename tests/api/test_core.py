"""Health, models and providers through the official SDK, in every execution mode."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi

SMOLLM2 = "SmolLM2-135M-Instruct"
MINILM = "all-MiniLM-L6-v2"


@pytest.fixture
def reference() -> str:
    """The bundled model: a test taking it talks to the URL that serves it (deployed, its
    own function under /image/v1; see LiveApi.reference_url)."""
    return SMOLLM2


def error_of(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return dict(err)


def test_health_and_version(http: httpx.Client) -> None:
    r = http.get("/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "OK"}
    assert r.headers.get("x-request-id")
    assert http.get("/v1/version").json()["version"]


def test_models_of_the_run_config_are_listed(client: openai.OpenAI, api: LiveApi) -> None:
    models = {m.id: m for m in client.models.list()}
    if api.reference_url:
        bundled = openai.OpenAI(base_url=api.reference_url, api_key=api.key, max_retries=0)
        models.update({m.id: m for m in bundled.models.list()})
    assert SMOLLM2 in models and MINILM in models
    llm = models[SMOLLM2].model_dump()
    assert llm["object"] == "model" and llm["model_type"] == "llm"
    assert llm["provider_resource_id"] == SMOLLM2
    emb = models[MINILM].model_dump()
    assert emb["model_type"] == "embedding" and emb["metadata"]["embedding_dimension"] == 384


def test_retrieve_model_and_unknown_model(client: openai.OpenAI, reference: str) -> None:
    assert client.models.retrieve(SMOLLM2).id == SMOLLM2
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert "no-such-model" in str(err.value)


def test_register_get_delete_model_with_slash(client: openai.OpenAI, http: httpx.Client,
                                              api: LiveApi, reference: str) -> None:
    model_id = f"org-{api.mode}/tiny"
    r = http.post("/v1/models", json={"model_id": model_id, "provider_id": "reference",
                                      "provider_model_id": SMOLLM2})
    assert r.status_code == 200, r.text
    assert client.models.retrieve(model_id).model_dump()["provider_id"] == "reference"
    assert model_id in {m.id for m in client.models.list()}
    # The alias routes chat to the same model.
    reply = client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert reply.model == model_id and reply.choices[0].message.content is not None
    error_of(http.post("/v1/models", json={"model_id": model_id, "provider_id": "reference"}),
             409)
    deleted = client.models.delete(model_id)
    assert deleted.deleted and deleted.id == model_id
    error_of(http.get(f"/v1/models/{model_id}"), 404)
    error_of(http.delete(f"/v1/models/{model_id}"), 404)


def test_bad_requests_get_openai_errors(http: httpx.Client) -> None:
    err = error_of(http.post("/v1/models", content=b"{oops",
                             headers={"content-type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error"
    err = error_of(http.post("/v1/models", json={"model_id": 42}), 400)
    assert err["param"] == "model_id"
    error_of(http.post("/v1/models", json={"model_id": "x", "provider_id": "nope"}), 400)
    error_of(http.get("/v1/definitely/not/a/route"), 404)


def test_providers(http: httpx.Client) -> None:
    data = http.get("/v1/providers").json()["data"]
    types = {p["provider_id"]: p["provider_type"] for p in data}
    assert types.get("onnx") == "inline::onnx-embeddings"
    one = http.get("/v1/providers/onnx").json()
    assert one["api"] == "inference"
    error_of(http.get("/v1/providers/nope"), 404)


def test_inspect_routes(http: httpx.Client) -> None:
    routes = {(r["route"], r["method"]) for r in http.get("/v1/inspect/routes").json()["data"]}
    for expected in [("/v1/models", "GET"), ("/v1/chat/completions", "POST"),
                     ("/v1/embeddings", "POST"), ("/v1/health", "GET")]:
        assert expected in routes
