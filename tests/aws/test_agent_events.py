"""`fnstack invoke` with the sample events of the agent APIs (conversations, prompts,
responses), on emulated AWS: each function starts from the built bundle and answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.aws.conftest import EVENTS, ROOT


def _invoke(function: str, event: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "fnstack.cli", "invoke", function,
         "--event", str(EVENTS / event), "--emulate-aws"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out: dict[str, object] = json.loads(proc.stdout)
    return out


CASES = [
    ("ConversationsFunction", "api-conversations-create.json", 200,
     {"object": "conversation", "metadata": {"topic": "demo"}}),
    ("ConversationsFunction", "api-conversations-get-missing.json", 404, {"error": {
        "message": "conversation 'conv_unknown' not found", "type": "invalid_request_error",
        "param": "conversation_id", "code": "not_found"}}),
    ("PromptsFunction", "api-prompts-create.json", 200,
     {"version": 1, "is_default": True, "variables": ["text", "lang"]}),
    ("PromptsFunction", "api-prompts-list.json", 200, {"data": []}),
    # The Responses API runs in InferenceFunction (streams through the Web Adapter).
    ("InferenceFunction", "api-responses-get-missing.json", 404, {"error": {
        "message": "response 'resp_unknown' not found", "type": "invalid_request_error",
        "param": "response_id", "code": "not_found"}}),
    # The zip functions ship no chat model: with no LLM provider configured
    # (FNSTACK_OPENAI_BASE_URL, Bedrock...) the sample's model is not found.
    ("InferenceFunction", "api-responses-create.json", 404, {"error": {
        "message": "model 'SmolLM2-135M-Instruct' not found; list the available models with "
                   "GET /v1/models (`client.models.list()`), or register one with POST "
                   "/v1/models", "type": "invalid_request_error", "param": "model",
        "code": "model_not_found"}}),
]


@pytest.mark.parametrize(("function", "event", "status", "expect"), CASES)
def test_agent_events(built_bundle: Path, function: str, event: str, status: int,
                      expect: dict[str, object]) -> None:
    out = _invoke(function, event)
    assert out["statusCode"] == status, out
    body = json.loads(str(out["body"]))
    assert {k: body[k] for k in expect} == expect


def test_the_worker_takes_a_background_response_job(built_bundle: Path) -> None:
    # The message InferenceFunction queues for a `background: true` response: the worker
    # serves the responses service; a response that is not (or no longer) there is done.
    out = _invoke("BatchWorkerFunction", "sqs-response-run.json")
    assert out == {"batchItemFailures": []}
