"""Chat messages -> prompt text, with the Jinja chat template stored in the GGUF.

Templates come from model files, i.e. from third parties: they run in Jinja's
sandbox, as Hugging Face ``transformers`` does, with the same helpers
(``raise_exception``, ``strftime_now``) and variables (``messages``, ``tools``,
``add_generation_prompt``, ``bos_token``, ``eos_token``).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# ChatML, for GGUF files without tokenizer.chat_template.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The chat template rejected the messages (e.g. roles not alternating)."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str) -> Template:
    # trim_blocks/lstrip_blocks: what transformers' apply_chat_template uses.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


class ChatFormat:
    """Renders messages with one model's template."""

    def __init__(self, template: str | None, bos_token: str = "", eos_token: str = "") -> None:
        self.source = template or CHATML_TEMPLATE
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._template = _compile(self.source)

    @classmethod
    def from_gguf(cls, meta: Mapping[str, Any]) -> ChatFormat:
        tokens = meta.get("tokenizer.ggml.tokens") or []

        def token(key: str) -> str:
            idx = meta.get(key)
            return str(tokens[int(idx)]) if idx is not None and int(idx) < len(tokens) else ""

        return cls(
            meta.get("tokenizer.chat_template"),
            bos_token=token("tokenizer.ggml.bos_token_id"),
            eos_token=token("tokenizer.ggml.eos_token_id"),
        )

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Prompt text for ``messages`` (OpenAI-shaped dicts: role, content, ...).

        Content given as a list of parts (``[{"type": "text", "text": ...}]``) is
        joined into a string first: most templates only concatenate strings.
        """
        normalized = [_flatten_content(m) for m in messages]
        try:
            return self._template.render(
                messages=normalized,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except ChatTemplateError:
            raise
        except TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc
        except TypeError as exc:  # e.g. None + str inside the template
            raise ChatTemplateError(f"chat template failed on these messages: {exc}") from exc


def _flatten_content(message: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(message)
    content = out.get("content")
    if isinstance(content, list):
        texts = [
            p.get("text", "") if isinstance(p, Mapping) else str(p)
            for p in content
            if not isinstance(p, Mapping) or p.get("type", "text") == "text"
        ]
        out["content"] = "".join(texts)
    elif content is None:  # assistant turns with only tool_calls; templates concatenate
        out["content"] = ""
    return out
