"""Per-provider metrics (fnstack.metrics): real requests through the app and the inference
service to a remote::openai provider on the scripted upstream; the EMF documents are read
back from stdout as CloudWatch Logs would read them. And the Lambda context in the logs."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fnstack.app import create_app
from fnstack.config import parse_config
from fnstack.errors import ConfigError
from fnstack.lambda_runtime import lambda_handler
from fnstack.logs import JsonFormatter
from fnstack.metrics import EmfMetrics, MemoryMetrics, NoMetrics, metrics_from_env
from tests.support.fake_openai import MODEL, FakeOpenAI, Reply, chat_chunk_json

SERVICE = "fnstack-metrics-test"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as f:
        yield f


@pytest.fixture
async def http(tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[httpx.AsyncClient]:
    fake.reset()
    # What the template sets on every function (and Lambda itself sets the name).
    monkeypatch.setenv("FNSTACK_METRICS", "emf")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", SERVICE)
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    config = parse_config({
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp_path / "kv.db")}},
            "stores": {"registry": {"backend": "kv", "namespace": "registry"},
                       "inference": {"backend": "kv", "namespace": "chat"}},
        },
        "providers": {"inference": [{
            "provider_id": "up", "provider_type": "remote::openai",
            "config": {"base_url": fake.base_url, "max_retries": 0,
                       "model_type_overrides": {"fake-embed": "embedding"}},
        }]},
    }, env={})
    app: FastAPI = create_app(config, lifespan=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client
    await app.state.stack.shutdown()


def emf_documents(out: str) -> list[dict[str, Any]]:
    docs = []
    for line in out.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "_aws" in doc:
            docs.append(doc)
    return docs


def metric_names(doc: dict[str, Any]) -> dict[str, str]:
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    return {m["Name"]: m["Unit"] for m in directive["Metrics"]}


def v(doc: dict[str, Any], name: str) -> float:
    """One metric's value (Powertools writes each as a list of the values added)."""
    (value,) = doc[name]
    return float(value)


def check_directive(doc: dict[str, Any]) -> None:
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "fnstack"
    assert [sorted(d) for d in directive["Dimensions"]] == [["provider", "service"]]
    assert doc["service"] == SERVICE and doc["provider"] == "up"
    assert isinstance(doc["_aws"]["Timestamp"], int)


