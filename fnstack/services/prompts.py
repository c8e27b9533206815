"""The prompts service: Llama Stack's /v1/prompts, versioned and owned.

Layout in the ``prompts`` kv store::

    prompt:<prompt_id>                      the head (an owned record: `RecordStore`):
                                            latest, default, the nonce of each version,
                                            and a copy of the default version's content
    pver:<prompt_id>:<version 8 dig>:<nonce>  one version: prompt text + variables

The head is the truth: a version exists when the head names its nonce. An update::

    read head (ver h, latest N)      request.version != N ............. 409
    write pver:<id>:<N+1>:<fresh nonce>
    put head latest=N+1, nonces[N+1]=nonce   IF version == h
        lost (a concurrent update won) ...... delete our version record, 409

so concurrent editors can never both make version N+1, and a crash between the two
writes leaves only an orphan record no head names (invisible, never served). The
default version's content is copied into the head so that listing prompts reads the
heads alone.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from fastapi import APIRouter

from fnstack.api.prompts import (
    MAX_PROMPT_BYTES,
    MAX_VARIABLES,
    VARIABLE_NAME,
    CreatePromptRequest,
    Prompt,
    PromptList,
    RenderedPrompt,
    UpdatePromptRequest,
    placeholders,
    render_text,
)
from fnstack.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PreconditionFailedError,
)
from fnstack.records import RecordStore, authorize, check_storable
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.spec import Api
from fnstack.storage import KVRecord, KVStore, Owner

__all__ = ["PromptsService", "spec"]

STORE = "prompts"
KIND = "prompt"


def new_prompt_id() -> str:
    """``pmpt_`` + 48 hex digits (Llama Stack's format): 12 of milliseconds, so the
    store lists prompts in creation order, then 36 random."""
    return f"pmpt_{int(time.time() * 1000):012x}{secrets.token_hex(18)}"


def _ver_key(prompt_id: str, version: int, nonce: str) -> str:
    return f"pver:{prompt_id}:{version:08d}:{nonce}"


def check_template(text: str, variables: list[str] | None) -> list[str]:
    """The declared variables, checked against ``text``; 400 naming what is wrong."""
    if not text.strip():
        raise InvalidRequestError("prompt must not be empty", param="prompt")
    check_storable(text, "prompt")
    # Counted in UTF-8 bytes: a version and the head's copy of it must each fit one
    # DynamoDB item (400 KB).
    size = len(text.encode())
    if size > MAX_PROMPT_BYTES:
        raise InvalidRequestError(f"prompt is {size} bytes of UTF-8; at most "
                                  f"{MAX_PROMPT_BYTES}", param="prompt")
    declared = list(variables or [])
    if len(declared) > MAX_VARIABLES:
        raise InvalidRequestError(f"at most {MAX_VARIABLES} variables", param="variables")
    for i, name in enumerate(declared):
        if not VARIABLE_NAME.fullmatch(name):
            raise InvalidRequestError(
                f"invalid variable name {name!r}: a letter or _ then letters, digits or _ "
                "(at most 64)", param=f"variables[{i}]")
        if name in declared[:i]:
            raise InvalidRequestError(f"variable {name!r} is declared twice",
                                      param=f"variables[{i}]")
    try:
        used = placeholders(text)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="prompt") from None
    undeclared = [n for n in used if n not in declared]
    if undeclared:
        raise InvalidRequestError(
            f"the prompt uses undeclared variable(s) {', '.join(undeclared)}; add them to "
            "variables", param="variables", code="undeclared_variable")
    return declared


def _view(prompt_id: str, version: int, content: dict[str, Any], default: int) -> Prompt:
    return Prompt(prompt_id=prompt_id, version=version, is_default=version == default,
                  prompt=content["prompt"], variables=content["variables"])


class PromptsService(Service):
    """Versioned prompt templates, owned and access-checked like every record."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.policy = ctx.policy
        self.kv: KVStore = ctx.stores.kv(STORE)
        self.records = RecordStore(self.kv, kind=KIND, id_prefix="pmpt_",
                                   key_prefix="prompt:", policy=ctx.policy)

    async def create(self, request: CreatePromptRequest, user: Owner) -> Prompt:
        variables = check_template(request.prompt, request.variables)
        prompt_id = new_prompt_id()
        authorize(self.policy, "create", KIND, prompt_id, user, user)
        nonce = secrets.token_hex(4)
        content = {"prompt": request.prompt, "variables": variables}
        await self.kv.put(_ver_key(prompt_id, 1, nonce), {**content, "version": 1,
                                                          "created_at": int(time.time())},
                          owner=user, if_absent=True)
        await self.records.create(prompt_id, {
            "prompt_id": prompt_id, "created_at": int(time.time()), "latest": 1,
            "default": 1, "nonces": {"1": nonce}, "current": content,
        }, user)
        return _view(prompt_id, 1, content, 1)

    async def list_prompts(self, user: Owner) -> PromptList:
        """Every prompt the caller can read, each at its default version."""
        out: list[Prompt] = []
        after: str | None = None
        while True:
            page = await self.records.list(user, after=after, limit=1000)
            for rec in page.records:
                v = rec.value
                out.append(_view(v["prompt_id"], v["default"], v["current"], v["default"]))
            if not page.has_more:
                return PromptList(data=out)
            after = self.records.record_id(page.records[-1])

    async def retrieve(self, prompt_id: str, version: int | None, user: Owner) -> Prompt:
        head = await self._head(prompt_id, user, "prompt_id")
        return await self._version(head, version, "version")

    async def update(self, prompt_id: str, request: UpdatePromptRequest,
                     user: Owner) -> Prompt:
        head = await self._head(prompt_id, user, "prompt_id")
        authorize(self.policy, "update", KIND, prompt_id, head.owner, user)
        latest = int(head.value["latest"])
        if request.version != latest:
            if 1 <= request.version < latest:
                raise ConflictError(
                    f"prompt {prompt_id!r} is at version {latest} (you updated version "
                    f"{request.version}); retrieve it, reapply your change and send "
                    f"version {latest}", param="version", code="version_conflict")
            raise InvalidRequestError(
                f"prompt {prompt_id!r} has no version {request.version}; send the latest "
                f"version ({latest})", param="version")
        previous = await self._version(head, latest, "version")
        variables = check_template(
            request.prompt,
            request.variables if request.variables is not None else previous.variables)
        new = latest + 1
        nonce = secrets.token_hex(4)
        content = {"prompt": request.prompt, "variables": variables}
        key = _ver_key(prompt_id, new, nonce)
        await self.kv.put(key, {**content, "version": new, "created_at": int(time.time())},
                          owner=head.owner, if_absent=True)
        value = dict(head.value)
        value["latest"] = new
        value["nonces"] = {**value["nonces"], str(new): nonce}
        if request.set_as_default:
            value["default"] = new
            value["current"] = content
        try:
            await self.kv.put(head.key, value, owner=head.owner, if_version=head.version)
        except PreconditionFailedError:
            await self.kv.delete(key)
            raise ConflictError(
                f"prompt {prompt_id!r} was updated concurrently; retrieve it and retry "
                "with its new version", param="version", code="version_conflict") from None
        return _view(prompt_id, new, content, int(value["default"]))

    async def set_default_version(self, prompt_id: str, version: int, user: Owner) -> Prompt:
        head = await self._head(prompt_id, user, "prompt_id")
        authorize(self.policy, "update", KIND, prompt_id, head.owner, user)
        chosen = await self._version(head, version, "version")
        content = {"prompt": chosen.prompt, "variables": chosen.variables}

        def change(value: dict[str, Any]) -> dict[str, Any]:
            return {**value, "default": version, "current": content}

        await self.records.update(prompt_id, user, change)
        return chosen.model_copy(update={"is_default": True})

    async def list_versions(self, prompt_id: str, user: Owner) -> PromptList:
        head = await self._head(prompt_id, user, "prompt_id")
        nonces: dict[str, str] = head.value["nonces"]
        out: list[Prompt] = []
        cursor: str | None = None
        while True:
            page = await self.kv.list(f"pver:{prompt_id}:", limit=1000, after=cursor)
            for rec in page.records:
                version = int(rec.value["version"])
                # Only the versions the head names (not orphans of a lost update).
                if rec.key == _ver_key(prompt_id, version, nonces.get(str(version), "")):
                    out.append(_view(prompt_id, version, rec.value,
                                     int(head.value["default"])))
            if not page.has_more:
                return PromptList(data=out)
            cursor = page.last_cursor

    async def delete(self, prompt_id: str, user: Owner) -> None:
        head = await self._head(prompt_id, user, "prompt_id")
        await self.records.delete(prompt_id, user)  # unreachable from here on
        await asyncio.gather(*(self.kv.delete(_ver_key(prompt_id, int(v), n))
                               for v, n in head.value["nonces"].items()))

    async def render(self, prompt_id: str, version: int | None,
                     variables: dict[str, Any] | None, user: Owner) -> RenderedPrompt:
        """The prompt's text at ``version`` (None: the default) with ``variables`` filled
        in. 404 for an unknown id or version; 400 (param ``prompt.variables``) for a
        missing, undeclared or non-text variable."""
        head = await self._head(prompt_id, user, "prompt.id")
        chosen = await self._version(head, version, "prompt.version")
        assert chosen.prompt is not None
        values: dict[str, str] = {}
        for name, value in (variables or {}).items():
            if name not in chosen.variables:
                raise InvalidRequestError(
                    f"variable {name!r} is not declared by prompt {prompt_id!r} version "
                    f"{chosen.version} (it declares: {', '.join(chosen.variables) or 'none'})",
                    param="prompt.variables")
            if isinstance(value, str):
                values[name] = value
            elif (isinstance(value, dict) and value.get("type") == "input_text"
                  and isinstance(value.get("text"), str)):
                values[name] = value["text"]
            else:
                raise InvalidRequestError(
                    f"variable {name!r} must be a string or an input_text part "
                    "({\"type\": \"input_text\", \"text\": ...})", param="prompt.variables")
        missing = [n for n in placeholders(chosen.prompt) if n not in values]
        if missing:
            raise InvalidRequestError(
                f"prompt {prompt_id!r} version {chosen.version} needs variable(s) "
                f"{', '.join(missing)}", param="prompt.variables")
        return RenderedPrompt(prompt_id=prompt_id, version=chosen.version,
                              text=render_text(chosen.prompt, values))

    # --- internals ----------------------------------------------------------------------

    async def _head(self, prompt_id: str, user: Owner, param: str) -> KVRecord:
        try:
            return await self.records.get(prompt_id, user)
        except NotFoundError:
            raise NotFoundError(f"prompt {prompt_id!r} not found", param=param) from None

    async def _version(self, head: KVRecord, version: int | None, param: str) -> Prompt:
        v = head.value
        default = int(v["default"])
        if version is None or version == default:
            return _view(v["prompt_id"], default, v["current"], default)
        nonce = v["nonces"].get(str(version))
        rec = await self.kv.get(_ver_key(v["prompt_id"], version, nonce)) if nonce else None
        if rec is None:
            raise NotFoundError(f"prompt {v['prompt_id']!r} has no version {version}",
                                param=param)
        return _view(v["prompt_id"], version, rec.value, default)


async def _build(ctx: ServiceContext) -> Service:
    return PromptsService(ctx)


def _router() -> APIRouter:
    from fnstack.routes.prompts import router

    return router


spec = ServiceSpec(
    name="prompts",
    apis=(Api.prompts,),
    factory=_build,
    router=_router,
    stores=(StoreNeed(STORE),),
    description="prompts: versioned prompt templates with variables (Llama Stack's /v1/prompts)",
)
