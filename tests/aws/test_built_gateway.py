"""The real template's built bundle behind the emulated gateway, as users start it.

`fnstack gateway --emulate-aws` on .aws-sam/build: every function in its own python3.12
process from the built layer, the inference routes through their Web Adapter script
(functions/inference.sh running uvicorn) with the stream relayed as it comes. The
upstream LLM is the scriptable OpenAI-wire server (remote::openai).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fnstack_dev.cli import EMULATOR_ADMIN_KEY
from tests.aws.conftest import EVENTS
from tests.support.fake_openai import MODEL, FakeOpenAI, Reply, chat_chunk_json
from tests.support.gateway import emulated_gateway

AUTH = {"Authorization": f"Bearer {EMULATOR_ADMIN_KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(built_bundle: Path, upstream: FakeOpenAI,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("built-gateway")
    args = ["--env", f"FNSTACK_OPENAI_BASE_URL={upstream.base_url}"]
    with emulated_gateway(tmp, args=args, built=True) as base_url:
        yield base_url.removesuffix("/v1"), tmp / "gateway.log"


def test_models_from_the_layer_and_the_upstream(gateway: tuple[str, Path]) -> None:
    base, _ = gateway
    r = httpx.get(f"{base}/prod/v1/models", headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    ids = {m["id"] for m in r.json()["data"]}
    assert "all-MiniLM-L6-v2" in ids  # the ONNX graph shipped in the layer at /opt
    assert any(MODEL in i for i in ids)
    r = httpx.get(f"{base}/prod/v1/models", timeout=60)
    assert r.status_code == 401  # API keys by default (AuthMode)


def test_chat_streams_through_the_web_adapter(gateway: tuple[str, Path],
                                              upstream: FakeOpenAI) -> None:
    base, log = gateway
    model = next(m["id"] for m in httpx.get(f"{base}/prod/v1/models", headers=AUTH,
                                            timeout=60).json()["data"] if MODEL in m["id"])
    words = ["One", " two", " three", " four"]
    events = [chat_chunk_json(), *(chat_chunk_json(w) for w in words),
              chat_chunk_json(finish_reason="stop")]
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "Count"}]}
    # Once to start the instance (its cold start is not what this measures), then timed.
    upstream.script("/v1/chat/completions", Reply(events=events),
                    Reply(events=events, event_delay=0.5))
    httpx.post(f"{base}/prod/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    start = time.monotonic()
    first_at = None
    text = ""
    with httpx.stream("POST", f"{base}/prod/v1/chat/completions", json=body, headers=AUTH,
                      timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if first_at is None:
                    first_at = time.monotonic() - start
                delta = json.loads(line[6:])["choices"][0]["delta"]
                text += delta.get("content") or ""
    total = time.monotonic() - start
    assert text == "One two three four"
    # Six events 0.5 s apart: the first arrives long before the last.
    assert first_at is not None and total >= 2.5 and first_at < total / 2, (first_at, total)
    assert "Function: InferenceFunction" in log.read_text()


def test_sample_events_work_with_what_ships(gateway: tuple[str, Path]) -> None:
    base, _ = gateway
    from fnstack_dev.template import load_template, match_route

    routes = load_template(Path(__file__).parents[2] / "template.yaml").routes()
    statuses = {}
    for path in sorted(EVENTS.glob("api-*.json")):
        event = json.loads(path.read_text())
        route, _ = match_route(routes, event["httpMethod"], event["path"])
        assert route is not None, path.name
        r = httpx.post(f"{base}/2015-03-31/functions/{route.function}/invocations",
                       content=path.read_bytes(), timeout=120)
        assert r.status_code == 200 and "x-amz-function-error" not in r.headers, r.text
        statuses[path.name] = r.json()["statusCode"]
    assert all(status < 500 for status in statuses.values()), statuses
    for name in ("api-health.json", "api-version.json", "api-models-list.json",
                 "api-models-get.json", "api-embeddings.json", "api-providers.json",
                 "api-inspect-routes.json"):
        assert statuses[name] == 200, (name, statuses)
    for name in ("api-not-found.json", "api-provider-missing.json"):
        assert statuses[name] == 404, (name, statuses)


def test_s3_object_created_reaches_the_worker(gateway: tuple[str, Path]) -> None:
    # The bucket's EventBridge notifications, delivered to the worker's Inbox rule.
    import re

    from fnstack_dev.emulate import client

    _, log = gateway
    endpoint = re.search(r"emulated AWS at (\S+)\)", log.read_text())
    assert endpoint, log.read_text()[-2000:]
    s3 = client("s3", endpoint.group(1))
    (bucket,) = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.put_object(Bucket=bucket, Key="outbox/ignored.jsonl", Body=b"{}\n")
    s3.put_object(Bucket=bucket, Key="inbox/dropped batch.jsonl", Body=b"{}\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "Function: BatchWorkerFunction" not in log.read_text():
        time.sleep(0.3)
    text = log.read_text()
    assert "Function: BatchWorkerFunction" in text
    assert "dropped batch.jsonl" in text and "ignored.jsonl" not in text


def test_the_bundled_model_answers_through_the_image_function(gateway: tuple[str, Path]) -> None:
    # Defect 3: the image function has a route; here its stand-in (no Docker) serves it.
    base, log = gateway
    body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 6, "stream": True,
            "messages": [{"role": "user", "content": "Say hello"}]}
    chunks = 0
    with httpx.stream("POST", f"{base}/prod/image/v1/chat/completions", json=body,
                      headers=AUTH, timeout=240) as r:
        assert r.status_code == 200, r.read()[:500]
        for line in r.iter_lines():
            if line.startswith("data: {"):
                assert json.loads(line[6:])["model"] == "SmolLM2-135M-Instruct"
                chunks += 1
    assert chunks >= 2
    assert "Function: InferenceImageFunction" in log.read_text()