async def test_a_chat_completion_emits_one_document_with_tokens_and_latency(
    http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    r = await http.post("/v1/chat/completions", headers={"x-request-id": "req-metrics-1"},
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    (doc,) = emf_documents(capsys.readouterr().out)
    check_directive(doc)
    assert metric_names(doc) == {"Calls": "Count", "Errors": "Count", "Latency": "Milliseconds",
                                 "InputTokens": "Count", "OutputTokens": "Count"}
    # The fake upstream's usage: 5 prompt tokens, 2 completion tokens.
    assert [v(doc, n) for n in ("Calls", "Errors", "InputTokens", "OutputTokens")] == [1, 0, 5, 2]
    assert v(doc, "Latency") > 0
    assert doc["operation"] == "chat" and doc["model"] == MODEL and doc["outcome"] == "ok"
    assert doc["request_id"] == "req-metrics-1" and doc["streamed"] is False


async def test_a_stream_is_recorded_when_it_ends_with_its_first_chunk_time(
    http: httpx.AsyncClient, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    usage = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
             "model": MODEL, "choices": [],
             "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}
    fake.script("/v1/chat/completions", Reply(events=[
        chat_chunk_json(), chat_chunk_json("Hi"), chat_chunk_json(" you"),
        chat_chunk_json(finish_reason="stop"), usage], event_delay=0.05))
    capsys.readouterr()
    async with http.stream("POST", "/v1/chat/completions", json={
            "model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200
        body = (await r.aread()).decode()
    assert "data: [DONE]" in body
    (doc,) = emf_documents(capsys.readouterr().out)
    check_directive(doc)
    assert set(metric_names(doc)) == {"Calls", "Errors", "Latency", "TimeToFirstChunk",
                                      "InputTokens", "OutputTokens"}
    assert [v(doc, n) for n in ("InputTokens", "OutputTokens", "Errors")] == [9, 3, 0]
    assert doc["streamed"] is True
    # Four more events, 50 ms apart, came after the first.
    assert v(doc, "Latency") - v(doc, "TimeToFirstChunk") >= 150


async def test_an_upstream_failure_counts_as_an_error(
    http: httpx.AsyncClient, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.script("/v1/chat/completions",
                Reply(status=500, json={"error": {"message": "boom", "type": "server_error"}}))
    capsys.readouterr()
    r = await http.post("/v1/chat/completions",
                        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code >= 500
    (doc,) = emf_documents(capsys.readouterr().out)
    check_directive(doc)
    assert (v(doc, "Calls"), v(doc, "Errors")) == (1, 1)
    assert "InputTokens" not in metric_names(doc)
    assert doc["outcome"] == "error" and doc["error"] and doc["status"] == r.status_code


async def test_embeddings_are_counted_under_their_operation(
    http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    r = await http.post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "b"]})
    assert r.status_code == 200, r.text
    (doc,) = emf_documents(capsys.readouterr().out)
    check_directive(doc)
    assert doc["operation"] == "embeddings" and doc["model"] == "fake-embed"
    assert (v(doc, "InputTokens"), v(doc, "OutputTokens")) == (2, 0)


async def test_a_request_that_reaches_no_provider_emits_nothing(
    http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    r = await http.post("/v1/chat/completions",
                        json={"model": "no-such-model", "messages": [{"role": "user",
                                                                      "content": "hi"}]})
    assert r.status_code == 404
    assert emf_documents(capsys.readouterr().out) == []


def test_the_sink_follows_the_environment() -> None:
    assert isinstance(metrics_from_env({}), MemoryMetrics)
    assert isinstance(metrics_from_env({"AWS_LAMBDA_FUNCTION_NAME": "f"}), EmfMetrics)
    assert isinstance(metrics_from_env({"AWS_LAMBDA_FUNCTION_NAME": "f",
                                        "FNSTACK_METRICS": "off"}), NoMetrics)
    with pytest.raises(ConfigError, match="emf, memory or off"):
        metrics_from_env({"FNSTACK_METRICS": "statsd"})


def test_powertools_stays_out_of_the_cold_start() -> None:
    # A function that builds the inference service (and its EMF sink) at init has not
    # imported Powertools yet: its first provider call does.
    code = ("import sys; import fnstack.services.inference; from fnstack.metrics import "
            "metrics_from_env; metrics_from_env({'AWS_LAMBDA_FUNCTION_NAME': 'f'}); "
            "print(sorted(m for m in sys.modules if m.startswith('aws_lambda_powertools')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_log_lines_of_an_invocation_carry_the_lambda_context(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fnstack-Worker")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", SERVICE)
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("fnstack.test-metrics")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def on_sqs(records: list[dict[str, Any]], context: Any) -> dict[str, Any]:
        log.info("working", extra={"records": len(records)})
        return {"batchItemFailures": []}

    context = SimpleNamespace(aws_request_id="c6af9ac6-7b61-11e6-9a41-93e812345678",
                              invoked_function_arn="arn:aws:lambda:us-east-1:1:function:w")
    event = {"Records": [{"eventSource": "aws:sqs", "messageId": "m", "body": "{}"}]}
    try:
        lambda_handler(sqs=on_sqs)(event, context)
        lambda_handler(sqs=on_sqs)(event, context)
        log.info("between invocations")
    finally:
        log.removeHandler(handler)
    first, second, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["function_request_id"] == "c6af9ac6-7b61-11e6-9a41-93e812345678"
    assert first["function_name"] == "fnstack-Worker" and first["service"] == SERVICE
    assert first["function_arn"] == "arn:aws:lambda:us-east-1:1:function:w"
    assert first["xray_trace_id"] == "1-5759e988-bd862e3fe1be46a994272793"
    assert first["records"] == 1 and first["message"] == "working"
    assert second["cold_start"] is False
    assert "function_request_id" not in outside


async def test_under_the_web_adapter_the_context_comes_from_its_header(
    http: httpx.AsyncClient, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    header = json.dumps({
        "request_id": "0b5e3f4a-1111-2222-3333-444455556666", "deadline": 1,
        "invoked_function_arn": "arn:aws:lambda:us-east-1:1:function:inference",
        "xray_trace_id": "Root=1-67891233-abcdef012345678912345678;Parent=1;Sampled=1"})
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    app_log = logging.getLogger("fnstack.app")
    app_log.addHandler(handler)
    try:
        # Off Lambda the header is anybody's: ignored.
        capsys.readouterr()
        r = await http.post("/v1/chat/completions", json=chat,
                            headers={"x-amzn-lambda-context": header})
        assert r.status_code == 200
        (doc,) = emf_documents(capsys.readouterr().out)
        assert "function_request_id" not in doc
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fnstack-InferenceFunction")
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "3008")
        r = await http.post("/v1/chat/completions", json=chat,
                            headers={"x-amzn-lambda-context": header})
        assert r.status_code == 200
        (doc,) = emf_documents(capsys.readouterr().out)
    finally:
        app_log.removeHandler(handler)
    ignored, used = (json.loads(line) for line in stream.getvalue().splitlines()
                     if '"message": "request"' in line)
    assert "function_request_id" not in ignored
    assert used["function_request_id"] == "0b5e3f4a-1111-2222-3333-444455556666"
    assert used["function_arn"] == "arn:aws:lambda:us-east-1:1:function:inference"
    assert used["function_name"] == "fnstack-InferenceFunction"
    assert used["function_memory_size"] == 3008
    assert used["xray_trace_id"] == "1-67891233-abcdef012345678912345678"
    # The metrics carry the same ids: a metric's log line leads to its request's logs.
    assert doc["function_request_id"] == used["function_request_id"]
    assert doc["xray_trace_id"] == used["xray_trace_id"]
    assert doc["request_id"] == used["request_id"]
