"""llama-stack-client (0.7.x) as a client of fnstack, in every execution mode.

llama-stack-client 0.2.13 and later need Python 3.12; the project runs on 3.11, so the
client lives in a virtualenv of its own (``.venv-lsc``, made by ``scripts/setup.sh
--tests``) and runs `tests/support/lsc_report.py` as a subprocess against the server
under test. The script makes every call the client has on the APIs fnstack serves and
prints a JSON report; here each call must have worked and returned populated fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of
from tests.support.lsc_client import run_lsc

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "support" / "lsc_report.py"

_REPORTS: dict[str, dict[str, Any]] = {}


# Deployed (the gateway on the built bundle) the /v1 API serves no torch model: the
# bundled one has its own function and URL. There the client's LLM is llama.cpp's,
# behind remote::openai.
PROVIDER_TYPES = {"reference": "inline::reference", "openai": "remote::openai"}


def llm_provider(api: LiveApi) -> str:
    return "openai" if api.reference_url else "reference"


def _report(api: LiveApi) -> dict[str, Any]:
    if api.base_url not in _REPORTS:
        models = models_of(api)
        _REPORTS[api.base_url] = run_lsc(
            str(SCRIPT), api.base_url.removesuffix("/v1"), api.key, models[llm_provider(api)],
            models["onnx"], llm_provider(api), timeout=600)
    return _REPORTS[api.base_url]


@pytest.fixture
def report(api: LiveApi) -> dict[str, Any]:
    return _report(api)


def _ok(report: dict[str, Any], name: str) -> Any:
    entry = report[name]
    assert entry["ok"], f"{name}: {entry['detail']}\n{entry.get('trace', '')}"
    return entry["detail"]


def test_every_call_works(report: dict[str, Any]) -> None:
    failed = {k: v["detail"] for k, v in report.items() if not v["ok"]}
    assert not failed, json.dumps(failed, indent=1)


def test_models_carry_provider_and_type(report: dict[str, Any], api: LiveApi) -> None:
    listed = _ok(report, "models.list")
    by_provider = {m["provider_id"]: m for m in listed}
    assert {llm_provider(api), "onnx", "openai"} <= set(by_provider)
    for m in listed:
        assert m["provider_id"] and m["provider_resource_id"]
        assert m["model_type"] in ("llm", "embedding")
    assert by_provider[llm_provider(api)]["model_type"] == "llm"
    onnx = by_provider["onnx"]
    assert onnx["model_type"] == "embedding"
    assert onnx["custom_metadata"]["embedding_dimension"] == 384
    got = _ok(report, "models.retrieve")
    assert got == {"identifier": models_of(api)[llm_provider(api)],
                   "provider_id": llm_provider(api),
                   "model_type": "llm", "provider_resource_id": got["provider_resource_id"]}
    assert got["provider_resource_id"]


def test_models_register_and_unregister(report: dict[str, Any], api: LiveApi) -> None:
    registered = _ok(report, "models.register")
    assert registered["identifier"].startswith("lsc-") and registered["listed"]
    assert registered["provider_id"] == llm_provider(api) and registered["model_type"] == "llm"
    assert _ok(report, "models.unregister") == {"listed": False}


def test_chat_completions_plain_stream_and_history(report: dict[str, Any]) -> None:
    plain = _ok(report, "chat.completions.create")
    assert plain["content"] and plain["finish_reason"] in ("stop", "length")
    streamed = _ok(report, "chat.completions.create(stream)")
    assert streamed["chunks"] >= 1 and streamed["content"] == plain["content"]
    listed = _ok(report, "chat.completions.list")
    assert listed["input_messages"] == ["user"]
    got = _ok(report, "chat.completions.retrieve")
    assert got["id"] == plain["id"] and got["input_messages"] == ["user"]
    assert got["content"] == plain["content"]


def test_completions_and_embeddings(report: dict[str, Any]) -> None:
    assert _ok(report, "completions.create")["text"]
    assert _ok(report, "embeddings.create") == {"count": 2, "dimension": 384}


def test_providers_carry_health(report: dict[str, Any], api: LiveApi) -> None:
    for name in ("providers.list", "alpha.admin.list_providers"):
        listed = _ok(report, name)
        assert {llm_provider(api), "onnx", "openai"} <= {p["provider_id"] for p in listed}
        for p in listed:
            assert p["health"]["status"] in ("OK", "Error", "Not Implemented")
    one = _ok(report, "providers.retrieve")
    assert one["api"] == "inference" and one["health"]["status"]
    assert _ok(report, "alpha.admin.inspect_provider") == PROVIDER_TYPES[llm_provider(api)]


def test_routes_carry_provider_types(report: dict[str, Any], api: LiveApi) -> None:
    routes = _ok(report, "routes.list")
    chat = [r for r in routes if r["route"] == "/v1/chat/completions" and r["method"] == "POST"]
    assert chat and PROVIDER_TYPES[llm_provider(api)] in chat[0]["provider_types"]
    assert all(isinstance(r["provider_types"], list) for r in routes)
    assert any(r["route"] == "/v1/messages" for r in routes)
    v1 = _ok(report, "alpha.admin.list_routes")
    assert v1 and all(r["route"].startswith("/v1/") for r in v1)


def test_inspect_and_admin_health_and_version(report: dict[str, Any]) -> None:
    assert _ok(report, "inspect.health") == "OK"
    assert _ok(report, "alpha.admin.health") == "OK"
    version = _ok(report, "inspect.version")
    assert version and _ok(report, "alpha.admin.version") == version


def test_files_and_vector_stores(report: dict[str, Any]) -> None:
    f = _ok(report, "files")
    assert f["bytes"] == len(b"Paris is in France.") and f["filename"] == "note.txt"
    assert f["listed"] and f["content"] == "Paris is in France."
    vs = _ok(report, "vector_stores")
    assert vs["completed"] == 1 and vs["listed"]
    assert any("capital of France" in h for h in vs["hits"])


def test_shields(report: dict[str, Any]) -> None:
    shields = _ok(report, "shields.list")
    assert {"identifier": "pii", "provider_id": "rules"} in shields
