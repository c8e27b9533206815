"""The in-process interfaces the responses service uses: `ConversationsService.get /
all_items / append_items` and `PromptsService.render`, on SQLite.

(The HTTP APIs are tested in tests/api/test_conversations.py and test_prompts.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fnstack.api.conversations import CreateConversationRequest
from fnstack.api.prompts import CreatePromptRequest, UpdatePromptRequest
from fnstack.config import parse_config
from fnstack.errors import InvalidRequestError, NotFoundError
from fnstack.services.conversations import ConversationsService
from fnstack.services.prompts import PromptsService
from fnstack.stack import Stack
from fnstack.storage import Owner

ALICE = Owner("alice")
BOB = Owner("bob")


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    config = parse_config({
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp_path / "kv.db")}},
            "stores": {"registry": {"backend": "kv", "namespace": "registry"},
                       "conversations": {"backend": "kv", "namespace": "conversations"},
                       "prompts": {"backend": "kv", "namespace": "prompts"}},
        },
        "cache_dir": str(tmp_path / "cache"),
    }, env={})
    s = Stack(config, apis=["conversations", "prompts"])
    await s.start()
    yield s
    await s.shutdown()


async def test_append_and_read_back_every_item_in_order(stack: Stack) -> None:
    svc: ConversationsService = await stack.service("conversations")
    conv = await svc.create(CreateConversationRequest(), ALICE)
    assert (await svc.get(conv.id, ALICE)).id == conv.id
    await svc.append_items(conv.id, [
        {"type": "message", "role": "user", "content": "hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "message", "role": "assistant", "id": "msg_out1", "status": "completed",
         "content": [{"type": "output_text", "text": "done", "annotations": []}]},
    ], ALICE)
    items = await svc.all_items(conv.id, ALICE)
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output",
                                          "message"]
    assert items[0]["id"].startswith("msg_") and items[1]["id"].startswith("fc_")
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[3]["id"] == "msg_out1"
    # A retried append (the same ids) adds nothing; new items go after.
    await svc.append_items(conv.id, [items[3], {"role": "user", "content": "again"}], ALICE)
    again = await svc.all_items(conv.id, ALICE)
    assert len(again) == 5 and again[:4] == items
    assert again[4]["content"][0]["text"] == "again"


async def test_thousands_of_items_cross_listing_pages(stack: Stack) -> None:
    svc: ConversationsService = await stack.service("conversations")
    conv = await svc.create(CreateConversationRequest(), ALICE)
    for start in range(0, 1500, 300):
        await svc.append_items(conv.id, [{"role": "user", "content": str(n)}
                                         for n in range(start, start + 300)], ALICE)
    items = await svc.all_items(conv.id, ALICE)
    assert [i["content"][0]["text"] for i in items] == [str(n) for n in range(1500)]
    page = await svc.list_items(conv.id, ALICE, limit=100, order="desc")
    assert page.data[0]["content"][0]["text"] == "1499" and page.has_more
    # Deleting the conversation makes every item unreachable and removes them.
    await svc.delete(conv.id, ALICE)
    with pytest.raises(NotFoundError):
        await svc.all_items(conv.id, ALICE)
    left = await svc.kv.list(f"item:{conv.id}:", limit=10)
    assert left.records == []


async def test_another_principal_and_bad_items(stack: Stack) -> None:
    svc: ConversationsService = await stack.service("conversations")
    conv = await svc.create(CreateConversationRequest(), ALICE)
    for call in (svc.get(conv.id, BOB), svc.all_items(conv.id, BOB),
                 svc.append_items(conv.id, [{"role": "user", "content": "x"}], BOB),
                 svc.get("conv_missing", ALICE)):
        with pytest.raises(NotFoundError) as err:
            await call
        assert err.value.param == "conversation"
    with pytest.raises(InvalidRequestError) as bad:
        await svc.append_items(conv.id, [{"role": "user", "content": "ok"},
                                         {"type": "function_call", "name": "f"}], ALICE)
    assert bad.value.param == "items[1].call_id"
    assert await svc.all_items(conv.id, ALICE) == []


async def test_render(stack: Stack) -> None:
    svc: PromptsService = await stack.service("prompts")
    p = await svc.create(CreatePromptRequest(
        prompt="Hello {{ name }}, you live in {{city}}. {{ name }}!",
        variables=["name", "city", "spare"]), ALICE)
    out = await svc.render(p.prompt_id, None, {
        "name": "Ann", "city": {"type": "input_text", "text": "{{ name }}ville"}}, ALICE)
    assert out.prompt_id == p.prompt_id and out.version == 1
    # Values are never expanded again.
    assert out.text == "Hello Ann, you live in {{ name }}ville. Ann!"

    await svc.update(p.prompt_id, UpdatePromptRequest(
        prompt="Bye {{ name }}", version=1, set_as_default=False), ALICE)
    assert (await svc.render(p.prompt_id, None, {"name": "A", "city": "B"}, ALICE)).version == 1
    v2 = await svc.render(p.prompt_id, 2, {"name": "Bo"}, ALICE)
    assert (v2.version, v2.text) == (2, "Bye Bo")

    for variables in ({"name": "Ann"},  # city missing
                      None,
                      {"name": "Ann", "city": 3},
                      {"name": "Ann", "city": {"type": "input_image", "image_url": "x"}},
                      {"name": "Ann", "city": "x", "typo": "y"}):
        with pytest.raises(InvalidRequestError) as err:
            await svc.render(p.prompt_id, 1, variables, ALICE)
        assert err.value.param == "prompt.variables", variables
    with pytest.raises(NotFoundError) as nf:
        await svc.render(p.prompt_id, 9, {}, ALICE)
    assert nf.value.param == "prompt.version"
    for pid, user in (("pmpt_" + "0" * 48, ALICE), (p.prompt_id, BOB)):
        with pytest.raises(NotFoundError) as nf:
            await svc.render(pid, None, {"name": "x", "city": "y"}, user)
        assert nf.value.param == "prompt.id"


async def test_concurrent_appends_keep_each_batch_whole(stack: Stack) -> None:
    svc: ConversationsService = await stack.service("conversations")
    conv = await svc.create(CreateConversationRequest(), ALICE)
    await asyncio.gather(*(svc.append_items(conv.id, [
        {"role": "user", "content": f"{b}:{i}"} for i in range(10)], ALICE) for b in range(10)))
    texts = [i["content"][0]["text"] for i in await svc.all_items(conv.id, ALICE)]
    assert len(texts) == 100 and len(set(texts)) == 100
    for start in range(0, 100, 10):
        batch = {t.split(":")[0] for t in texts[start:start + 10]}
        assert len(batch) == 1, texts[start:start + 10]
        assert [t.split(":")[1] for t in texts[start:start + 10]] == [str(i) for i in range(10)]
