"""Secrets are masked by type: secret-named fields, header values, URL credentials."""

from __future__ import annotations

import pytest

from fnstack.redact import MASK, is_secret_name, redact, scrub_text, scrub_url


@pytest.mark.parametrize(
    "name",
    ["api_key", "x-api-key", "accessToken", "apikey", "aws_secret_access_key", "Authorization",
     "password", "session_token", "sig", "X-Amz-Security-Token", "Cookie", "client_secret"],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["base_url", "tokenizer_path", "max_tokens", "keep_alive", "model_id", "author"]
)
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://bob:pw@api.example.com/v1", f"https://{MASK}@api.example.com/v1"),
        ("https://api.example.com/v1?api-key=abc&x=1", f"https://api.example.com/v1?api-key={MASK}&x=1"),
        ("http://h/v1?key=k", f"http://h/v1?key={MASK}"),
        ("http://h/v1?token=t&sig=s", f"http://h/v1?token={MASK}&sig={MASK}"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
)
def test_scrub_url(url: str, expected: str) -> None:
    assert scrub_url(url) == expected


def test_scrub_text_masks_urls_inside_messages() -> None:
    out = scrub_text("cannot connect to upstream https://u:p@h/v1?key=zz&a=b: refused")
    assert out == f"cannot connect to upstream https://{MASK}@h/v1?key={MASK}&a=b: refused"
    assert "zz" not in out and "u:p" not in out


def test_redact_config() -> None:
    config = {
        "base_url": "https://user:hunter2@h/v1?api-key=abc",
        "headers": {"Authorization": "Bearer sk-1", "Cookie": "s=1", "X-Team": "blue"},
        "api_key": "sk-2",
        "max_tokens": 5,
        "tokenizer_path": "/models/tok.json",
        "nested": [{"password": "p"}],
        "empty_key": "",
    }
    out = redact(config)
    assert out["base_url"] == f"https://{MASK}@h/v1?api-key={MASK}"
    assert out["headers"] == {"Authorization": MASK, "Cookie": MASK, "X-Team": MASK}
    assert out["api_key"] == MASK
    assert out["max_tokens"] == 5
    assert out["tokenizer_path"] == "/models/tok.json"
    assert out["nested"] == [{"password": MASK}]
    assert out["empty_key"] == ""
    text = repr(out)
    for secret in ("hunter2", "abc", "sk-1", "sk-2", "s=1"):
        assert secret not in text
