"""Safety through the app: shields, run-shield, moderations, the judge on a scripted
upstream, and guardrails on chat completions (input, output, streams)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fnstack.app import create_app
from fnstack.config import RunConfig, parse_config
from fnstack.spec import Api
from tests.support.fake_openai import MODEL, FakeOpenAI, Reply, chat_chunk_json, chat_json

CHAT = "/v1/chat/completions"


def _config(tmp: Path, upstream: str, judge: dict[str, Any] | None = None) -> RunConfig:
    return parse_config({
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")}},
            "stores": {
                "registry": {"backend": "kv", "namespace": "registry"},
                "inference": {"backend": "kv", "namespace": "chat"},
            },
        },
        "providers": {
            "inference": [{"provider_id": "up", "provider_type": "remote::openai",
                           "config": {"base_url": upstream, "max_retries": 0}}],
            "safety": [
                {"provider_id": "rules", "provider_type": "inline::rules", "config": {}},
                {"provider_id": "judge", "provider_type": "inline::llm-judge",
                 "config": {"model": MODEL, **(judge or {})}},
            ],
        },
        "registered_resources": {"shields": [
            {"shield_id": "pii", "provider_id": "rules"},
            {"shield_id": "guard", "provider_id": "judge"},
            {"shield_id": "terms", "provider_id": "rules",
             "params": {"pii": [], "blocked_terms": ["forbidden"]}},
        ]},
    }, env={})


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture
async def app(tmp_path: Path, fake: FakeOpenAI) -> AsyncIterator[FastAPI]:
    fake.reset()
    app = create_app(_config(tmp_path, fake.base_url), lifespan=False)
    yield app
    await app.state.stack.shutdown()


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def chats(fake: FakeOpenAI) -> list[Any]:
    return [r.body for r in fake.requests if r.path.endswith("/chat/completions")]


def events(body: str) -> list[dict[str, Any]]:
    out = []
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    assert body.rstrip().endswith("data: [DONE]")
    return out


def streamed(chunks: list[dict[str, Any]]) -> tuple[str, list[str | None], str | None]:
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]]
    refusal = next((c["choices"][0]["delta"].get("refusal") for c in chunks
                    if c["choices"] and c["choices"][0]["delta"].get("refusal")), None)
    return text, finishes, refusal


# --- shields ----------------------------------------------------------------------------


async def test_shields_registry(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/shields")
    assert r.status_code == 200
    ids = [s["identifier"] for s in r.json()["data"]]
    # Config shields, and the judge's own reported shield.
    assert {"pii", "guard", "terms", "llm-judge"} <= set(ids)
    r = await http.post("/v1/shields", json={"shield_id": "team/secrets", "provider_id": "rules",
                                             "params": {"pii": ["aws_access_key"]}})
    assert r.status_code == 200, r.text
    shield = r.json()
    assert shield["type"] == "shield" and shield["provider_resource_id"] == "team/secrets"
    assert (await http.get("/v1/shields/team/secrets")).json()["params"] == {
        "pii": ["aws_access_key"]}
    assert (await http.post("/v1/shields", json={"shield_id": "team/secrets",
                                                 "provider_id": "rules"})).status_code == 409
    r = await http.delete("/v1/shields/team/secrets")
    assert r.json() == {"id": "team/secrets", "object": "shield", "deleted": True}
    assert (await http.get("/v1/shields/team/secrets")).status_code == 404
    r = await http.delete("/v1/shields/pii")
    assert r.status_code == 400 and r.json()["error"]["code"] == "shield_not_deletable"


async def test_registration_errors(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/shields", json={"shield_id": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "provider_id"
    r = await http.post("/v1/shields", json={"shield_id": "x", "provider_id": "nope"})
    assert r.status_code == 400
    r = await http.post("/v1/shields", json={"shield_id": "x", "provider_id": "rules",
                                             "params": {"patterns": {"bad": "("}}})
    assert r.status_code == 400 and "regex" in r.json()["error"]["message"]
    assert (await http.get("/v1/shields/x")).status_code == 404  # not half-registered
    r = await http.post("/v1/shields", json={"shield_id": "has space", "provider_id": "rules"})
    assert r.status_code == 400


# --- run-shield -------------------------------------------------------------------------


async def test_run_shield_pii_and_redaction(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "pii", "params": {},
        "messages": [{"role": "user", "content": "my card is 4111 1111 1111 1111"}]})
    assert r.status_code == 200, r.text
    v = r.json()["violation"]
    assert v["violation_level"] == "error"
    assert v["metadata"]["redacted_text"] == "my card is [CREDIT_CARD]"
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "pii", "messages": [{"role": "user", "content": "hello"}]})
    assert r.json() == {"violation": None}


async def test_run_shield_errors(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "shield_not_found"
    r = await http.post("/v1/safety/run-shield", json={"shield_id": "pii", "messages": []})
    assert r.status_code == 400
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "pii", "messages": [{"role": "robot", "content": "hi"}]})
    assert r.status_code == 400
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "pii", "messages": [{"role": "user", "content": "x"}],
        "params": {"pii": ["passport"]}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "params.pii.0"


# --- the judge on a scripted upstream -----------------------------------------------------


async def test_judge_verdicts(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    fake.script(CHAT, Reply(json=chat_json("unsafe\nS1,S10")), Reply(json=chat_json(" safe ")),
                Reply(json=chat_json("```\nUNSAFE\ns9\n```")))
    body = {"shield_id": "guard", "messages": [{"role": "user", "content": "how to hurt"}]}
    v = (await http.post("/v1/safety/run-shield", json=body)).json()["violation"]
    assert v["violation_level"] == "error"
    assert v["metadata"]["categories"] == ["S1", "S10"]
    assert "Violent Crimes, Hate" in v["user_message"]
    sent = chats(fake)[-1]
    assert sent["model"] == MODEL and sent["temperature"] == 0.0
    assert "ONLY THE LAST User message" in sent["messages"][0]["content"]
    assert "User: how to hurt" in sent["messages"][0]["content"]
    assert (await http.post("/v1/safety/run-shield", json=body)).json() == {"violation": None}
    v = (await http.post("/v1/safety/run-shield", json=body)).json()["violation"]
    assert v["metadata"]["categories"] == ["S9"]


async def test_judge_garbage_fails_closed_or_open(http: httpx.AsyncClient,
                                                  fake: FakeOpenAI) -> None:
    fake.script(CHAT, Reply(json=chat_json("I cannot decide")),
                Reply(json=chat_json("no idea")))
    body: dict[str, Any] = {"shield_id": "guard",
                            "messages": [{"role": "user", "content": "hm"}]}
    v = (await http.post("/v1/safety/run-shield", json=body)).json()["violation"]
    assert v["violation_level"] == "error" and v["metadata"]["unparseable"] is True
    body["params"] = {"on_unparseable": "allow"}
    assert (await http.post("/v1/safety/run-shield", json=body)).json() == {"violation": None}


async def test_judge_upstream_failure_is_not_a_500(http: httpx.AsyncClient,
                                                   fake: FakeOpenAI) -> None:
    fake.script(CHAT, Reply(status=503, json={"error": {"message": "down"}}))
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "guard", "messages": [{"role": "user", "content": "hm"}]})
    assert r.status_code in (502, 503), r.text


async def test_judge_model_from_the_shield(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    r = await http.post("/v1/shields", json={"shield_id": "g2", "provider_id": "judge",
                                             "provider_shield_id": "up/" + MODEL})
    assert r.status_code == 200, r.text
    fake.script(CHAT, Reply(json=chat_json("safe")))
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "g2", "messages": [{"role": "user", "content": "hi"}]})
    assert r.json() == {"violation": None}
    assert chats(fake)[-1]["model"] == MODEL
    r = await http.post("/v1/shields", json={"shield_id": "g3", "provider_id": "judge",
                                             "provider_shield_id": "no-such-model"})
    fake.script(CHAT, Reply(json=chat_json("safe")))
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "g3", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


# --- moderations ------------------------------------------------------------------------


async def test_moderations(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    r = await http.post("/v1/moderations", json={"input": "mail bob@example.com"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("modr-") and body["model"] == "pii"
    [res] = body["results"]
    assert res["flagged"] and res["categories"]["pii/email"]
    assert res["categories"]["hate"] is False
    assert res["category_applied_input_types"]["pii/email"] == ["text"]
    r = await http.post("/v1/moderations", json={"model": "pii", "input": ["hi", "555-123-4567"]})
    assert [x["flagged"] for x in r.json()["results"]] == [False, True]
    parts = [{"type": "text", "text": "key AKIAIOSFODNN7EXAMPLE"},
             {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    r = await http.post("/v1/moderations", json={"model": "pii", "input": parts})
    [res] = r.json()["results"]
    assert res["categories"]["secrets/aws_access_key"]
    fake.script(CHAT, Reply(json=chat_json("unsafe\nS1")))
    r = await http.post("/v1/moderations", json={"model": "guard", "input": "attack plan"})
    [res] = r.json()["results"]
    assert res["flagged"] and res["categories"]["violence"] and res["categories"]["S1"]
    assert res["category_scores"]["violence"] == 1.0


async def test_moderation_errors(http: httpx.AsyncClient) -> None:
    assert (await http.post("/v1/moderations", json={"input": []})).status_code == 400
    assert (await http.post("/v1/moderations", json={})).status_code == 400
    r = await http.post("/v1/moderations", json={"input": ""})
    assert r.status_code == 200 and not r.json()["results"][0]["flagged"]
    r = await http.post("/v1/moderations", json={"input": [{"type": "audio", "x": 1}]})
    assert r.status_code == 400
    r = await http.post("/v1/moderations", json={"input": "x", "model": "gpt-guard-9"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    # OpenAI's own model names reach the default shield (the run config's first).
    r = await http.post("/v1/moderations", json={"input": "a@b.io",
                                                 "model": "omni-moderation-latest"})
    assert r.status_code == 200 and r.json()["model"] == "omni-moderation-latest"
    assert r.json()["results"][0]["categories"]["pii/email"]


# --- guardrails on chat completions -----------------------------------------------------


async def test_blocked_input_is_a_refusal_without_a_model_call(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    r = await http.post(CHAT, json={
        "model": MODEL, "guardrails": ["pii"],
        "messages": [{"role": "user", "content": "I am bob@example.com"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    [choice] = body["choices"]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"]["refusal"] and choice["message"].get("content") is None
    assert body["usage"]["total_tokens"] == 0
    assert chats(fake) == []
    # Stored like any completion.
    stored = await http.get(f"{CHAT}/{body['id']}")
    assert stored.status_code == 200 and stored.json()["choices"][0]["finish_reason"] == (
        "content_filter")


async def test_blocked_input_streamed(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    r = await http.post(CHAT, json={
        "model": MODEL, "stream": True, "input_shields": ["pii"],
        "messages": [{"role": "user", "content": "key AKIAIOSFODNN7EXAMPLE"}]})
    assert r.status_code == 200
    text, finishes, refusal = streamed(events(r.text))
    assert text == "" and finishes[-1] == "content_filter" and refusal
    assert chats(fake) == []


async def test_input_shields_skip_the_system_prompt(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    r = await http.post(CHAT, json={
        "model": MODEL, "guardrails": ["pii"],
        "messages": [{"role": "system", "content": "Support: help@example.com"},
                     {"role": "user", "content": "hello"}]})
    assert r.json()["choices"][0]["finish_reason"] == "stop"
    r = await http.post(CHAT, json={
        "model": MODEL, "guardrails": ["pii"],
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "call 555-123-4567"}]})
    assert r.json()["choices"][0]["finish_reason"] == "content_filter"
    assert len(chats(fake)) == 1


async def test_clean_input_passes_and_fields_are_not_forwarded(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    r = await http.post(CHAT, json={
        "model": MODEL, "shields": ["pii"], "guardrails": [{"type": "terms"}],
        "messages": [{"role": "user", "content": "hello"}]})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "Hello!"
    [sent] = chats(fake)
    assert not {"guardrails", "shields", "input_shields", "output_shields"} & set(sent)


async def test_blocked_output(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    fake.script(CHAT, Reply(json=chat_json("Sure, write to alice@example.com")))
    r = await http.post(CHAT, json={
        "model": MODEL, "output_shields": ["pii"],
        "messages": [{"role": "user", "content": "who do I write to?"}]})
    [choice] = r.json()["choices"]
    assert choice["finish_reason"] == "content_filter"
    assert choice["message"].get("content") is None and "e-mail" in choice["message"]["refusal"]
    # An input-only shield does not look at the output.
    fake.script(CHAT, Reply(json=chat_json("Sure, write to alice@example.com")))
    r = await http.post(CHAT, json={
        "model": MODEL, "input_shields": ["pii"],
        "messages": [{"role": "user", "content": "who do I write to?"}]})
    assert r.json()["choices"][0]["finish_reason"] == "stop"


async def test_blocked_output_mid_stream(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    words = ["The first", " sentence is fine.", " The second", " is forbidden", " to say.",
             " A third one."]
    fake.script(CHAT, Reply(events=[
        chat_chunk_json(), *(chat_chunk_json(w) for w in words),
        chat_chunk_json(finish_reason="stop")]))
    r = await http.post(CHAT, json={
        "model": MODEL, "stream": True, "guardrails": ["terms"],
        "messages": [{"role": "user", "content": "talk"}]})
    assert r.status_code == 200
    chunks = events(r.text)
    text, finishes, refusal = streamed(chunks)
    assert text == "The first sentence is fine."
    assert finishes[-1] == "content_filter" and refusal and "blocked term" in refusal
    assert "forbidden" not in r.text
    # The stored copy holds what the client got.
    stored = (await http.get(f"{CHAT}/{chunks[0]['id']}")).json()
    assert stored["choices"][0]["message"]["content"] == "The first sentence is fine."
    assert stored["choices"][0]["finish_reason"] == "content_filter"


async def test_clean_stream_passes_whole(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    words = ["One. ", "Two", " and three", "!", " Four"]
    fake.script(CHAT, Reply(events=[
        chat_chunk_json(), *(chat_chunk_json(w) for w in words),
        chat_chunk_json(finish_reason="stop")]))
    r = await http.post(CHAT, json={
        "model": MODEL, "stream": True, "guardrails": ["pii", "terms"],
        "messages": [{"role": "user", "content": "count"}]})
    text, finishes, refusal = streamed(events(r.text))
    assert text == "One. Two and three! Four" and finishes[-1] == "stop" and refusal is None


async def test_judge_guards_the_output_stream(http: httpx.AsyncClient, fake: FakeOpenAI) -> None:
    stream = [chat_chunk_json(), chat_chunk_json("Step one. "), chat_chunk_json("Step two. "),
              chat_chunk_json(finish_reason="stop")]
    fake.script(CHAT, Reply(json=chat_json("safe")),  # the input check
                Reply(events=stream),
                Reply(json=chat_json("safe")), Reply(json=chat_json("unsafe\nS9")))
    r = await http.post(CHAT, json={
        "model": MODEL, "stream": True, "guardrails": ["guard"],
        "messages": [{"role": "user", "content": "instructions"}]})
    text, finishes, refusal = streamed(events(r.text))
    assert text == "Step one. " and finishes[-1] == "content_filter" and refusal
    prompts = [b["messages"][0]["content"] for b in chats(fake) if not b.get("stream")]
    assert "Agent: Step one. Step two." in prompts[-1]


async def test_unknown_guardrail_is_404_and_bad_shape_400(
    http: httpx.AsyncClient, fake: FakeOpenAI
) -> None:
    r = await http.post(CHAT, json={"model": MODEL, "guardrails": ["nope"],
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "guardrails"
    r = await http.post(CHAT, json={"model": MODEL, "guardrails": [{"name": "pii"}],
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "guardrails[0]"
    r = await http.post(CHAT, json={"model": MODEL, "guardrails": 3,
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400
    assert chats(fake) == []


async def test_shield_whose_provider_is_gone(tmp_path: Path, fake: FakeOpenAI) -> None:
    first = create_app(_config(tmp_path, fake.base_url), lifespan=False)
    transport = httpx.ASGITransport(app=first, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post("/v1/shields", json={"shield_id": "j", "provider_id": "judge"})
        assert r.status_code == 200, r.text
    await first.state.stack.shutdown()
    # The same registry, and a run config without the judge.
    config = _config(tmp_path, fake.base_url)
    config.providers[Api.safety] = config.providers[Api.safety][:1]
    config.registered_resources.shields = config.registered_resources.shields[:1]
    second = create_app(config, lifespan=False)
    transport = httpx.ASGITransport(app=second, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.post("/v1/safety/run-shield", json={
            "shield_id": "j", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and r.json()["error"]["code"] == "provider_not_configured"
        r = await c.post("/v1/moderations", json={"model": "j", "input": "hi"})
        assert r.status_code == 400
        assert (await c.delete("/v1/shields/j")).status_code == 200
    await second.state.stack.shutdown()


async def test_odd_text_is_400_or_plain_text(http: httpx.AsyncClient) -> None:
    def raw(path: str, body: str) -> Any:
        return http.post(path, content=body, headers={"content-type": "application/json"})

    lone = '"a\\ud800b"'
    r = await raw("/v1/safety/run-shield",
                  f'{{"shield_id": "pii", "messages": [{{"role": "user", "content": {lone}}}]}}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_unicode"
    r = await raw("/v1/moderations", f'{{"input": [{lone}]}}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0]"
    r = await raw("/v1/shields", f'{{"shield_id": "s", "provider_id": "rules", '
                                 f'"params": {{"blocked_terms": [{lone}]}}}}')
    assert r.status_code == 400
    r = await http.post("/v1/shields", json={"shield_id": "a\x01b", "provider_id": "rules"})
    assert r.status_code == 400
    # A user message is text, not a format string.
    r = await http.post("/v1/shields", json={"shield_id": "braces", "provider_id": "rules",
                                             "params": {"user_message": "{x} {kinds} {"}})
    assert r.status_code == 200, r.text
    r = await http.post("/v1/safety/run-shield", json={
        "shield_id": "braces", "messages": [{"role": "user", "content": "a@b.io"}]})
    assert r.json()["violation"]["user_message"] == "{x} an e-mail address {"
