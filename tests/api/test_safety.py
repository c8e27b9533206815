"""Safety in every execution mode: shields, run-shield, moderations through the openai
SDK, and guardrails on chat completions against the real llama.cpp upstream.

Both distributions register a ``pii`` shield on ``inline::rules``. The judge
(``inline::llm-judge``) needs scripted verdicts: it is tested on a scripted upstream in
tests/unit/test_safety_app.py.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from fnstack.guardrails import WINDOW
from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of

# Where the streamed output is checked (fnstack.guardrails: a sentence end, or WINDOW).
BOUNDARY = re.compile("[.!?;:\n\u3002\uff01\uff1f]")
PROMPT = [{"role": "user", "content": "Name five fruits, one per line."}]


@pytest.fixture
def llm(api: LiveApi) -> str:
    """The model the llama.cpp upstream serves through remote::openai."""
    return models_of(api)["openai"]


@pytest.fixture
def user_http(api: LiveApi, http: httpx.Client) -> Iterator[httpx.Client]:
    """An ordinary (non-admin) principal's client."""
    created = http.post("/v1/keys", json={"name": f"safety-{uuid.uuid4().hex[:6]}",
                                          "principal": f"carol-{uuid.uuid4().hex[:6]}"})
    assert created.status_code == 200, created.text
    with httpx.Client(base_url=http.base_url, timeout=120,
                      headers={"Authorization": f"Bearer {created.json()['value']}"}) as c:
        yield c


def register(http: httpx.Client, **params: Any) -> str:
    shield_id = f"test/{uuid.uuid4().hex[:8]}"
    r = http.post("/v1/shields", json={"shield_id": shield_id, "provider_id": "rules",
                                       "params": params})
    assert r.status_code == 200, r.text
    return shield_id


def test_shields_registry(http: httpx.Client, user_http: httpx.Client) -> None:
    listed = http.get("/v1/shields").json()["data"]
    pii = next(s for s in listed if s["identifier"] == "pii")
    assert (pii["provider_id"], pii["type"]) == ("rules", "shield")
    shield_id = register(http, pii=["email"])
    got = http.get(f"/v1/shields/{shield_id}").json()
    assert got["params"] == {"pii": ["email"]} and got["provider_resource_id"] == shield_id
    # Anyone reads and runs shields; only admins register and delete them.
    assert user_http.get(f"/v1/shields/{shield_id}").status_code == 200
    assert user_http.post("/v1/shields", json={"shield_id": "mine", "provider_id": "rules"}
                          ).status_code == 403
    assert user_http.delete(f"/v1/shields/{shield_id}").status_code == 403
    assert http.delete(f"/v1/shields/{shield_id}").json()["deleted"] is True
    assert http.get(f"/v1/shields/{shield_id}").status_code == 404
    assert http.delete("/v1/shields/pii").status_code == 400  # from the run config


