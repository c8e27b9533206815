"""/v1/responses through the official openai SDK, in every execution mode.

The scripted upstream (tests/support/scripted_llm.py, model ``scripted``) makes the
loop's behaviour certain: ``CALL <tool> <args>`` lines make it call tools, tool results
come back as ``RESULT: ...``, anything else as ``ECHO: <text>``. The bundled model
(``reference``) shows a plain response end to end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of
from tests.support.scripted_llm import MODEL as SCRIPTED

WEATHER = {
    "type": "function", "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]},
}


def test_plain_response_from_the_scripted_model(client: openai.OpenAI) -> None:
    r = client.responses.create(model=SCRIPTED, input="hello there",
                                metadata={"topic": "greeting"})
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status == "completed" and r.error is None
    assert r.output_text == "ECHO: hello there"
    [message] = r.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text"
    assert r.usage is not None and r.usage.total_tokens == (
        r.usage.input_tokens + r.usage.output_tokens) > 0
    assert r.metadata == {"topic": "greeting"}
    again = client.responses.retrieve(r.id)
    assert again.output_text == "ECHO: hello there" and again.status == "completed"


def test_plain_response_from_the_bundled_model(api: LiveApi, client: openai.OpenAI) -> None:
    # SmolLM2: in torch in-process locally; behind the gateway the zip functions carry no
    # torch, so the same model answers through llama.cpp (remote::openai).
    model = models_of(api)["reference" if api.mode == "local" else "openai"]
    r = client.responses.create(model=model, input="Say hi.", max_output_tokens=8,
                                temperature=0, instructions="Be brief.")
    assert r.status in ("completed", "incomplete")
    assert r.output and r.output[0].type == "message"
    assert r.output_text.strip()
    assert r.instructions == "Be brief." and r.model == model
    assert r.usage is not None and r.usage.output_tokens <= 8
    if api.mode == "local":  # llama.cpp's server reports no usage in a stream
        assert r.usage.output_tokens > 0


def test_instructions_and_input_messages_reach_the_model(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=SCRIPTED, instructions="You are terse.",
        input=[{"role": "user", "content": "first"},
               {"role": "assistant", "content": "ok"},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "second"},
                            {"type": "input_text", "text": " part"}]}])
    assert r.output_text == "ECHO: second part"
    items = client.responses.input_items.list(r.id, order="asc")
    assert [i.type for i in items.data] == ["message", "message", "message"]
    assert [i.role for i in items.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]


def test_function_tool_round_trip_with_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=SCRIPTED, tools=[WEATHER],  # type: ignore[list-item]
        input='What is the weather?\nCALL get_weather {"city": "Paris"}')
    assert first.status == "completed"
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")  # type: ignore[union-attr]
    assert first.tools[0].type == "function" and first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    second = client.responses.create(
        model=SCRIPTED, previous_response_id=first.id, tools=[WEATHER],  # type: ignore[list-item]
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": "sunny, 21 C"}])
    assert second.status == "completed"
    assert second.output_text == "RESULT: sunny, 21 C"
    assert second.previous_response_id == first.id


def test_function_tool_round_trip_with_the_full_input(client: openai.OpenAI) -> None:
    user = {"role": "user", "content": 'CALL get_weather {"city": "Oslo"}\nCALL get_weather '
                                       '{"city": "Rome"}'}
    first = client.responses.create(model=SCRIPTED, input=[user],  # type: ignore[list-item]
                                    tools=[WEATHER])  # type: ignore[list-item]
    calls = [o for o in first.output if o.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Oslo", "Rome"]  # parallel
    outputs = [{"type": "function_call_output", "call_id": c.call_id,
                "output": f"{json.loads(c.arguments)['city']}: rain"} for c in calls]
    second = client.responses.create(
        model=SCRIPTED, tools=[WEATHER], store=False,  # type: ignore[list-item]
        input=[user, *[c.model_dump(exclude_none=True) for c in calls], *outputs])
    assert second.output_text == "RESULT: Oslo: rain | Rome: rain"
    with pytest.raises(openai.NotFoundError):  # store: false
        client.responses.retrieve(second.id)


def test_previous_response_id_chain_carries_every_turn(client: openai.OpenAI,
                                                       scripted_llm: Any) -> None:
    a = client.responses.create(model=SCRIPTED, input="one")
    b = client.responses.create(model=SCRIPTED, input="two", previous_response_id=a.id)
    c = client.responses.create(model=SCRIPTED, input="three", previous_response_id=b.id)
    assert c.output_text == "ECHO: three"
    sent = scripted_llm.requests[-1]["messages"]
    texts = [(m["role"], m["content"]) for m in sent]
    assert texts == [("user", "one"), ("assistant", "ECHO: one"), ("user", "two"),
                     ("assistant", "ECHO: two"), ("user", "three")]


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    r = client.responses.create(
        model=SCRIPTED, input="Paris",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema,
                         "strict": True}})
    data = json.loads(r.output_text)
    assert data == {"city": "ECHO: Paris", "population": 1}
    assert r.text is not None and r.text.format is not None
    assert r.text.format.type == "json_schema"
    obj = client.responses.create(model=SCRIPTED, input="x",
                                  text={"format": {"type": "json_object"}})
    assert json.loads(obj.output_text) == {"echo": "ECHO: x"}


def test_a_loop_that_never_ends_stops_incomplete_at_the_limit(client: openai.OpenAI,
                                                               scripted_llm: Any) -> None:
    before = len(scripted_llm.requests)
    tool = {"type": "file_search", "vector_store_ids": [_store(client)]}
    r = client.responses.create(model=SCRIPTED, input="LOOP file_search",
                                tools=[tool])  # type: ignore[list-item]
    assert r.status == "incomplete"
    assert r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_inference_calls"  # type: ignore[comparison-overlap]
    assert len(scripted_llm.requests) - before == 10  # the default limit of model calls
    assert sum(o.type == "file_search_call" for o in r.output) == 10


def test_max_tool_calls_limits_built_in_calls(client: openai.OpenAI) -> None:
    tool = {"type": "file_search", "vector_store_ids": [_store(client)]}
    r = client.responses.create(model=SCRIPTED, input="LOOP file_search", max_tool_calls=2,
                                tools=[tool])  # type: ignore[list-item]
    assert sum(o.type == "file_search_call" for o in r.output) == 2
    assert r.max_tool_calls == 2


def test_delete_then_404(client: openai.OpenAI) -> None:
    r = client.responses.create(model=SCRIPTED, input="bye")
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=SCRIPTED, input="x", previous_response_id=r.id)


def test_input_items_pages_with_a_cursor(client: openai.OpenAI) -> None:
    r = client.responses.create(model=SCRIPTED, input=[
        {"role": "user", "content": f"m{i}"} for i in range(5)])
    page = client.responses.input_items.list(r.id, limit=2, order="asc")
    assert [i.content[0].text for i in page.data] == ["m0", "m1"]  # type: ignore[union-attr]
    assert page.has_more
    seen = [i.content[0].text for i in client.responses.input_items.list(  # type: ignore[union-attr]
        r.id, limit=2, order="asc")]
    assert seen == ["m0", "m1", "m2", "m3", "m4"]  # the SDK follows the cursor
    desc = client.responses.input_items.list(r.id, limit=10)
    assert [i.content[0].text for i in desc.data] == ["m4", "m3", "m2", "m1", "m0"]  # type: ignore[union-attr]


# --- bad input ---------------------------------------------------------------------------


def _store(client: openai.OpenAI) -> str:
    return client.vector_stores.create(name=f"empty-{uuid.uuid4().hex[:6]}").id


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "previous_response_id": "resp_000000000000ffffffffffffffff"},
     "previous_response_id"),
    ({"input": "x", "conversation": "conv_000000000000ffffffffffffffff"}, "conversation"),
    ({"input": "x", "tools": [{"type": "file_search", "vector_store_ids": ["vs_nope"]}]},
     "tools[0].vector_store_ids[0]"),
])
def test_unknown_references_are_404(http: httpx.Client, body: dict[str, Any],
                                    param: str) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, **body})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(("tools", "param"), [
    ([{"type": "function"}], "tools[0].name"),
    ([{"type": "function", "name": "has space"}], "tools[0].name"),
    ([{"type": "function", "name": "f", "parameters": "nope"}], "tools[0].parameters"),
    ([WEATHER, WEATHER], "tools[1].name"),
    ([{"type": "teleport"}], "tools[0].type"),
    ([{"type": "file_search"}], "tools[0].vector_store_ids"),
    ([{"type": "file_search", "vector_store_ids": ["vs_x"], "max_num_results": 0}],
     "tools[0]"),
])
def test_invalid_tool_definitions_are_400(http: httpx.Client, tools: list[Any],
                                          param: str) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x", "tools": tools})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(("body", "param"), [
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
    ({"input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
     "input[0].call_id"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input[0]"),
    ({"input": "x", "include": ["everything"]}, "include[0]"),
    ({"input": "x", "background": True, "store": False}, "background"),
    ({}, "input"),
])
def test_bad_requests_are_400_naming_the_field(http: httpx.Client, body: dict[str, Any],
                                               param: str) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_unknown_model_is_404(http: httpx.Client) -> None:
    r = http.post("/v1/responses", json={"model": "no-such-model", "input": "x"})
    assert r.status_code == 404, r.text


def new_principal(api: LiveApi) -> Iterator[openai.OpenAI]:
    """An SDK client of a fresh ordinary principal (a key the admin creates)."""
    with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=60,
                      headers=api.headers) as admin:
        created = admin.post("/v1/keys", json={"name": f"eve-{uuid.uuid4().hex[:6]}",
                                               "principal": f"eve-{uuid.uuid4().hex[:6]}"})
        assert created.status_code == 200, created.text
        yield openai.OpenAI(base_url=api.base_url, api_key=created.json()["value"],
                            max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def stranger(api: LiveApi) -> Iterator[openai.OpenAI]:
    yield from new_principal(api)


def test_another_principals_response_is_404(client: openai.OpenAI,
                                            stranger: openai.OpenAI) -> None:
    mine = client.responses.create(model=SCRIPTED, input="secret",
                                   tools=[WEATHER])  # type: ignore[list-item]
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=SCRIPTED, input="x", previous_response_id=mine.id)
    vs = _store(client)
    with pytest.raises(openai.NotFoundError):
        stranger.responses.create(model=SCRIPTED, input="x", tools=[  # type: ignore[list-item]
            {"type": "file_search", "vector_store_ids": [vs]}])
    assert client.responses.retrieve(mine.id).id == mine.id


def test_list_responses_pages_and_filters_by_model(http: httpx.Client,
                                                   stranger: openai.OpenAI) -> None:
    ids = [http.post("/v1/responses", json={"model": SCRIPTED, "input": f"l{i}"}).json()["id"]
           for i in range(3)]
    first = http.get("/v1/responses", params={"limit": 2}).json()
    assert first["object"] == "list" and first["has_more"] is True
    assert [r["id"] for r in first["data"]] == ids[::-1][:2]  # newest first
    rest = http.get("/v1/responses", params={"limit": 2, "after": first["last_id"]}).json()
    assert rest["data"][0]["id"] == ids[0]
    other = http.get("/v1/responses", params={"model": "no-such-model"}).json()
    assert other["data"] == []
    theirs = httpx.get(f"{stranger.base_url}responses",
                       headers={"Authorization": f"Bearer {stranger.api_key}"}).json()
    assert not set(ids) & {r["id"] for r in theirs["data"]}
