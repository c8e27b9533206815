"""Tenancy: the cross-principal matrix, in every execution mode.

Every resource type the deployment serves (models registered by API, stored chat
completions, API keys) x every action, for the owner, another principal, an admin, no
credentials and a wrong key. The bar is zero leaks: another principal's record is a 404
(existence never shows), an action the policy forbids on something the caller can see
is a 403, no or wrong credentials are a 401 with OpenAI's error shape and a
WWW-Authenticate header.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of


@dataclass
class Tenant:
    name: str
    key: str
    key_id: str
    http: httpx.Client
    sdk: openai.OpenAI


def _tenant(api: LiveApi, admin: httpx.Client, name: str, **extra: Any) -> Tenant:
    created = admin.post("/v1/keys", json={"name": f"{name}-{uuid.uuid4().hex[:6]}",
                                           "principal": name, **extra})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["value"].startswith("fns-") and "hash" not in body
    key = body["value"]
    return Tenant(
        name=name,
        key=key,
        key_id=body["id"],
        http=httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=120,
                          headers={"Authorization": f"Bearer {key}"}),
        sdk=openai.OpenAI(base_url=api.base_url, api_key=key, max_retries=0, timeout=120),
    )


def tenant_pair(api: LiveApi, prefix: str) -> Iterator[tuple[Tenant, Tenant]]:
    """Two fresh principals, ``<prefix>-a-...`` and ``<prefix>-b-...``: for a module fixture
    (``yield from``) of tests where one owns a thing and the other must not see it."""
    with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=120,
                      headers=api.headers) as admin:
        yield (_tenant(api, admin, f"{prefix}-a-{uuid.uuid4().hex[:4]}"),
               _tenant(api, admin, f"{prefix}-b-{uuid.uuid4().hex[:4]}"))


@pytest.fixture(scope="module")
def tenants(api: LiveApi) -> Iterator[dict[str, Tenant]]:
    with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=120,
                      headers=api.headers) as admin:
        out = {
            "alice": _tenant(api, admin, "alice", attributes={"teams": ["red"]}),
            "bob": _tenant(api, admin, "bob", attributes={"teams": ["red"]}),
            "root": _tenant(api, admin, "root", roles=["admin"]),
        }
        yield out
    for t in out.values():
        t.http.close()


@pytest.fixture(scope="module")
def completion_of_alice(api: LiveApi, tenants: dict[str, Tenant]) -> str:
    model = models_of(api)["openai"]
    answer = tenants["alice"].sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        metadata={"who": "alice"},
    )
    return answer.id


def _status(call: Callable[[], httpx.Response]) -> int:
    return call().status_code


# --- credentials ------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/chat/completions"),
    ("GET", "/v1/keys"), ("POST", "/v1/embeddings"), ("GET", "/v1/providers"),
])
def test_no_or_wrong_credentials_are_401(api: LiveApi, method: str, path: str) -> None:
    base = api.base_url.removesuffix("/v1")
    for headers, sent in (({}, False), ({"Authorization": "Bearer fns-nope-nope"}, True),
                          ({"x-api-key": "not-a-key"}, True)):
        r = httpx.request(method, base + path, headers=headers, json={}, timeout=30)
        assert r.status_code == 401, (headers, r.text)
        err = r.json()["error"]
        assert err["type"] == "authentication_error" and err["code"], err
        challenge = r.headers["www-authenticate"]
        assert challenge.startswith("Bearer")
        assert ('error="invalid_token"' in challenge) == sent


def test_health_needs_no_credentials(api: LiveApi) -> None:
    assert httpx.get(api.base_url + "/health", timeout=30).status_code == 200


def test_sdk_without_key_gets_authentication_error(api: LiveApi) -> None:
    sdk = openai.OpenAI(base_url=api.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        sdk.models.list()


def test_sdk_with_a_created_key_works_unchanged(api: LiveApi,
                                                tenants: dict[str, Tenant]) -> None:
    ids = [m.id for m in tenants["alice"].sdk.models.list()]
    assert models_of(api)["openai"] in ids
    # The anthropic SDK's header works the same.
    r = httpx.get(api.base_url + "/models", headers={"x-api-key": tenants["alice"].key},
                  timeout=30)
    assert r.status_code == 200


# --- stored chat completions ---------------------------------------------------------------


def test_owner_sees_its_completion(tenants: dict[str, Tenant], completion_of_alice: str) -> None:
    alice = tenants["alice"].http
    cid = completion_of_alice
    assert alice.get(f"/v1/chat/completions/{cid}").status_code == 200
    assert alice.get(f"/v1/chat/completions/{cid}/messages").status_code == 200
    listed = [c["id"] for c in alice.get("/v1/chat/completions?limit=100").json()["data"]]
    assert cid in listed
    r = alice.post(f"/v1/chat/completions/{cid}", json={"metadata": {"k": "v"}})
    assert r.status_code == 200 and r.json()["metadata"] == {"k": "v"}


def test_another_principal_never_sees_a_completion(
    tenants: dict[str, Tenant], completion_of_alice: str
) -> None:
    # bob shares alice's team, which the default policy does not open up.
    bob = tenants["bob"]
    cid = completion_of_alice
    for status in (
        _status(lambda: bob.http.get(f"/v1/chat/completions/{cid}")),
        _status(lambda: bob.http.get(f"/v1/chat/completions/{cid}/messages")),
        _status(lambda: bob.http.post(f"/v1/chat/completions/{cid}",
                                      json={"metadata": {"x": "y"}})),
        _status(lambda: bob.http.delete(f"/v1/chat/completions/{cid}")),
    ):
        assert status == 404
    listed = bob.http.get("/v1/chat/completions?limit=100").json()["data"]
    assert cid not in [c["id"] for c in listed]
    with pytest.raises(openai.NotFoundError):
        bob.sdk.chat.completions.retrieve(cid)
    # The record is intact after bob's attempts.
    got = tenants["alice"].http.get(f"/v1/chat/completions/{cid}").json()
    assert got["metadata"] != {"x": "y"}


def test_admin_reads_any_completion(tenants: dict[str, Tenant],
                                    completion_of_alice: str) -> None:
    root = tenants["root"].http
    assert root.get(f"/v1/chat/completions/{completion_of_alice}").status_code == 200


def test_owner_deletes_its_completion(api: LiveApi, tenants: dict[str, Tenant]) -> None:
    bob = tenants["bob"]
    cid = bob.sdk.chat.completions.create(
        model=models_of(api)["openai"], messages=[{"role": "user", "content": "Hi"}],
        max_tokens=2).id
    assert tenants["alice"].http.delete(f"/v1/chat/completions/{cid}").status_code == 404
    assert bob.http.delete(f"/v1/chat/completions/{cid}").status_code == 200
    assert bob.http.get(f"/v1/chat/completions/{cid}").status_code == 404


# --- models registered by API ----------------------------------------------------------------


def test_models_only_admins_register_and_delete(api: LiveApi,
                                                tenants: dict[str, Tenant]) -> None:
    alice, root = tenants["alice"].http, tenants["root"].http
    upstream = models_of(api)["openai"]
    body = {"model_id": f"tenancy/{uuid.uuid4().hex[:8]}", "provider_id": "openai",
            "provider_model_id": upstream.split("/", 1)[-1]}
    r = alice.post("/v1/models", json=body)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert root.post("/v1/models", json=body).status_code == 200
    # Shared: every principal reads (uses) a registered model ...
    assert alice.get(f"/v1/models/{body['model_id']}").status_code == 200
    # ... but cannot delete it.
    assert alice.delete(f"/v1/models/{body['model_id']}").status_code == 403
    assert root.delete(f"/v1/models/{body['model_id']}").status_code == 200
    assert alice.get(f"/v1/models/{body['model_id']}").status_code == 404


# --- keys ---------------------------------------------------------------------------------------


def test_keys_only_admins_manage(tenants: dict[str, Tenant]) -> None:
    alice, bob, root = tenants["alice"], tenants["bob"], tenants["root"]
    assert alice.http.post("/v1/keys", json={"name": "mine"}).status_code == 403
    # A principal sees its own keys only; another's key does not exist for it.
    mine = [k["id"] for k in alice.http.get("/v1/keys").json()["data"]]
    assert alice.key_id in mine and bob.key_id not in mine
    assert alice.http.get(f"/v1/keys/{bob.key_id}").status_code == 404
    assert alice.http.delete(f"/v1/keys/{bob.key_id}").status_code == 404
    # Its own key it may read but not revoke (an admin action).
    assert alice.http.get(f"/v1/keys/{alice.key_id}").status_code == 200
    assert alice.http.delete(f"/v1/keys/{alice.key_id}").status_code == 403
    listed = root.http.get("/v1/keys").json()["data"]
    assert {alice.key_id, bob.key_id} <= {k["id"] for k in listed}
    assert all("hash" not in k and "value" not in k for k in listed)


def test_revoked_key_is_401(api: LiveApi) -> None:
    with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=60,
                      headers=api.headers) as admin:
        t = _tenant(api, admin, "carol")
        assert t.http.get("/v1/models").status_code == 200
        assert admin.delete(f"/v1/keys/{t.key_id}").status_code == 200
    # Revocation reaches every process within the key cache's TTL (5 s by default);
    # the emulated gateway runs each function in its own process.
    import time

    deadline = time.monotonic() + 15
    while t.http.get("/v1/models").status_code != 401:
        assert time.monotonic() < deadline, "a revoked key kept working"
        time.sleep(0.5)
    t.http.close()


# --- conversations, prompts, responses (the Responses API's records) -----------------------

SCRIPTED = "scripted"  # the scripted upstream's model (tests/support/scripted_llm.py)


@pytest.fixture(scope="module")
def agent_records_of_alice(tenants: dict[str, Tenant]) -> dict[str, str]:
    """A conversation with an item, a prompt, a stored response (in the conversation), a
    background response and a response with a function call, all alice's."""
    alice = tenants["alice"].http
    conv = alice.post("/v1/conversations", json={
        "metadata": {"owner": "alice"}, "items": [{"role": "user", "content": "secret"}]})
    assert conv.status_code == 200, conv.text
    cid = conv.json()["id"]
    item = alice.get(f"/v1/conversations/{cid}/items").json()["data"][0]["id"]
    prompt = alice.post("/v1/prompts", json={"prompt": "alice's {{ s }}", "variables": ["s"]})
    assert prompt.status_code == 200, prompt.text
    resp = alice.post("/v1/responses", json={"model": SCRIPTED, "input": "alice's secret",
                                             "conversation": cid})
    assert resp.status_code == 200, resp.text
    bg = alice.post("/v1/responses", json={"model": SCRIPTED, "input": "bg SLOW 3",
                                           "background": True})
    assert bg.status_code == 200, bg.text
    return {"conversation": cid, "item": item, "prompt": prompt.json()["prompt_id"],
            "response": resp.json()["id"], "background": bg.json()["id"]}


