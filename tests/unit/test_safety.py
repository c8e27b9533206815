"""Safety providers' pure parts: the rules detectors, Luhn, redaction, the judge's
prompt and verdict parser."""

from __future__ import annotations

from typing import Any

import pytest

from fnstack.api.inference import ChatCompletionRequest
from fnstack.api.safety import ModerationInput, ModerationResult, Shield
from fnstack.errors import InvalidRequestError
from providers.safety.llm_judge import CATEGORIES, build_prompt, parse_verdict
from providers.safety.rules import RulesConfig, RulesProvider, find, luhn_ok, redact

ALL = RulesConfig()


def kinds(text: str, config: RulesConfig = ALL) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start:f.end]) for f in find(text, config)]


def messages(*turns: tuple[str, str]) -> list[Any]:
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": r, "content": c} for r, c in turns]}
    )
    return list(req.messages)


def shield(**params: Any) -> Shield:
    return Shield(identifier="pii", provider_id="rules", provider_resource_id="pii",
                  params=params)


# --- Luhn and cards -----------------------------------------------------------------


@pytest.mark.parametrize("number", ["4111111111111111", "5500005555555559", "378282246310005",
                                    "6011111111111117", "4012888888881881", "79927398713"])
def test_luhn_valid(number: str) -> None:
    assert luhn_ok(number)


@pytest.mark.parametrize("number", ["4111111111111112", "1234567812345678", "79927398710",
                                    "", "4111-1111"])
def test_luhn_invalid(number: str) -> None:
    assert not luhn_ok(number)


def test_cards_need_luhn_and_an_issuer() -> None:
    assert kinds("pay with 4111 1111 1111 1111 today") == [("credit_card", "4111 1111 1111 1111")]
    assert kinds("amex 3782-822463-10005") == [("credit_card", "3782-822463-10005")]
    # A Luhn-valid number with no card issuer's prefix, and an invalid Visa.
    assert kinds("ref 1234567812345670") == []
    assert kinds("visa 4111 1111 1111 1112") == []


# --- each kind ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "kind", "match"), [
    ("write to jane.doe+news@mail.example.co.uk now", "email", "jane.doe+news@mail.example.co.uk"),
    ("call (555) 123-4567", "phone", "(555) 123-4567"),
    ("call 555-123-4567", "phone", "555-123-4567"),
    ("call +44 20 7946 0958", "phone", "+44 20 7946 0958"),
    ("call +14155550123", "phone", "+14155550123"),
    ("ssn 123-45-6789", "us_ssn", "123-45-6789"),
    ("id AKIAIOSFODNN7EXAMPLE", "aws_access_key", "AKIAIOSFODNN7EXAMPLE"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("OPENAI_API_KEY sk-proj-abcdefghijklmnopqrstuvwx1234", "api_key",
     "sk-proj-abcdefghijklmnopqrstuvwx1234"),
    ("token ghp_" + "A1" * 18, "api_key", "ghp_" + "A1" * 18),
    ("password: hunter2hunter2hunter2", "api_key", "hunter2hunter2hunter2"),
    ("Authorization: Bearer abcdefghijklmnop1234", "api_key", "abcdefghijklmnop1234"),
])
def test_each_kind(text: str, kind: str, match: str) -> None:
    assert kinds(text) == [(kind, match)]


def test_private_key_block_whole_or_unterminated() -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----"
    assert kinds(f"here: {block} thanks") == [("private_key", block)]
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk"
    assert kinds(cut) == [("private_key", cut)]


def test_no_false_positives_on_ordinary_numbers_and_text() -> None:
    text = ("Order 12345678 shipped on 2024-01-15 at 10:30; total 1,234,567.89 USD for 3 "
            "items. IP 192.168.100.200, version 1.2.3, pi 3.14159, population 8000000000, "
            "ISBN 978-3-16-148410-0, tel? no: 1234 5678 9012 3456. sha1 "
            "da39a3ee5e6b4b0d3255bfef95601890afd80709, uuid 123e4567-e89b-12d3-a456-426614174000."
            " The secret of the garden is patience; my password is long. user@localhost")
    assert kinds(text) == []


def test_redaction_replaces_every_finding() -> None:
    text = "mail a@b.io or call 555-123-4567, card 4111111111111111."
    assert redact(text, find(text, ALL)) == "mail [EMAIL] or call [PHONE], card [CREDIT_CARD]."


