"""Conversations (OpenAI's /v1/conversations) through the official openai SDK, every mode.

A conversation holds Responses items in order; these tests check the wire shapes the SDK
parses, cursor paging both ways, item validation (400 naming the field), and that
another principal's conversation (and its items) is a 404 for every operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_tenancy import Tenant, tenant_pair
from tests.support.lsc_client import run_lsc


@pytest.fixture(scope="module")
def pair(api: LiveApi) -> Iterator[tuple[Tenant, Tenant]]:
    yield from tenant_pair(api, "conv")


def test_create_retrieve_update_delete(api: LiveApi, client: openai.OpenAI) -> None:
    conv = client.conversations.create(
        metadata={"topic": "demo"},
        items=[{"type": "message", "role": "user", "content": "Hello!"}],
    )
    assert conv.id.startswith("conv_") and conv.object == "conversation"
    assert conv.metadata == {"topic": "demo"} and conv.created_at > 0

    got = client.conversations.retrieve(conv.id)
    assert got.id == conv.id and got.metadata == {"topic": "demo"}

    updated = client.conversations.update(conv.id, metadata={"topic": "changed", "k": "v"})
    assert updated.metadata == {"topic": "changed", "k": "v"}
    assert client.conversations.retrieve(conv.id).metadata == {"topic": "changed", "k": "v"}

    items = client.conversations.items.list(conv.id)
    assert [i.type for i in items.data] == ["message"]
    msg = items.data[0]
    assert msg.role == "user" and msg.status == "completed" and msg.id.startswith("msg_")
    assert msg.content[0].type == "input_text" and msg.content[0].text == "Hello!"

    deleted = client.conversations.delete(conv.id)
    assert deleted.id == conv.id and deleted.deleted and deleted.object == "conversation.deleted"
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(msg.id, conversation_id=conv.id)


def test_item_types_round_trip(client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    sent = [
        {"type": "message", "role": "system", "content": [
            {"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": "What is the weather?"},
        {"type": "function_call", "call_id": "call_1", "name": "weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "assistant", "content": "It is sunny."},
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_1", "approve": True},
    ]
    created = client.conversations.items.create(conv.id, items=sent)  # type: ignore[arg-type]
    assert len(created.data) == 6 and created.first_id == created.data[0].id
    assert created.last_id == created.data[-1].id
    types = [i.type for i in created.data]
    assert types == ["message", "message", "function_call", "function_call_output", "message",
                     "mcp_approval_response"]
    fc = created.data[2]
    assert fc.type == "function_call" and fc.id.startswith("fc_")
    assert fc.name == "weather" and fc.arguments == '{"city": "Paris"}'
    assistant = created.data[4]
    assert assistant.type == "message" and assistant.content[0].type == "output_text"
    # Retrieve gives the stored item back, same shape.
    again = client.conversations.items.retrieve(fc.id, conversation_id=conv.id)
    assert again.type == "function_call" and again.call_id == "call_1"
    out = client.conversations.items.retrieve(created.data[3].id, conversation_id=conv.id)
    assert out.type == "function_call_output" and out.output == "sunny"
    # A client-chosen id is kept; the same id twice in one conversation is refused.
    mine = client.conversations.items.create(
        conv.id, items=[{"type": "message", "role": "user", "content": "x", "id": "msg_mine"}])
    assert mine.data[0].id == "msg_mine"
    with pytest.raises(openai.BadRequestError) as err:
        client.conversations.items.create(
            conv.id, items=[{"type": "message", "role": "user", "content": "y",
                             "id": "msg_mine"}])
    assert err.value.body["param"] == "items[0].id"  # type: ignore[index]


def test_ordering_and_cursor_paging(client: openai.OpenAI) -> None:
    conv = client.conversations.create(
        items=[{"role": "user", "content": f"m{i}"} for i in range(20)])
    client.conversations.items.create(
        conv.id, items=[{"role": "user", "content": f"m{i}"} for i in range(20, 25)])
    texts = lambda page: [i.content[0].text for i in page.data]  # noqa: E731

    # Default: newest first, 20 a page.
    first = client.conversations.items.list(conv.id)
    assert texts(first) == [f"m{i}" for i in range(24, 4, -1)] and first.has_more
    ascending = client.conversations.items.list(conv.id, order="asc", limit=7)
    assert texts(ascending) == [f"m{i}" for i in range(7)] and ascending.has_more
    nxt = client.conversations.items.list(conv.id, order="asc", limit=7,
                                          after=ascending.last_id)
    assert texts(nxt) == [f"m{i}" for i in range(7, 14)]
    # The SDK's auto-pagination walks every page with `after`.
    every = [i.content[0].text for i in client.conversations.items.list(
        conv.id, order="asc", limit=4)]
    assert every == [f"m{i}" for i in range(25)]
    every_desc = [i.id for i in client.conversations.items.list(conv.id, limit=6)]
    assert len(every_desc) == 25 and len(set(every_desc)) == 25

    # Deleting an item keeps the order of the rest and its id still works as a cursor;
    # delete answers the conversation.
    victim = ascending.data[3]
    after_delete = client.conversations.items.delete(victim.id, conversation_id=conv.id)
    assert after_delete.id == conv.id and after_delete.object == "conversation"
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(victim.id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.delete(victim.id, conversation_id=conv.id)
    rest = client.conversations.items.list(conv.id, order="asc", limit=3, after=victim.id)
    assert texts(rest) == ["m4", "m5", "m6"]
    assert len(list(client.conversations.items.list(conv.id, limit=100))) == 24


def test_bad_items_are_400_naming_the_field(client: openai.OpenAI, http: httpx.Client) -> None:
    conv = client.conversations.create()
    cases = [
        ({"type": "message", "role": "robot", "content": "hi"}, "items[0].role"),
        ({"type": "message", "role": "user"}, "items[0].content"),
        ({"type": "message", "role": "user", "content": []}, "items[0].content"),
        ({"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]},
         "items[0].content[0].type"),
        ({"type": "message", "role": "user", "content": [{"type": "input_text"}]},
         "items[0].content[0].text"),
        ({"type": "message", "role": "user", "content": [{"type": "input_image"}]},
         "items[0].content[0].image_url"),
        ({"type": "function_call", "name": "f", "arguments": "{}"}, "items[0].call_id"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}},
         "items[0].arguments"),
        ({"type": "function_call_output", "call_id": "c"}, "items[0].output"),
        ({"type": "teleport"}, "items[0].type"),
        ({"type": "item_reference", "id": "msg_1"}, "items[0].type"),
        ("just text", "items[0]"),
    ]
    for item, param in cases:
        r = http.post(f"/v1/conversations/{conv.id}/items", json={"items": [item]})
        assert r.status_code == 400, (item, r.text)
        assert r.json()["error"]["param"] == param, (item, r.json())
        # The same rules at create: nothing is created.
        r = http.post("/v1/conversations", json={"items": [item]})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    # The second item is the bad one: the first is not stored either.
    r = http.post(f"/v1/conversations/{conv.id}/items",
                  json={"items": [{"role": "user", "content": "ok"}, {"role": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items[1].role"
    assert client.conversations.items.list(conv.id).data == []
    # At most 20 items a call.
    many = [{"role": "user", "content": str(i)} for i in range(21)]
    r = http.post(f"/v1/conversations/{conv.id}/items", json={"items": many})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items"
    r = http.post("/v1/conversations", json={"items": many})
    assert r.status_code == 400 and r.json()["error"]["param"] == "items"
    # An item must fit one DynamoDB item: 413 before anything is written.
    big = {"role": "user", "content": "x" * 400_000}
    r = http.post(f"/v1/conversations/{conv.id}/items",
                  json={"items": [{"role": "user", "content": "small"}, big]})
    assert r.status_code == 413 and r.json()["error"]["param"] == "items[1]", r.text
    assert client.conversations.items.list(conv.id).data == []
    # Bad listing parameters.
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"),
                         ("after=msg_unknown", "after"), ("include=bogus", "include[0]")):
        r = http.get(f"/v1/conversations/{conv.id}/items?{query}")
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)
    ok = client.conversations.items.list(conv.id, include=["file_search_call.results"])
    assert ok.data == []
    # Metadata limits.
    r = http.post("/v1/conversations", json={"metadata": {f"k{i}": "v" for i in range(17)}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "metadata"
    r = http.post(f"/v1/conversations/{conv.id}", json={"metadata": {"k": "v" * 513}})
    assert r.status_code == 400


def test_unknown_ids_are_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve("conv_nope")
    with pytest.raises(openai.NotFoundError):
        client.conversations.update("conv_nope", metadata={})
    with pytest.raises(openai.NotFoundError):
        client.conversations.delete("conv_nope")
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.create("conv_nope", items=[{"role": "user", "content": "x"}])
    conv = client.conversations.create()
    with pytest.raises(openai.NotFoundError) as err:
        client.conversations.items.retrieve("msg_nope", conversation_id=conv.id)
    assert err.value.body["param"] == "item_id"  # type: ignore[index]


def test_another_principals_conversation_is_a_404(pair: tuple[Tenant, Tenant]) -> None:
    alice, bob = pair
    conv = alice.sdk.conversations.create(
        metadata={"owner": "alice"}, items=[{"role": "user", "content": "secret"}])
    item_id = alice.sdk.conversations.items.list(conv.id).data[0].id
    calls = {
        "retrieve": lambda: bob.sdk.conversations.retrieve(conv.id),
        "update": lambda: bob.sdk.conversations.update(conv.id, metadata={"owner": "bob"}),
        "delete": lambda: bob.sdk.conversations.delete(conv.id),
        "items.create": lambda: bob.sdk.conversations.items.create(
            conv.id, items=[{"role": "user", "content": "injected"}]),
        "items.list": lambda: bob.sdk.conversations.items.list(conv.id),
        "items.retrieve": lambda: bob.sdk.conversations.items.retrieve(
            item_id, conversation_id=conv.id),
        "items.delete": lambda: bob.sdk.conversations.items.delete(
            item_id, conversation_id=conv.id),
    }
    for name, call in calls.items():
        with pytest.raises(openai.NotFoundError):
            call()
            pytest.fail(f"bob could {name} alice's conversation")
    # Nothing changed for alice.
    assert alice.sdk.conversations.retrieve(conv.id).metadata == {"owner": "alice"}
    items = alice.sdk.conversations.items.list(conv.id).data
    assert [i.content[0].text for i in items] == ["secret"]


def test_a_long_conversation_pages_in_order(client: openai.OpenAI) -> None:
    conv = client.conversations.create()
    for batch in range(10):
        client.conversations.items.create(
            conv.id, items=[{"role": "user", "content": f"{batch * 20 + i:03d}"}
                            for i in range(20)])
    seen = [i.content[0].text for i in client.conversations.items.list(
        conv.id, order="asc", limit=100)]
    assert seen == [f"{n:03d}" for n in range(200)]
    newest = client.conversations.items.list(conv.id, limit=1)
    assert newest.data[0].content[0].text == "199" and newest.has_more
    client.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.list(conv.id)


def test_openai_agents_session_runs_unchanged(api: LiveApi) -> None:
    """The openai-agents SDK's OpenAIConversationsSession (agent memory on this API)."""
    from agents.memory import OpenAIConversationsSession

    async def scenario() -> None:
        client = openai.AsyncOpenAI(base_url=api.base_url, api_key=api.key, max_retries=0)
        session = OpenAIConversationsSession(openai_client=client)
        sent = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n}"}
                for n in range(45)]
        await session.add_items(sent)  # type: ignore[arg-type]
        everything = await session.get_items()
        assert len(everything) == 45
        assert [i["content"][0]["text"] for i in everything] == [f"turn {n}"  # type: ignore[index]
                                                                  for n in range(45)]
        last = await session.get_items(limit=3)
        assert [i["content"][0]["text"] for i in last] == ["turn 42", "turn 43", "turn 44"]  # type: ignore[index]
        popped = await session.pop_item()
        assert popped is not None and popped["content"][0]["text"] == "turn 44"  # type: ignore[index,typeddict-item]
        assert len(await session.get_items()) == 44
        conversation_id = session.session_id
        await session.clear_session()
        with pytest.raises(openai.NotFoundError):
            await client.conversations.retrieve(conversation_id)
        await client.close()

    asyncio.run(scenario())


