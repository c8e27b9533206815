"""Streamed responses and file_search, through the official openai SDK, in every mode.

Every stream is checked whole: the event types in OpenAI's order, ``sequence_number``
consecutive from 0, the deltas adding up to the final text / arguments, one terminal
event carrying the response as stored.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.api.conftest import LiveApi
from tests.support.scripted_llm import MODEL as SCRIPTED

NOTES = """# Field notes

## Volcanoes
The caldera of Mount Tamboro collapsed in 1815 and the ash darkened skies for a year.

## Bees
Honeybees communicate the direction of flowers with a waggle dance inside the hive.
"""


def _events(stream: Any) -> list[Any]:
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[1].type == "response.in_progress"
    return events


def _types(events: list[Any]) -> list[str]:
    # Runs of deltas collapse to one entry: their number depends on the tokenisation.
    out: list[str] = []
    for e in events:
        if not (out and out[-1] == e.type and e.type.endswith(".delta")):
            out.append(e.type)
    return out


def test_text_stream_events_in_order(client: openai.OpenAI) -> None:
    events = _events(client.responses.create(model=SCRIPTED, input="stream me please",
                                             stream=True))
    assert _types(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1
    assert "".join(deltas) == "ECHO: stream me please"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "ECHO: stream me please"
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert len(item_ids) == 1
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "ECHO: stream me please"
    assert final.usage is not None and final.usage.total_tokens > 0
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text and stored.status == "completed"


def test_the_sdk_stream_helper_gets_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=SCRIPTED, input="helper") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == "ECHO: helper" == final.output_text


def test_function_call_arguments_stream(client: openai.OpenAI) -> None:
    tool = {"type": "function", "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    events = _events(client.responses.create(
        model=SCRIPTED, input='CALL lookup {"q": "the longest river"}',
        tools=[tool], stream=True))  # type: ignore[list-item]
    assert _types(events) == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1
    assert json.loads("".join(deltas)) == {"q": "the longest river"}
    done = next(e for e in events if e.type == "response.output_item.done")
    assert done.item.type == "function_call" and done.item.status == "completed"
    assert json.loads(done.item.arguments) == {"q": "the longest river"}


def test_a_call_of_an_undefined_tool_is_handed_back(client: openai.OpenAI) -> None:
    # The scripted model streams a tool call for a tool the request does not define:
    # handed back as a function call (the client decides), never a hang.
    events = _events(client.responses.create(model=SCRIPTED, input="CALL ghost {}",
                                             stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output[0].type == "function_call"


# --- file_search ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def notes_store(api: LiveApi) -> Iterator[dict[str, str]]:
    client = openai.OpenAI(base_url=api.base_url, api_key=api.key, max_retries=0, timeout=120)
    f = client.files.create(file=("notes.md", NOTES.encode(), "text/markdown"),
                            purpose="assistants")
    vs = client.vector_stores.create(name=f"notes-{uuid.uuid4().hex[:6]}")
    client.vector_stores.files.create(vs.id, file_id=f.id, attributes={"kind": "notes"})
    deadline = time.monotonic() + 240
    while client.vector_stores.retrieve(vs.id).file_counts.in_progress:
        assert time.monotonic() < deadline, "ingestion did not finish"
        time.sleep(0.5)
    assert client.vector_stores.retrieve(vs.id).file_counts.completed == 1
    yield {"vs": vs.id, "file": f.id}
    client.vector_stores.delete(vs.id)


def test_file_search_with_citations(client: openai.OpenAI,
                                    notes_store: dict[str, str]) -> None:
    tool = {"type": "file_search", "vector_store_ids": [notes_store["vs"]],
            "max_num_results": 2}
    r = client.responses.create(
        model=SCRIPTED, tools=[tool],  # type: ignore[list-item]
        input='CALL file_search {"queries": ["How do bees share where flowers are?"]}',
        include=["file_search_call.results"])
    assert r.status == "completed"
    call, message = r.output
    assert call.type == "file_search_call" and call.status == "completed"
    assert call.queries == ["How do bees share where flowers are?"]
    assert call.results and len(call.results) <= 2
    assert "waggle dance" in call.results[0].text  # type: ignore[operator]
    assert call.results[0].file_id == notes_store["file"]
    assert call.results[0].filename == "notes.md"
    assert message.type == "message"
    assert message.content[0].text.startswith("RESULT: [1] notes.md")  # type: ignore[union-attr]
    [citation] = message.content[0].annotations  # type: ignore[union-attr]
    assert citation.type == "file_citation" and citation.file_id == notes_store["file"]
    assert citation.filename == "notes.md"
    # Without include the results are not shown (they stay stored).
    plain = client.responses.retrieve(r.id)
    assert plain.output[0].results is None  # type: ignore[union-attr]
    shown = client.responses.retrieve(r.id, include=["file_search_call.results"])
    assert shown.output[0].results  # type: ignore[union-attr]


def test_file_search_filters_and_stream_events(client: openai.OpenAI,
                                               notes_store: dict[str, str]) -> None:
    tool = {"type": "file_search", "vector_store_ids": [notes_store["vs"]],
            "filters": {"type": "eq", "key": "kind", "value": "report"}}
    events = _events(client.responses.create(
        model=SCRIPTED, tools=[tool], stream=True,  # type: ignore[list-item]
        input='CALL file_search {"queries": ["volcano"]}'))
    types = _types(events)
    assert types[:8] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.file_search_call.in_progress", "response.file_search_call.searching",
        "response.file_search_call.completed", "response.output_item.done",
        "response.output_item.added"]
    final = events[-1].response
    assert final.output[0].type == "file_search_call"
    assert final.output_text == "RESULT: No results found."  # the filter kept nothing
    cited = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert cited == []


def test_file_search_annotation_event(client: openai.OpenAI,
                                      notes_store: dict[str, str]) -> None:
    tool = {"type": "file_search", "vector_store_ids": [notes_store["vs"]]}
    events = _events(client.responses.create(
        model=SCRIPTED, tools=[tool], stream=True,  # type: ignore[list-item]
        input='CALL file_search {"queries": ["caldera collapse"]}'))
    [added] = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert added.annotation.type == "file_citation"
    assert added.annotation.file_id == notes_store["file"]
    assert _types(events)[-5:] == [
        "response.output_text.annotation.added", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