def test_unknown_shield_is_404(http: httpx.Client, client: openai.OpenAI, llm: str) -> None:
    r = http.post("/v1/safety/run-shield", json={
        "shield_id": "no-such-shield", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "shield_not_found"
    assert http.get("/v1/shields/no-such-shield").status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=llm, messages=PROMPT, max_tokens=4,
                                       extra_body={"guardrails": ["no-such-shield"]})
    with pytest.raises(openai.NotFoundError):
        client.moderations.create(model="no-such-shield", input="hi")


def test_bad_input_is_400(http: httpx.Client) -> None:
    assert http.post("/v1/safety/run-shield", json={"shield_id": "pii", "messages": []}
                     ).status_code == 400
    assert http.post("/v1/safety/run-shield", json={"shield_id": "pii"}).status_code == 400
    assert http.post("/v1/moderations", json={"input": []}).status_code == 400
    r = http.post("/v1/shields", json={"shield_id": "bad-regex", "provider_id": "rules",
                                       "params": {"patterns": {"x": "(unclosed"}}})
    assert r.status_code == 400 and "regex" in r.json()["error"]["message"]


def test_pii_detection_and_redaction(user_http: httpx.Client) -> None:
    text = ("Reach me at jane.doe@example.com or +1 415-555-0123; card 4111 1111 1111 1111, "
            "key AKIAIOSFODNN7EXAMPLE. Order 12345678 ships 2024-01-15.")
    r = user_http.post("/v1/safety/run-shield", json={
        "shield_id": "pii", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    v = r.json()["violation"]
    assert v["violation_level"] == "error"
    assert v["metadata"]["redacted_text"] == (
        "Reach me at [EMAIL] or [PHONE]; card [CREDIT_CARD], key [AWS_ACCESS_KEY]. "
        "Order 12345678 ships 2024-01-15.")
    assert {f["type"] for f in v["metadata"]["findings"]} == {
        "email", "phone", "credit_card", "aws_access_key"}
    clean = user_http.post("/v1/safety/run-shield", json={
        "shield_id": "pii", "messages": [{"role": "user", "content": "Order 12345678 ok."}]})
    assert clean.json() == {"violation": None}


def test_moderations_through_the_sdk(client: openai.OpenAI) -> None:
    result = client.moderations.create(
        model="pii", input=["What a nice day.", "My SSN is 123-45-6789."])
    assert result.id.startswith("modr-") and result.model == "pii"
    clean, flagged = result.results
    assert not clean.flagged and flagged.flagged
    assert flagged.categories.hate is False  # OpenAI's categories are all there
    extra = flagged.model_dump()["categories"]
    assert extra["pii/us_ssn"] is True
    parts = client.moderations.create(model="pii", input=[
        {"type": "text", "text": "write to bob@example.com"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ])
    assert len(parts.results) == 1 and parts.results[0].flagged


def test_blocked_input_is_a_refusal(client: openai.OpenAI, llm: str) -> None:
    reply = client.chat.completions.create(
        model=llm, max_tokens=8, extra_body={"guardrails": ["pii"]},
        messages=[{"role": "user", "content": "My card is 4111 1111 1111 1111, remember it."}])
    [choice] = reply.choices
    assert choice.finish_reason == "content_filter"
    assert choice.message.content is None and choice.message.refusal
    assert "payment card" in choice.message.refusal
    stream = client.chat.completions.create(
        model=llm, max_tokens=8, stream=True, extra_body={"input_shields": ["pii"]},
        messages=[{"role": "user", "content": "mail bob@example.com"}])
    chunks = list(stream)
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert any(c.choices and c.choices[0].finish_reason == "content_filter" for c in chunks)


def test_clean_input_passes_the_guardrail(client: openai.OpenAI, llm: str) -> None:
    reply = client.chat.completions.create(
        model=llm, max_tokens=6, temperature=0, messages=PROMPT,
        extra_body={"guardrails": ["pii"]})
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.choices[0].message.content


def _greedy(client: openai.OpenAI, llm: str) -> str:
    reply = client.chat.completions.create(model=llm, messages=PROMPT, max_tokens=60,
                                           temperature=0, seed=7)
    return reply.choices[0].message.content or ""


def _word_after_first_check(text: str) -> str:
    """A word of the greedy answer that first appears after its first checked window."""
    m = BOUNDARY.search(text)
    cut = min(m.end() if m else WINDOW, WINDOW)
    before = {w.lower() for w in re.findall(r"[A-Za-z]+", text[:cut])}
    after = [w for w in re.findall(r"[A-Za-z]{4,}", text[cut:]) if w.lower() not in before]
    assert after, f"the model's answer has no word after its first sentence: {text!r}"
    return after[0]


def test_blocked_output(client: openai.OpenAI, http: httpx.Client, llm: str) -> None:
    text = _greedy(client, llm)
    word = _word_after_first_check(text)
    shield_id = register(http, pii=[], blocked_terms=[word])
    reply = client.chat.completions.create(
        model=llm, messages=PROMPT, max_tokens=60, temperature=0, seed=7,
        extra_body={"output_shields": [shield_id]})
    [choice] = reply.choices
    assert choice.finish_reason == "content_filter", (word, text)
    assert choice.message.content is None and "blocked term" in (choice.message.refusal or "")


def test_blocked_output_mid_stream(client: openai.OpenAI, http: httpx.Client, llm: str) -> None:
    text = _greedy(client, llm)
    word = _word_after_first_check(text)
    shield_id = register(http, pii=[], blocked_terms=[word])
    stream = client.chat.completions.create(
        model=llm, messages=PROMPT, max_tokens=60, temperature=0, seed=7, stream=True,
        extra_body={"guardrails": [shield_id]})
    chunks = [c for c in stream if c.choices]
    got = "".join(c.choices[0].delta.content or "" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    # Text flowed, then the stream ended at the violation: nothing unchecked got out.
    assert finishes == ["content_filter"], (word, text, got)
    assert got and text.startswith(got), (got, text)
    assert not re.search(rf"(?<!\w){re.escape(word)}(?!\w)", got, re.IGNORECASE)
    assert chunks[-1].choices[0].delta.refusal
    # The stored copy holds what the client saw.
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.choices[0].finish_reason == "content_filter"
    assert stored.choices[0].message.content == got