def test_blocked_terms_whole_words_and_custom_patterns() -> None:
    config = RulesConfig(pii=[], blocked_terms=["Project X", "foo"],
                         patterns={"ticket": r"TICKET-\d{6}"})
    assert kinds("about project x and TICKET-123456, not food", config) == [
        ("blocked_term", "project x"), ("custom/ticket", "TICKET-123456")]
    with pytest.raises(ValueError, match="not a valid regex"):
        RulesConfig(patterns={"bad": "("})


# --- the provider ------------------------------------------------------------------------


async def test_run_shield_reports_and_redacts() -> None:
    p = RulesProvider(RulesConfig())
    ok = await p.run_shield(shield(), messages(("user", "hello there")), {})
    assert ok.violation is None
    res = await p.run_shield(
        shield(), messages(("system", "be nice"), ("user", "I am bob@example.com")), {})
    v = res.violation
    assert v is not None and v.violation_level == "error"
    assert "e-mail" in (v.user_message or "")
    assert v.metadata["redacted_text"] == "I am [EMAIL]"
    assert v.metadata["redacted_messages"] == ["be nice", "I am [EMAIL]"]
    assert v.metadata["findings"] == [
        {"type": "email", "message_index": 1, "start": 5, "end": 20}]
    assert v.metadata["categories"] == ["pii/email"]


async def test_shield_and_call_params_override_the_config() -> None:
    p = RulesProvider(RulesConfig())
    msgs = messages(("user", "bob@example.com says hi to Voldemort"))
    only_terms = shield(pii=[], blocked_terms=["voldemort"], violation_level="warn")
    v = (await p.run_shield(only_terms, msgs, {})).violation
    assert v is not None and v.violation_level == "warn"
    assert v.metadata["redacted_text"] == "bob@example.com says hi to [BLOCKED_TERM]"
    v = (await p.run_shield(only_terms, msgs, {"blocked_terms": []})).violation
    assert v is None
    with pytest.raises(InvalidRequestError, match=r"params\.pii"):
        await p.run_shield(shield(pii=["passport"]), msgs, {})
    # A call may narrow or widen the kinds and terms, never bring its own regex.
    with pytest.raises(InvalidRequestError, match="not per call"):
        await p.run_shield(shield(), msgs, {"patterns": {"x": "(a+)+$"}})
    v = (await p.run_shield(shield(patterns={"name": "Voldemort"}, pii=[]), msgs, {})).violation
    assert v is not None and v.metadata["categories"] == ["custom/name"]


async def test_moderation_result_shape() -> None:
    p = RulesProvider(RulesConfig())
    [flagged, clean] = await p.moderate(shield(), [
        ModerationInput(text="key AKIAIOSFODNN7EXAMPLE"), ModerationInput(text="hi")])
    assert flagged.flagged and flagged.categories["secrets/aws_access_key"]
    assert flagged.category_applied_input_types["secrets/aws_access_key"] == ["text"]
    assert not clean.flagged
    assert set(ModerationResult.of({}, set()).categories) >= {"hate", "violence/graphic"}
    assert clean.categories["violence"] is False and clean.category_scores["hate"] == 0.0


# --- the judge's verdict -------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "safe", "codes"), [
    ("safe", True, ()),
    ("  Safe  \n", True, ()),
    ("**safe**", True, ()),
    ("unsafe\nS1,S10", False, ("S1", "S10")),
    ("UNSAFE\n s1, s10 ", False, ("S1", "S10")),
    ("```\nunsafe\nS2\n```", False, ("S2",)),
    ("```text\nsafe\n```", True, ()),
    ("unsafe: S3", False, ("S3",)),
    ("Verdict: unsafe\nS14, S99", False, ("S14",)),
    ("unsafe", False, ()),
])
def test_verdicts(answer: str, safe: bool, codes: tuple[str, ...]) -> None:
    verdict = parse_verdict(answer)
    assert verdict is not None
    assert (verdict.safe, verdict.categories) == (safe, codes)


@pytest.mark.parametrize("answer", ["", "   ", "garbage", "I think it is safe", "safety first",
                                    "```\n```", "The answer is unsafe"])
def test_unparseable_verdicts(answer: str) -> None:
    assert parse_verdict(answer) is None


def test_prompt_is_llama_guard_shaped() -> None:
    prompt = build_prompt(messages(("system", "sys"), ("user", "hi"), ("assistant", "hello")),
                          ["S6"])
    assert "'Agent' messages" in prompt and "ONLY THE LAST Agent message" in prompt
    assert "User: hi\n\nAgent: hello" in prompt and "sys" not in prompt
    assert "S6: Specialized Advice" not in prompt and "S14: Code Interpreter Abuse." in prompt
    assert len(CATEGORIES) == 14
    assert "'User' messages" in build_prompt(messages(("user", "hi")))
