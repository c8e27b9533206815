"""Clients fnstack did not write, against /v1/responses and /v1/conversations.

llama-stack-client (0.7.x, on Python 3.12 in ``.venv-lsc``: see test_llama_stack_client.py)
makes its responses and conversations calls in a subprocess that prints one JSON report;
the official openai SDK drives its less common paths: the ``responses.stream`` helper and
``responses.parse`` with a pydantic ``text_format``, auto-paging of input items, re-streaming
a background response from a sequence number, every documented ``include`` value. The
scripted upstream (model ``scripted``: ``ECHO: <text>``) makes the answers certain; the
bundled ``reference`` model answers one plain call through each client.
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of
from tests.support.lsc_client import run_lsc
from tests.support.scripted_llm import MODEL as SCRIPTED

# Runs in .venv-lsc: argv = base_url, key, scripted model, reference model. Every call is
# one check {"ok", "detail"}, as in tests/support/lsc_report.py.
LSC_SCRIPT = r"""
import json, sys, traceback
from llama_stack_client import LlamaStackClient
base, key, scripted, reference, reference_base = sys.argv[1:6]
c = LlamaStackClient(base_url=base, api_key=key, max_retries=0, timeout=120)
# Deployed, the bundled model answers in its own (image) function: /image/v1.
ref = LlamaStackClient(base_url=reference_base, api_key=key, max_retries=0, timeout=120)
report, ids = {}, {}

def check(name, fn):
    try:
        report[name] = {"ok": True, "detail": fn()}
    except Exception as exc:
        report[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc()[-1500:]}

def create():
    r = c.responses.create(model=scripted, input="hello lsc", store=True,
                           instructions="Be terse.", temperature=0)
    ids["plain"] = r.id
    return {"id": r.id, "status": r.status, "text": r.output[0].content[0].text,
            "model": r.model, "instructions": r.instructions}

def create_stream():
    events = list(c.responses.create(model=scripted, input="streamed lsc", stream=True))
    done = events[-1]
    ids["streamed"] = done.response.id
    return {"types": [e.type for e in events],
            "text": "".join(getattr(e, "delta", "") for e in events
                            if e.type == "response.output_text.delta"),
            "status": done.response.status}

def chained():
    r = c.responses.create(model=scripted, input="second turn",
                           previous_response_id=ids["plain"])
    ids["chained"] = r.id
    return {"text": r.output[0].content[0].text, "previous": r.previous_response_id}

def function_call():
    tool = {"type": "function", "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    r = c.responses.create(model=scripted, tools=[tool],
                           input='weather?\nCALL get_weather {"city": "Oslo"}')
    call = r.output[0]
    back = c.responses.create(model=scripted, previous_response_id=r.id, tools=[tool],
                              input=[{"type": "function_call_output", "call_id": call.call_id,
                                      "output": "rainy"}])
    return {"type": call.type, "name": call.name, "arguments": json.loads(call.arguments),
            "text": back.output[0].content[0].text}

def retrieve():
    r = c.responses.retrieve(ids["plain"])
    return {"id": r.id, "status": r.status, "text": r.output[0].content[0].text}

def listing():
    page = c.responses.list(limit=100)
    return {"ids": [r.id for r in page.data]}

def input_items():
    page = c.responses.input_items.list(ids["chained"])
    return {"roles": [getattr(i, "role", None) for i in page.data],
            "types": [getattr(i, "type", None) for i in page.data]}

def delete():
    d = c.responses.delete(ids["streamed"])
    try:
        c.responses.retrieve(ids["streamed"])
        after = "found"
    except Exception as exc:
        after = type(exc).__name__
    return {"deleted": getattr(d, "deleted", None), "id": getattr(d, "id", None),
            "after": after}

def conversation():
    conv = c.conversations.create(items=[{"type": "message", "role": "user",
                                          "content": "remember: blue"}],
                                  metadata={"via": "lsc"})
    r = c.responses.create(model=scripted, input="what colour?", conversation=conv.id)
    items = c.conversations.items.list(conv.id, order="asc")
    got = c.conversations.retrieve(conv.id)
    deleted = c.conversations.delete(conv.id)
    return {"text": r.output[0].content[0].text, "metadata": got.metadata,
            "items": [(i.type, getattr(i, "role", None)) for i in items.data],
            "deleted": deleted.deleted}

def reference_plain():
    r = ref.responses.create(model=reference, input="Say hi.", max_output_tokens=8,
                           temperature=0)
    return {"status": r.status, "text": r.output[0].content[0].text if r.output else "",
            "output_tokens": r.usage.output_tokens if r.usage else None}

