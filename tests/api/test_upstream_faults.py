"""Faults of a remote upstream, as the openai SDK sees them through a local fnstack server.

fnstack runs as users run it (``fnstack run <config.yaml>``) with ``remote::openai``
pointed at the scriptable fake of tests/support/fake_openai.py: short timeout, no
retries, so each scripted fault reaches the client as fnstack maps it. A second
provider points at a port nobody listens on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.fake_openai import FakeOpenAI, Reply, chat_chunk_json, chat_json, free_port
from tests.support.servers import FnstackServer

MODEL = "fake-model"
HI = [{"role": "user", "content": "Hi"}]
TIMEOUT_S = 0.5

CONFIG = """\
version: 1
distribution: faults
providers:
  inference:
    - provider_id: fake
      provider_type: remote::openai
      config:
        base_url: {fake}
        timeout: {timeout}
        connect_timeout: 1.0
        max_retries: 0
    - provider_id: dead
      provider_type: remote::openai
      config:
        base_url: http://127.0.0.1:{dead_port}/v1
        connect_timeout: 1.0
        max_retries: 0
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {tmp}/kv.db}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    inference: {{backend: kv, namespace: chat_completions}}
inference_store:
  write_mode: queue
cache_dir: {tmp}/cache
"""


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("faults")
    config = tmp / "faults.yaml"
    config.write_text(CONFIG.format(fake=fake.base_url, timeout=TIMEOUT_S,
                                    dead_port=free_port(), tmp=tmp))
    with FnstackServer(["run", str(config)], log_path=Path(tmp / "server.log")) as fn:
        yield fn.base_url


@pytest.fixture
def client(server: str, fake: FakeOpenAI) -> openai.OpenAI:
    fake.reset()
    return openai.OpenAI(base_url=server, api_key="none", max_retries=0, timeout=30)


def status_error(call: Any) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return dict(body["error"])


def chat_path_requests(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/chat/completions"]


def test_relays_a_completion(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(json=chat_json("Bonjour!")))
    answer = client.chat.completions.create(model=MODEL, messages=HI, temperature=0.2)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Bonjour!"
    assert answer.model == MODEL and answer.id.startswith("chatcmpl-")
    assert answer.id != "chatcmpl-fake"  # fnstack's own id, under which it is stored
    sent = chat_path_requests(fake)[-1].body
    assert sent["model"] == MODEL and sent["temperature"] == 0.2


def test_upstream_timeout_is_504(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(json=chat_json(), delay=TIMEOUT_S * 4))
    exc = status_error(lambda: client.chat.completions.create(model=MODEL, messages=HI))  # type: ignore[arg-type]
    assert exc.status_code == 504
    err = error_of(exc)
    assert "timed out" in err["message"] and err["type"] == "server_error"


@pytest.mark.parametrize("status", [500, 503])
def test_upstream_5xx_is_502(client: openai.OpenAI, fake: FakeOpenAI, status: int) -> None:
    fake.script("/v1/chat/completions", Reply(status=status))
    exc = status_error(lambda: client.chat.completions.create(model=MODEL, messages=HI))  # type: ignore[arg-type]
    assert exc.status_code == 502
    assert f"upstream answered {status}" in error_of(exc)["message"]
    assert len(chat_path_requests(fake)) == 1  # max_retries: 0


def test_upstream_429_keeps_retry_after(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(status=429, headers={"retry-after": "7"}))
    exc = status_error(lambda: client.chat.completions.create(model=MODEL, messages=HI))  # type: ignore[arg-type]
    assert isinstance(exc, openai.RateLimitError)
    assert exc.response.headers["retry-after"] == "7"
    assert "rate limit" in error_of(exc)["message"]


def test_upstream_429_on_a_stream_is_a_status_not_an_event(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.script("/v1/chat/completions", Reply(status=429, headers={"retry-after": "3"}))
    exc = status_error(lambda: list(client.chat.completions.create(
        model=MODEL, messages=HI, stream=True  # type: ignore[arg-type]
    )))
    assert exc.status_code == 429 and exc.response.headers["retry-after"] == "3"


def test_upstream_400_keeps_its_fields(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(status=400, json={"error": {
        "message": "temperature too hot", "type": "invalid_request_error",
        "param": "temperature", "code": "bad_temperature"}}))
    exc = status_error(lambda: client.chat.completions.create(model=MODEL, messages=HI))  # type: ignore[arg-type]
    assert exc.status_code == 400
    err = error_of(exc)
    assert (err["param"], err["code"]) == ("temperature", "bad_temperature")
    assert "temperature too hot" in err["message"]


def test_upstream_down_is_502_naming_it(client: openai.OpenAI) -> None:
    exc = status_error(lambda: client.chat.completions.create(
        model="dead/any-model", messages=HI  # type: ignore[arg-type]
    ))
    assert exc.status_code == 502
    assert "cannot connect" in error_of(exc)["message"]


def test_garbage_answer_is_502(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(body=b"<html>gateway</html>",
                                              content_type="application/json"))
    exc = status_error(lambda: client.chat.completions.create(model=MODEL, messages=HI))  # type: ignore[arg-type]
    assert exc.status_code == 502


def test_stream_relays_chunks_and_usage(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    events = [chat_chunk_json(), chat_chunk_json("Hel"), chat_chunk_json("lo"),
              chat_chunk_json(finish_reason="stop"),
              {**chat_chunk_json(), "choices": [], "usage": usage}]
    fake.script("/v1/chat/completions", Reply(events=events), Reply(events=events))
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=HI, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    ))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 7
    assert chat_path_requests(fake)[-1].body["stream_options"] == {"include_usage": True}
    stored = client.chat.completions.retrieve(chunks[0].id)
    assert stored.choices[0].message.content == "Hello"
    assert stored.usage is not None and stored.usage.total_tokens == 7
    # Not asked for: the upstream's usage chunk stays out of the stream.
    plain = list(client.chat.completions.create(
        model=MODEL, messages=HI, stream=True  # type: ignore[arg-type]
    ))
    assert plain and all(c.choices and c.usage is None for c in plain)


def test_mid_stream_break_ends_with_an_error_event(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    run = uuid.uuid4().hex
    fake.script("/v1/chat/completions", Reply(
        events=[chat_chunk_json(), chat_chunk_json("Hel"), chat_chunk_json("lo")],
        break_after=2,
    ))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(
            model=MODEL, messages=HI, stream=True, metadata={"run": run}  # type: ignore[arg-type]
        ):
            received.append(chunk)
    assert not isinstance(info.value, openai.APIStatusError)  # in-stream, after a 200
    assert len(received) == 2
    assert "upstream" in info.value.message
    # An unfinished answer is not stored as if it were whole.
    assert client.chat.completions.list(metadata={"run": run}).data == []


def test_mid_stream_error_event_from_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(events=[
        chat_chunk_json(), chat_chunk_json("Hel"),
        {"error": {"message": "model crashed", "type": "server_error"}},
    ]))
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model=MODEL, messages=HI, stream=True))  # type: ignore[arg-type]
    assert "model crashed" in info.value.message


def test_stream_ending_without_finish_is_an_error(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(
        events=[chat_chunk_json(), chat_chunk_json("Hel")], done=False
    ))
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model=MODEL, messages=HI, stream=True))  # type: ignore[arg-type]
    assert "before it was complete" in info.value.message


def test_mid_stream_timeout_ends_the_stream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script("/v1/chat/completions", Reply(
        events=[chat_chunk_json(), chat_chunk_json("Hel"), chat_chunk_json("lo"),
                chat_chunk_json(finish_reason="stop")],
        event_delay=TIMEOUT_S * 4,
    ))
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model=MODEL, messages=HI, stream=True))  # type: ignore[arg-type]
    assert "timed out" in info.value.message


def test_client_hanging_up_closes_the_upstream_request(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.script("/v1/chat/completions", Reply(
        events=[chat_chunk_json(), *(chat_chunk_json(f"w{i} ") for i in range(40)),
                chat_chunk_json(finish_reason="stop")],
        event_delay=0.05,
    ))
    stream = client.chat.completions.create(model=MODEL, messages=HI, stream=True)  # type: ignore[arg-type]
    for n, _ in enumerate(stream):
        if n == 1:
            break
    stream.close()
    seen = chat_path_requests(fake)[-1]
    assert seen.disconnected.wait(5), "fnstack kept reading the upstream after the client left"


def test_server_keeps_serving_after_the_faults(client: openai.OpenAI, server: str) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == "Hello!"
    assert httpx.get(f"{server}/health").status_code == 200
