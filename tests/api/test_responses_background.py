"""Background responses (queued, run as a job, re-streamable, cancellable), conversations
and prompts with responses, through the official openai SDK, in every mode.

Locally the job runs in the server's job queue; through the emulated gateway on the
worker function behind SQS, as on AWS.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_responses import new_principal
from tests.support.scripted_llm import MODEL as SCRIPTED

DONE = ("completed", "failed", "incomplete", "cancelled")


@pytest.fixture(scope="module")
def stranger(api: LiveApi) -> Iterator[openai.OpenAI]:
    yield from new_principal(api)


def _wait(client: openai.OpenAI, rid: str, until: tuple[str, ...] = DONE,
          timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        r = client.responses.retrieve(rid)
        if r.status in until:
            return r
        assert time.monotonic() < deadline, f"response still {r.status} after {timeout} s"
        time.sleep(0.3)


def test_background_response_runs_as_a_job(client: openai.OpenAI) -> None:
    r = client.responses.create(model=SCRIPTED, input="in the background", background=True)
    assert r.background is True and r.status in ("queued", "in_progress", "completed")
    done = _wait(client, r.id)
    assert done.status == "completed" and done.output_text == "ECHO: in the background"
    assert done.usage is not None and done.usage.total_tokens > 0


def test_background_stream_and_replay_from_a_sequence_number(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=SCRIPTED, input="replay me", background=True,
                                          stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "ECHO: replay me"
    rid = events[-1].response.id
    again = list(client.responses.retrieve(rid, stream=True, starting_after=3))
    assert [e.sequence_number for e in again] == list(range(4, len(events)))
    assert [e.type for e in again] == [e.type for e in events[4:]]
    whole = list(client.responses.retrieve(rid, stream=True))
    assert [e.type for e in whole] == [e.type for e in events]


def test_cancel_a_background_response(client: openai.OpenAI, scripted_llm: Any) -> None:
    # SLOW 30: the scripted model takes 30 s to stream its answer.
    r = client.responses.create(model=SCRIPTED, input="SLOW 30 take your time",
                                background=True)
    deadline = time.monotonic() + 60
    while not any("SLOW 30 take your time" in str(req.get("messages"))
                  for req in scripted_llm.requests):
        assert time.monotonic() < deadline, "the model was never called"
        time.sleep(0.2)
    started = time.monotonic()
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    time.sleep(2)
    after = client.responses.retrieve(r.id)
    assert after.status == "cancelled" and after.output_text == ""
    assert time.monotonic() - started < 20
    # Cancelling again is a no-op; a finished or foreground response cannot be.
    assert client.responses.cancel(r.id).status == "cancelled"
    plain = client.responses.create(model=SCRIPTED, input="quick")
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(plain.id)


def test_cancel_another_principals_response_is_404(client: openai.OpenAI,
                                                   stranger: openai.OpenAI) -> None:
    r = client.responses.create(model=SCRIPTED, input="mine", background=True)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.cancel(r.id)
    assert _wait(client, r.id).status == "completed"


# --- conversations and prompts --------------------------------------------------------------


def test_a_conversation_across_three_responses(client: openai.OpenAI,
                                               scripted_llm: Any) -> None:
    conv = client.conversations.create(metadata={"topic": "greek letters"})
    for word in ("alpha", "beta", "gamma"):
        r = client.responses.create(model=SCRIPTED, input=word, conversation=conv.id)
        assert r.output_text == f"ECHO: {word}"
        assert r.conversation is not None and r.conversation.id == conv.id
    sent = [(m["role"], m["content"]) for m in scripted_llm.requests[-1]["messages"]]
    assert sent == [("user", "alpha"), ("assistant", "ECHO: alpha"), ("user", "beta"),
                    ("assistant", "ECHO: beta"), ("user", "gamma")]
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert [(i.type, i.role) for i in items] == [  # type: ignore[union-attr]
        ("message", "user"), ("message", "assistant")] * 3


def test_a_background_response_in_a_conversation(client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    client.responses.create(model=SCRIPTED, input="first", conversation=conv.id)
    r = client.responses.create(model=SCRIPTED, input="second", conversation=conv.id,
                                background=True)
    assert _wait(client, r.id).output_text == "ECHO: second"
    items = list(client.conversations.items.list(conv.id, order="asc"))
    assert len(items) == 4


def test_conversation_and_previous_response_id_together_are_400(
        client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    r = client.responses.create(model=SCRIPTED, input="x")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=SCRIPTED, input="y", conversation=conv.id,
                                previous_response_id=r.id)


def test_another_principals_conversation_is_404(client: openai.OpenAI,
                                                stranger: openai.OpenAI) -> None:
    conv = client.conversations.create()
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=SCRIPTED, input="x", conversation=conv.id)
    assert list(client.conversations.items.list(conv.id)) == []


def test_a_stored_prompt_with_variables(client: openai.OpenAI, http: httpx.Client,
                                        scripted_llm: Any) -> None:
    created = http.post("/v1/prompts", json={"prompt": "You answer questions about "
                                             "{{ topic }}.", "variables": ["topic"]})
    assert created.status_code == 200, created.text
    pid = created.json()["prompt_id"]
    r = client.responses.create(model=SCRIPTED, input="hi",
                                prompt={"id": pid, "variables": {"topic": "bees"}})
    assert r.output_text == "ECHO: hi"
    assert r.prompt is not None and r.prompt.id == pid
    first = scripted_llm.requests[-1]["messages"][0]
    assert first == {"role": "system", "content": "You answer questions about bees."}
    missing = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                               "prompt": {"id": pid}})
    assert missing.status_code == 400, missing.text
    unknown = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                               "prompt": {"id": f"pmpt_{uuid.uuid4().hex}"}})
    assert unknown.status_code == 404, unknown.text