for name, fn in [("responses.create", create), ("responses.create(stream)", create_stream),
                 ("responses.create(previous_response_id)", chained),
                 ("responses.create(function)", function_call),
                 ("responses.retrieve", retrieve), ("responses.list", listing),
                 ("responses.input_items.list", input_items),
                 ("responses.delete", delete), ("conversations+responses", conversation),
                 ("responses.create(reference)", reference_plain)]:
    check(name, fn)
print(json.dumps(report, default=str))
"""

_LSC: dict[str, dict[str, Any]] = {}


@pytest.fixture
def lsc(api: LiveApi) -> dict[str, Any]:
    if api.base_url not in _LSC:
        _LSC[api.base_url] = run_lsc(
            "-c", LSC_SCRIPT, api.base_url.removesuffix("/v1"), api.key, SCRIPTED,
            models_of(api)["reference"], (api.reference_url or api.base_url).removesuffix("/v1"),
            timeout=600)
    return _LSC[api.base_url]


@pytest.fixture
def reference(api: LiveApi) -> str:
    """The bundled model; naming this fixture points ``client`` at where it answers."""
    return models_of(api)["reference"]


def _ok(report: dict[str, Any], name: str) -> Any:
    entry = report[name]
    assert entry["ok"], f"{name}: {entry['detail']}\n{entry.get('trace', '')}"
    return entry["detail"]


def test_lsc_create_retrieve_and_chain(lsc: dict[str, Any]) -> None:
    made = _ok(lsc, "responses.create")
    assert made["status"] == "completed" and made["text"] == "ECHO: hello lsc"
    assert made["model"] == SCRIPTED and made["instructions"] == "Be terse."
    got = _ok(lsc, "responses.retrieve")
    assert got == {"id": made["id"], "status": "completed", "text": "ECHO: hello lsc"}
    chained = _ok(lsc, "responses.create(previous_response_id)")
    assert chained == {"text": "ECHO: second turn", "previous": made["id"]}


def test_lsc_stream(lsc: dict[str, Any]) -> None:
    s = _ok(lsc, "responses.create(stream)")
    assert s["types"][0] == "response.created" and s["types"][-1] == "response.completed"
    assert s["text"] == "ECHO: streamed lsc" and s["status"] == "completed"


def test_lsc_function_call_round_trip(lsc: dict[str, Any]) -> None:
    f = _ok(lsc, "responses.create(function)")
    assert f == {"type": "function_call", "name": "get_weather",
                 "arguments": {"city": "Oslo"}, "text": "RESULT: rainy"}


def test_lsc_list_responses(lsc: dict[str, Any]) -> None:
    # Llama Stack's GET /v1/responses (newest first): the client's responses.list.
    listed = _ok(lsc, "responses.list")["ids"]
    made = _ok(lsc, "responses.create")["id"]
    assert made in listed


def test_lsc_input_items(lsc: dict[str, Any]) -> None:
    items = _ok(lsc, "responses.input_items.list")
    assert items["types"] == ["message"] and items["roles"] == ["user"]


def test_lsc_delete(lsc: dict[str, Any]) -> None:
    d = _ok(lsc, "responses.delete")
    assert d["deleted"] is True and d["id"] and d["after"] == "NotFoundError"


def test_lsc_conversation_with_a_response(lsc: dict[str, Any]) -> None:
    c = _ok(lsc, "conversations+responses")
    assert c["text"] == "ECHO: what colour?" and c["metadata"] == {"via": "lsc"}
    assert c["items"] == [["message", "user"], ["message", "user"], ["message", "assistant"]]
    assert c["deleted"] is True


def test_lsc_reference_model(lsc: dict[str, Any]) -> None:
    r = _ok(lsc, "responses.create(reference)")
    assert r["status"] in ("completed", "incomplete") and r["text"].strip()
    assert 0 < r["output_tokens"] <= 8


# --- the openai SDK's less common paths --------------------------------------------------------


class City(BaseModel):
    name: str
    population: int
    capital: bool


def test_stream_helper_with_text_format_parses(client: openai.OpenAI) -> None:
    with client.responses.stream(model=SCRIPTED, input="Describe Oslo.",
                                 text_format=City) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.done" in kinds
    parsed = final.output_parsed
    assert isinstance(parsed, City)
    assert parsed == City(name="ECHO: Describe Oslo.", population=1, capital=True)
    # The stored response carries the json_schema format the helper sent.
    stored = client.responses.retrieve(final.id)
    assert stored.text is not None and stored.text.format is not None
    assert stored.text.format.type == "json_schema"
    assert stored.text.format.name == "City"  # type: ignore[union-attr]


def test_parse_with_text_format(client: openai.OpenAI) -> None:
    r = client.responses.parse(model=SCRIPTED, input="Describe Bergen.", text_format=City)
    assert r.status == "completed"
    assert r.output_parsed == City(name="ECHO: Describe Bergen.", population=1, capital=True)


def test_input_items_auto_paging(client: openai.OpenAI) -> None:
    texts = [f"m{i}" for i in range(7)]
    r = client.responses.create(model=SCRIPTED, input=[
        {"role": "user" if i % 2 == 0 else "assistant", "content": t}
        for i, t in enumerate(texts)])
    assert r.output_text == "ECHO: m6"

    def text(item: Any) -> str:
        return str(item.content[0].text)

    asc = list(client.responses.input_items.list(r.id, limit=2, order="asc"))
    assert [text(i) for i in asc] == texts
    desc = list(client.responses.input_items.list(r.id, limit=3))  # default: desc
    assert [text(i) for i in desc] == texts[::-1]
    assert len({i.id for i in asc}) == 7
    first = client.responses.input_items.list(r.id, limit=2, order="asc")
    assert first.has_more is True and first.first_id == asc[0].id
    assert first.last_id == asc[1].id
    # A cursor in the middle, both ways.
    after = client.responses.input_items.list(r.id, order="asc", after=asc[2].id)
    assert [text(i) for i in after.data] == texts[3:]
    # The SDK dropped ``before``; the API still documents it.
    before = client.responses.input_items.list(r.id, order="asc",
                                               extra_query={"before": asc[2].id})
    assert [text(i) for i in before.data] == texts[:2]


def test_retrieve_stream_starting_after(client: openai.OpenAI) -> None:
    r = client.responses.create(model=SCRIPTED, input="replay me", background=True)
    full = list(client.responses.retrieve(r.id, stream=True))
    assert full[-1].type == "response.completed"
    seqs = [e.sequence_number for e in full]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    cut = seqs[2]
    tail = list(client.responses.retrieve(r.id, stream=True, starting_after=cut))
    assert [e.sequence_number for e in tail] == [s for s in seqs if s > cut]
    assert [e.type for e in tail] == [e.type for e in full if e.sequence_number > cut]
    text = "".join(e.delta for e in tail + full[:3]
                   if e.type == "response.output_text.delta")  # type: ignore[union-attr]
    assert text == "ECHO: replay me"


DOCUMENTED_INCLUDES = [
    "web_search_call.action.sources", "code_interpreter_call.outputs",
    "computer_call_output.output.image_url", "file_search_call.results",
    "message.input_image.image_url", "message.output_text.logprobs",
    "reasoning.encrypted_content",
]


@pytest.mark.parametrize("include", DOCUMENTED_INCLUDES)
def test_every_documented_include_is_accepted(client: openai.OpenAI, include: str) -> None:
    # OpenAI's documented values: accepted on create, retrieve and input items alike, even
    # where the response has nothing of the kind.
    r = client.responses.create(model=SCRIPTED, input="include me",
                                include=[include])  # type: ignore[list-item]
    assert r.output_text == "ECHO: include me"
    got = client.responses.retrieve(r.id, include=[include])  # type: ignore[list-item]
    assert got.id == r.id
    items = client.responses.input_items.list(r.id, include=[include])  # type: ignore[list-item]
    assert len(items.data) == 1


def test_include_input_image_url_shows_the_image(client: openai.OpenAI) -> None:
    url = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
           "nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==")
    r = client.responses.create(model=SCRIPTED, input=[{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"},
        {"type": "input_image", "image_url": url, "detail": "low"}]}])
    assert r.output_text.startswith("ECHO: what is this")
    items = client.responses.input_items.list(
        r.id, include=["message.input_image.image_url"]).data
    [image] = [p for p in items[0].content if p.type == "input_image"]  # type: ignore[union-attr]
    assert image.image_url == url  # type: ignore[union-attr]


def test_reference_model_through_the_stream_helper(reference: str,
                                                   client: openai.OpenAI) -> None:
    # get_final_response() wants response.completed; a budget cut ends in
    # response.incomplete, so the last event's response is the final one.
    with client.responses.stream(model=reference, input="Say hi.",
                                 max_output_tokens=8, temperature=0) as stream:
        events = list(stream)
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert events[-1].type in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status in ("completed", "incomplete") and deltas
    assert "".join(deltas) == final.output_text
    assert final.usage is not None and 0 < final.usage.output_tokens <= 8


def test_input_tokens_count(client: openai.OpenAI) -> None:
    # The SDK's responses.input_tokens.count (POST /v1/responses/input_tokens): what a
    # request would cost before sending it (context management in agent clients).
    small = client.responses.input_tokens.count(model=SCRIPTED, input="hello")
    big = client.responses.input_tokens.count(
        model=SCRIPTED, instructions="Be terse.",
        input=[{"role": "user", "content": "hello " * 50}])
    assert small.object == "response.input_tokens"
    assert 0 < small.input_tokens < big.input_tokens
