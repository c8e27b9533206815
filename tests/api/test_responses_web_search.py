"""The Responses API's ``web_search`` tool through the official openai SDK, in every mode.

The search provider is ``remote::tavily-search`` pointed at a local server speaking
Tavily's wire format (tests/support/fake_search.py, configured by conftest); the scripted
upstream makes the model's calls certain (``CALL web_search {"query": ...}``) and answers
with the tool's text (``RESULT: ...``), which holds the result URLs: they become
``url_citation`` annotations.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.support.fake_search import TAVILY_KEY, FakeSearch
from tests.support.scripted_llm import MODEL as SCRIPTED

LYON_WEATHER = "https://weather.example.com/lyon"


def search(query: str) -> str:
    return f"CALL web_search {json.dumps({'query': query})}"


def of_type(response: Any, kind: str) -> list[Any]:
    return [item for item in response.output if item.type == kind]


def test_web_search_call_and_citations(client: openai.OpenAI, fake_search: FakeSearch) -> None:
    fake_search.requests.clear()
    r = client.responses.create(model=SCRIPTED, input=search("weather in Lyon"),
                                tools=[{"type": "web_search"}])
    assert r.status == "completed", r.error
    assert [i.type for i in r.output] == ["web_search_call", "message"]
    [call] = of_type(r, "web_search_call")
    assert call.id.startswith("ws_") and call.status == "completed"
    assert call.action.type == "search" and call.action.query == "weather in Lyon"
    # The provider was asked over Tavily's wire format, with its key.
    seen = fake_search.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/search")
    assert seen.headers["authorization"] == f"Bearer {TAVILY_KEY}"
    assert seen.body["query"] == "weather in Lyon"
    text = r.output_text
    assert text.startswith("RESULT: [1] Weather in Lyon today")
    assert LYON_WEATHER in text
    annotations = r.output[1].content[0].annotations
    cited = {a.url for a in annotations}
    assert LYON_WEATHER in cited
    for a in annotations:
        assert a.type == "url_citation" and text[a.start_index:a.end_index] == a.url
        assert a.title


def test_results_and_sources_only_on_request(client: openai.OpenAI) -> None:
    plain = client.responses.create(model=SCRIPTED, input=search("Saone river"),
                                    tools=[{"type": "web_search"}])
    [call] = of_type(plain, "web_search_call")
    assert not getattr(call.action, "sources", None)
    assert not (call.model_extra or {}).get("results")
    full = client.responses.create(
        model=SCRIPTED, input=search("Saone river"), tools=[{"type": "web_search"}],
        include=["web_search_call.results", "web_search_call.action.sources"])
    [call] = of_type(full, "web_search_call")
    urls = [s.url for s in call.action.sources]
    assert "https://en.wikipedia.org/wiki/Saone" in urls
    results = (call.model_extra or {})["results"]
    assert results[0]["url"] == urls[0] and results[0]["content"] and \
        results[0]["score"] is not None
    # Retrieval honours include the same way.
    again = client.responses.retrieve(plain.id, include=["web_search_call.action.sources"])
    assert of_type(again, "web_search_call")[0].action.sources


def test_web_search_preview_and_context_size(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=SCRIPTED, input=search("Lyon France Rhone Saone weather"),
        tools=[{"type": "web_search_preview", "search_context_size": "low"}],
        include=["web_search_call.action.sources"])
    [call] = of_type(r, "web_search_call")
    assert 1 <= len(call.action.sources) <= 3
    assert r.tools[0].type == "web_search_preview"


def test_allowed_domains(client: openai.OpenAI) -> None:
    r = client.responses.create(
        model=SCRIPTED, input=search("Lyon Saone weather"),
        tools=[{"type": "web_search", "filters": {"allowed_domains": ["wikipedia.org"]}}],
        include=["web_search_call.action.sources"])
    urls = [s.url for s in of_type(r, "web_search_call")[0].action.sources]
    assert urls and all(u.startswith("https://en.wikipedia.org/") for u in urls)
    assert LYON_WEATHER not in r.output_text


def test_streamed_search_events(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=SCRIPTED, input=search("fnstack docs"),
                                          tools=[{"type": "web_search"}], stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    order = ["response.created", "response.web_search_call.in_progress",
             "response.web_search_call.searching", "response.web_search_call.completed",
             "response.output_text.annotation.added", "response.output_text.done",
             "response.completed"]
    positions = [types.index(t) for t in order]
    assert positions == sorted(positions), types
    added = next(e for e in events if e.type == "response.output_text.annotation.added")
    assert added.annotation.url == "https://fnstack.example.org/docs"


@pytest.mark.parametrize(("query", "says"), [
    ("fail:429", "rate limit"), ("fail:500", "500"), ("fail:garbage", "not JSON")])
def test_upstream_faults_are_failed_calls(client: openai.OpenAI, query: str,
                                          says: str) -> None:
    r = client.responses.create(model=SCRIPTED, input=search(query),
                                tools=[{"type": "web_search"}])
    assert r.status == "completed"
    [call] = of_type(r, "web_search_call")
    assert call.status == "failed"
    assert says in r.output_text and "web search failed" in r.output_text


@pytest.mark.parametrize(("tool", "param"), [
    ({"type": "web_search", "search_context_size": "huge"}, "tools[0].search_context_size"),
    ({"type": "web_search", "filters": {"allowed_domains": ["https://x.org/a"]}},
     "tools[0].filters.allowed_domains"),
    ({"type": "web_search", "external_web_access": False}, "tools[0].external_web_access"),
    ({"type": "web_search", "colour": "blue"}, "tools[0].colour"),
])
def test_bad_definitions_are_400(client: openai.OpenAI, tool: dict[str, Any],
                                 param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=SCRIPTED, input="hi", tools=[tool])
    assert info.value.body["param"] == param, info.value.body
