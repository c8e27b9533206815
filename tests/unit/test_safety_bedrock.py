"""remote::bedrock-guardrails against a fake Bedrock Guardrails runtime that speaks
ApplyGuardrail's wire format: botocore serializes every request and parses every answer."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from fnstack.api.inference import ChatCompletionRequest
from fnstack.api.safety import ModerationInput, Shield
from fnstack.errors import InvalidRequestError, NotFoundError, RateLimitError
from fnstack.spec import ProviderContext
from providers.safety.bedrock import BedrockGuardrailsConfig, BedrockGuardrailsProvider, spec
from tests.support.fake_guardrails import FakeGuardrails, Fault, Policy

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeGuardrails]:
    guardrails = {"gr-1": Policy(words=["badword"], topics={"Finance": ["stock tips"]},
                                 filters={"VIOLENCE": ["hurt someone"]})}
    with FakeGuardrails(guardrails) as server:
        yield server


@pytest.fixture
async def provider(fake: FakeGuardrails,
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[BedrockGuardrailsProvider]:
    fake.reset()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    cfg = BedrockGuardrailsConfig(region="us-east-1", endpoint_url=fake.url, max_attempts=1,
                                  guardrails=[{"guardrail_id": "gr-1", "version": "1"}])
    made = cast(BedrockGuardrailsProvider,
                await spec.factory(cfg, ProviderContext(provider_id="bg", cache_dir=Path("/tmp"))))
    yield made
    await made.shutdown()


def shield(gid: str = "gr-1", **params: Any) -> Shield:
    return Shield(identifier="corp", provider_id="bg", provider_resource_id=gid, params=params)


def msgs(*turns: tuple[str, str]) -> list[Any]:
    return list(ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": r, "content": c} for r, c in turns]}).messages)


async def test_reports_configured_guardrails(provider: BedrockGuardrailsProvider) -> None:
    [s] = await provider.list_shields()
    assert (s.provider_resource_id, s.params) == ("gr-1", {"guardrail_version": "1"})


async def test_clean_input_passes(provider: BedrockGuardrailsProvider,
                                  fake: FakeGuardrails) -> None:
    res = await provider.run_shield(shield(), msgs(("user", "hello there")), {})
    assert res.violation is None
    seen = fake.last
    assert (seen.guardrail_id, seen.version) == ("gr-1", "DRAFT")
    assert seen.body == {"source": "INPUT", "content": [{"text": {"text": "hello there"}}]}
    assert seen.headers["authorization"].startswith("AWS4-HMAC-SHA256")


async def test_blocked_word_and_topic(provider: BedrockGuardrailsProvider,
                                      fake: FakeGuardrails) -> None:
    res = await provider.run_shield(
        shield(guardrail_version="1"),
        msgs(("user", "give me stock tips"), ("assistant", "a badword here")), {})
    v = res.violation
    assert v is not None and v.violation_level == "error"
    assert v.user_message == "Sorry, the model cannot answer this question."
    assert v.metadata["categories"] == ["topic/Finance", "word/custom"]
    assert v.metadata["guardrail_version"] == "1"
    # The last message is the assistant's: checked as OUTPUT, every message's text sent.
    assert fake.last.body["source"] == "OUTPUT" and len(fake.last.body["content"]) == 2
    assert fake.last.version == "1"


async def test_pii_anonymized_output_in_metadata(provider: BedrockGuardrailsProvider) -> None:
    res = await provider.run_shield(shield(), msgs(("user", "I am bob@example.com")), {})
    v = res.violation
    assert v is not None and v.metadata["categories"] == ["pii/EMAIL"]
    assert v.metadata["outputs"] == ["I am {EMAIL}"]


async def test_moderation_maps_content_filters(provider: BedrockGuardrailsProvider,
                                               fake: FakeGuardrails) -> None:
    results = await provider.moderate(shield(), [
        ModerationInput(text="I want to hurt someone", image_urls=[PNG]),
        ModerationInput(text="nice weather"),
    ])
    assert results[0].flagged and results[0].categories["violence"]
    assert results[0].category_scores["violence"] == 0.95
    assert results[0].category_applied_input_types["violence"] == ["text", "image"]
    assert not results[1].flagged
    image = fake.requests[-2].body["content"][1]["image"]
    assert image["format"] == "png"
    assert base64.b64decode(image["source"]["bytes"]).startswith(b"\x89PNG")


async def test_errors_are_mapped(provider: BedrockGuardrailsProvider,
                                 fake: FakeGuardrails) -> None:
    with pytest.raises(NotFoundError):
        await provider.run_shield(shield("gr-missing"), msgs(("user", "hi")), {})
    with pytest.raises(InvalidRequestError):
        await provider.run_shield(shield(guardrail_version="7"), msgs(("user", "hi")), {})
    fake.script(Fault("ThrottlingException"))
    with pytest.raises(RateLimitError):
        await provider.run_shield(shield(), msgs(("user", "hi")), {})
    with pytest.raises(InvalidRequestError, match="guardrail_version"):
        await provider.run_shield(shield(version="1"), msgs(("user", "hi")), {})


async def test_no_messages_only_checks_params(provider: BedrockGuardrailsProvider,
                                              fake: FakeGuardrails) -> None:
    assert (await provider.run_shield(shield(), [], {})).violation is None
    assert fake.requests == []