# llama-stack-client (Python 3.12, .venv-lsc; see test_llama_stack_client.py) on the same
# routes: it sends arrays comma-separated (include=a,b).
LSC_SCRIPT = r"""
import json, sys
from llama_stack_client import LlamaStackClient
c = LlamaStackClient(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
conv = c.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}],
                              metadata={"k": "v"})
c.conversations.items.create(conv.id, items=[
    {"type": "message", "role": "assistant", "content": "hello"}])
listed = c.conversations.items.list(conv.id, order="asc",
    include=["file_search_call.results", "message.input_image.image_url"])
ids = [i.id for i in listed.data]
got = c.conversations.items.get(ids[0], conversation_id=conv.id)
c.conversations.items.delete(ids[0], conversation_id=conv.id)
updated = c.conversations.update(conv.id, metadata={"k": "w"})
left = [i.id for i in c.conversations.items.list(conv.id).data]
deleted = c.conversations.delete(conv.id)
print(json.dumps({"id": conv.id, "ids": ids, "got": got.id, "left": left,
                  "metadata": updated.metadata, "deleted": deleted.deleted}))
"""


def test_llama_stack_client_conversations(api: LiveApi) -> None:
    out = run_lsc("-c", LSC_SCRIPT, api.base_url.removesuffix("/v1"), api.key)
    assert out["id"].startswith("conv_") and len(out["ids"]) == 2
    assert out["got"] == out["ids"][0] and out["left"] == [out["ids"][1]]
    assert out["metadata"] == {"k": "w"} and out["deleted"] is True
