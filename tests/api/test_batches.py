"""/v1/batches through the official openai SDK, in every execution mode.

Locally the job runs in the server's background queue; through the emulated gateway it
goes through the SQS queue to the BatchWorkerFunction, as on AWS.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of

TERMINAL = ("completed", "failed", "expired", "cancelled")


def _jsonl(lines: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(line) for line in lines) + "\n").encode()


def _chat_lines(model: str, n: int, max_tokens: int = 2, tag: str = "") -> list[dict[str, Any]]:
    return [{"custom_id": f"{tag}req-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                      "messages": [{"role": "user", "content": f"Say the number {i}."}]}}
            for i in range(n)]


def _upload(client: openai.OpenAI, data: bytes) -> str:
    return client.files.create(file=(f"in-{uuid.uuid4().hex[:6]}.jsonl", data),
                               purpose="batch").id


def _wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = TERMINAL,
          timeout: float = 600) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
        time.sleep(0.5)


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.timeout(900)
def test_two_hundred_chat_lines_each_answered_once(api: LiveApi,
                                                   client: openai.OpenAI) -> None:
    model = models_of(api)["openai"]
    lines = _chat_lines(model, 200)
    # One line the model cannot take: its failure goes to the error file, not the batch's.
    lines[7]["body"]["max_tokens"] = -5
    batch = client.batches.create(input_file_id=_upload(client, _jsonl(lines)),
                                  endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"run": "two-hundred"})
    assert batch.status == "validating" and batch.metadata == {"run": "two-hundred"}
    done = _wait(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (200, 199, 1)
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = _lines(client, done.output_file_id)
    err = _lines(client, done.error_file_id)
    ids = [o["custom_id"] for o in out] + [e["custom_id"] for e in err]
    assert sorted(ids) == sorted(line["custom_id"] for line in lines)
    assert len(ids) == len(set(ids)) == 200
    assert err[0]["custom_id"] == "req-7" and err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["type"] == "invalid_request_error"
    first = out[0]
    assert first["response"]["status_code"] == 200 and first["id"].startswith("batch_req_")
    assert first["response"]["body"]["object"] == "chat.completion"
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"  # type: ignore[arg-type]
    listed = [b.id for b in client.batches.list(limit=100)]
    assert batch.id in listed


def test_embeddings_and_completions_lines(api: LiveApi, client: openai.OpenAI) -> None:
    embedder = models_of(api)["onnx"]
    emb = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
            "body": {"model": embedder, "input": f"sentence number {i}"}} for i in range(40)]
    batch = client.batches.create(input_file_id=_upload(client, _jsonl(emb)),
                                  endpoint="/v1/embeddings", completion_window="24h")
    done = _wait(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 40 and done.error_file_id is None
    out = _lines(client, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"e{i}" for i in range(40))
    assert out[0]["response"]["body"]["data"][0]["embedding"]
    llm = models_of(api)["openai"]
    comp = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": llm, "prompt": "Once upon", "max_tokens": 2}} for i in range(3)]
    batch = client.batches.create(input_file_id=_upload(client, _jsonl(comp)),
                                  endpoint="/v1/completions", completion_window="24h")
    done = _wait(client, batch.id)
    assert done.status == "completed", done
    assert [o["response"]["body"]["object"] for o in _lines(client, done.output_file_id)] == [
        "text_completion"] * 3


@pytest.mark.timeout(900)
def test_cancel_mid_job_keeps_what_finished(api: LiveApi, client: openai.OpenAI) -> None:
    model = models_of(api)["openai"]
    lines = _chat_lines(model, 400, max_tokens=12, tag="x")
    batch = client.batches.create(input_file_id=_upload(client, _jsonl(lines)),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 300
    while True:
        current = client.batches.retrieve(batch.id)
        if current.request_counts is not None and current.request_counts.completed > 0:
            break
        assert current.status in ("validating", "in_progress"), current
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = _wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    assert done.request_counts is not None
    assert 0 < done.request_counts.completed < 400
    out = _lines(client, done.output_file_id)
    ids = [o["custom_id"] for o in out]
    assert len(ids) == len(set(ids)) == done.request_counts.completed
    # Cancelling again is harmless; a finished batch cannot be cancelled.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_malformed_input_file_fails_with_line_numbers(api: LiveApi,
                                                      client: openai.OpenAI) -> None:
    model = models_of(api)["openai"]
    good = _chat_lines(model, 2)
    text = "\n".join([
        json.dumps(good[0]),
        "{not json",
        json.dumps(good[0]),  # the same custom_id again
        json.dumps({**good[1], "custom_id": "u", "url": "/v1/embeddings"}),
        json.dumps({**good[1], "custom_id": "b", "body": [1, 2]}),
        json.dumps({**good[1], "custom_id": "m", "body": {**good[1]["body"],
                                                          "model": "no-such-model"}}),
    ]) + "\n"
    batch = client.batches.create(input_file_id=_upload(client, text.encode()),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    done = _wait(client, batch.id, timeout=120)
    assert done.status == "failed" and done.failed_at
    assert done.errors is not None and done.errors.data is not None
    found = {(e.code, e.line) for e in done.errors.data}
    assert {("invalid_json_line", 2), ("duplicate_custom_id", 3), ("invalid_url", 4),
            ("invalid_request", 5)} <= found, found
    # The lines with a structural fault are reported first; an unknown model is found
    # once the structure is sound.
    fixed = "\n".join([json.dumps(good[0]), json.dumps(
        {**good[1], "body": {**good[1]["body"], "model": "no-such-model"}})]) + "\n"
    batch = client.batches.create(input_file_id=_upload(client, fixed.encode()),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    done = _wait(client, batch.id, timeout=120)
    assert done.status == "failed" and done.errors is not None and done.errors.data
    assert [(e.code, e.line) for e in done.errors.data] == [("model_not_found", 2)]


def test_bad_requests_are_clear_errors(api: LiveApi, client: openai.OpenAI,
                                       http: httpx.Client) -> None:
    model = models_of(api)["openai"]
    file_id = _upload(client, _jsonl(_chat_lines(model, 1)))
    with pytest.raises(openai.BadRequestError) as bad:
        client.batches.create(input_file_id=file_id, endpoint="/v1/responses",
                              completion_window="24h")
    assert bad.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/moderations",  # type: ignore[arg-type]
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                              completion_window="1h")  # type: ignore[arg-type]
    not_batch = client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=not_batch.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    assert http.post("/v1/batches/batch_nope/cancel").status_code == 404
    assert http.post("/v1/batches", json={"endpoint": "/v1/embeddings"}).status_code == 400


def test_another_principals_batch_is_a_404(api: LiveApi, client: openai.OpenAI,
                                          http: httpx.Client) -> None:
    embedder = models_of(api)["onnx"]
    lines = [{"custom_id": "a", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": embedder, "input": "hello"}}]
    batch = client.batches.create(input_file_id=_upload(client, _jsonl(lines)),
                                  endpoint="/v1/embeddings", completion_window="24h")
    created = http.post("/v1/keys", json={"name": f"other-{uuid.uuid4().hex[:6]}",
                                          "principal": f"other-{uuid.uuid4().hex[:6]}"})
    assert created.status_code == 200, created.text
    other = openai.OpenAI(base_url=api.base_url, api_key=created.json()["value"],
                          max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in other.batches.list()]
    _wait(client, batch.id, timeout=120)


@pytest.mark.timeout(300)
@pytest.mark.modes("gateway")  # inbox/ is an S3 trigger: only emulated AWS has the bucket
def test_a_file_dropped_in_the_inbox_runs_with_output_beside_it(
    api: LiveApi, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import re

    import boto3

    logs = sorted(tmp_path_factory.getbasetemp().glob("api-gateway*/gateway.log"))
    assert logs
    found = re.search(r"emulated AWS at (\S+)\)", logs[-1].read_text())
    assert found, "the gateway did not say where the emulated AWS is"
    s3 = boto3.client("s3", endpoint_url=found.group(1), region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    (bucket,) = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    lines = _chat_lines(models_of(api)["openai"], 25, tag="in-")
    name = f"inbox/drop {uuid.uuid4().hex[:6]}"
    s3.put_object(Bucket=bucket, Key=f"{name}.jsonl", Body=_jsonl(lines))
    deadline = time.monotonic() + 240
    while True:
        try:
            body = s3.get_object(Bucket=bucket, Key=f"{name}.output.jsonl")["Body"].read()
            break
        except s3.exceptions.NoSuchKey:
            assert time.monotonic() < deadline, "no output beside the inbox file"
            time.sleep(1)
    out = [json.loads(line) for line in body.decode().splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(line["custom_id"] for line in lines)
    assert all(o["response"]["status_code"] == 200 for o in out)


def test_list_pages_with_a_cursor(api: LiveApi, client: openai.OpenAI) -> None:
    embedder = models_of(api)["onnx"]
    lines = [{"custom_id": "p", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": embedder, "input": "page"}}]
    file_id = _upload(client, _jsonl(lines))
    made = [client.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                                  completion_window="24h").id for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    # The SDK's auto-pagination walks every page without repeating a batch.
    walked = [b.id for b in client.batches.list(limit=2)]
    assert len(walked) == len(set(walked)) and set(made) <= set(walked)
    for batch_id in made:
        _wait(client, batch_id, timeout=120)


@pytest.mark.timeout(600)
@pytest.mark.modes("gateway")  # SQS redelivery: only emulated AWS has the queue
def test_redelivered_job_messages_never_duplicate_a_line(
    api: LiveApi, client: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import re

    import boto3

    logs = sorted(tmp_path_factory.getbasetemp().glob("api-gateway*/gateway.log"))
    found = re.search(r"emulated AWS at (\S+)\)", logs[-1].read_text())
    assert found
    sqs = boto3.client("sqs", endpoint_url=found.group(1), region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    (url,) = sqs.list_queues(QueueNamePrefix="fnstack-BatchQueue")["QueueUrls"]
    model = models_of(api)["openai"]
    lines = _chat_lines(model, 120, max_tokens=4, tag="d")
    batch = client.batches.create(input_file_id=_upload(client, _jsonl(lines)),
                                  endpoint="/v1/chat/completions", completion_window="24h")
    again = json.dumps({"job": "batches.run", "args": {"batch_id": batch.id}})
    # The same message again while the job runs (SQS delivers at least once) ...
    _wait(client, batch.id, until=("in_progress", *TERMINAL), timeout=120)
    for _ in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=again)
    done = _wait(client, batch.id)
    # ... and after it finished.
    sqs.send_message(QueueUrl=url, MessageBody=again)
    time.sleep(3)
    after = client.batches.retrieve(batch.id)
    assert done.status == after.status == "completed"
    assert after.request_counts == done.request_counts
    assert done.request_counts is not None and done.request_counts.completed == 120
    ids = [o["custom_id"] for o in _lines(client, done.output_file_id)]
    assert sorted(ids) == sorted(line["custom_id"] for line in lines)
    assert after.output_file_id == done.output_file_id