def _never_seen(r: httpx.Response, unknown: httpx.Response, what: str) -> None:
    # 404, and the same 404 a made-up id gets: neither status nor error type/param tell
    # that the record exists.
    assert r.status_code == 404, (what, r.status_code, r.text)
    assert unknown.status_code == 404, (what, unknown.status_code, unknown.text)
    got, ref = r.json()["error"], unknown.json()["error"]
    assert (got["type"], got.get("code"), got.get("param")) == (
        ref["type"], ref.get("code"), ref.get("param")), what


def test_another_principal_never_sees_a_conversation_prompt_or_response(
    tenants: dict[str, Tenant], agent_records_of_alice: dict[str, str]
) -> None:
    bob = tenants["bob"].http
    a = agent_records_of_alice
    ghost = {"conversation": "conv_" + "0" * 48, "item": "msg_" + "0" * 48,
             "prompt": "pmpt_" + "0" * 48, "response": "resp_" + "0" * 32,
             "background": "resp_" + "1" * 32}
    calls: dict[str, Callable[[dict[str, str]], httpx.Response]] = {
        "conv.get": lambda i: bob.get(f"/v1/conversations/{i['conversation']}"),
        "conv.update": lambda i: bob.post(f"/v1/conversations/{i['conversation']}",
                                          json={"metadata": {"owner": "bob"}}),
        "conv.delete": lambda i: bob.delete(f"/v1/conversations/{i['conversation']}"),
        "items.create": lambda i: bob.post(f"/v1/conversations/{i['conversation']}/items",
                                           json={"items": [{"role": "user",
                                                            "content": "injected"}]}),
        "items.list": lambda i: bob.get(f"/v1/conversations/{i['conversation']}/items"),
        "items.get": lambda i: bob.get(
            f"/v1/conversations/{i['conversation']}/items/{i['item']}"),
        "items.delete": lambda i: bob.delete(
            f"/v1/conversations/{i['conversation']}/items/{i['item']}"),
        "prompt.get": lambda i: bob.get(f"/v1/prompts/{i['prompt']}"),
        "prompt.get_v1": lambda i: bob.get(f"/v1/prompts/{i['prompt']}",
                                           params={"version": 1}),
        "prompt.versions": lambda i: bob.get(f"/v1/prompts/{i['prompt']}/versions"),
        "prompt.update": lambda i: bob.put(f"/v1/prompts/{i['prompt']}", json={
            "prompt": "bob's", "version": 1, "variables": []}),
        "prompt.default": lambda i: bob.put(f"/v1/prompts/{i['prompt']}/set-default-version",
                                            json={"version": 1}),
        "prompt.delete": lambda i: bob.delete(f"/v1/prompts/{i['prompt']}"),
        "resp.get": lambda i: bob.get(f"/v1/responses/{i['response']}"),
        "resp.get_stream": lambda i: bob.get(f"/v1/responses/{i['background']}",
                                             params={"stream": "true", "starting_after": 0}),
        "resp.input_items": lambda i: bob.get(f"/v1/responses/{i['response']}/input_items"),
        "resp.cancel": lambda i: bob.post(f"/v1/responses/{i['background']}/cancel"),
        "resp.delete": lambda i: bob.delete(f"/v1/responses/{i['response']}"),
        "resp.previous": lambda i: bob.post("/v1/responses", json={
            "model": SCRIPTED, "input": "x", "previous_response_id": i["response"]}),
        "resp.conversation": lambda i: bob.post("/v1/responses", json={
            "model": SCRIPTED, "input": "injected", "conversation": i["conversation"]}),
        "resp.conversation_obj": lambda i: bob.post("/v1/responses", json={
            "model": SCRIPTED, "input": "injected",
            "conversation": {"id": i["conversation"]}}),
        "resp.prompt": lambda i: bob.post("/v1/responses", json={
            "model": SCRIPTED, "prompt": {"id": i["prompt"], "variables": {"s": "x"}}}),
        "resp.stream_previous": lambda i: bob.post("/v1/responses", json={
            "model": SCRIPTED, "input": "x", "stream": True,
            "previous_response_id": i["response"]}),
    }
    for name, call in calls.items():
        _never_seen(call(a), call(ghost), name)
    # Listings do not show them either.
    assert a["prompt"] not in {p["prompt_id"] for p in bob.get("/v1/prompts").json()["data"]}
    listed = bob.get("/v1/responses", params={"limit": 100})
    assert listed.status_code == 200, listed.text
    assert not {a["response"], a["background"]} & {r["id"] for r in listed.json()["data"]}
    mine = tenants["alice"].http.get("/v1/responses", params={"limit": 100}).json()["data"]
    assert a["response"] in {r["id"] for r in mine}

    # Alice's records are intact after bob's attempts.
    alice = tenants["alice"].http
    conv = alice.get(f"/v1/conversations/{a['conversation']}")
    assert conv.status_code == 200 and conv.json()["metadata"] == {"owner": "alice"}
    texts = [i["content"][0]["text"]
             for i in alice.get(f"/v1/conversations/{a['conversation']}/items",
                                params={"order": "asc"}).json()["data"]
             if i["type"] == "message"]
    assert "injected" not in texts and texts[0] == "secret"
    prompt = alice.get(f"/v1/prompts/{a['prompt']}").json()
    assert prompt["prompt"] == "alice's {{ s }}" and prompt["version"] == 1
    assert alice.get(f"/v1/responses/{a['response']}").status_code == 200
    assert alice.get(f"/v1/responses/{a['background']}").json()["status"] != "cancelled"


def test_admin_reads_any_response_and_conversation(
    tenants: dict[str, Tenant], agent_records_of_alice: dict[str, str]
) -> None:
    root = tenants["root"].http
    a = agent_records_of_alice
    assert root.get(f"/v1/responses/{a['response']}").status_code == 200
    assert root.get(f"/v1/responses/{a['response']}/input_items").status_code == 200
    assert root.get(f"/v1/conversations/{a['conversation']}").status_code == 200
    assert root.get(f"/v1/prompts/{a['prompt']}").status_code == 200
