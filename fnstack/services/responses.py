"""The responses service: OpenAI's /v1/responses on the inference service.

``create`` checks everything it can before any work (model, tools, tool_choice,
include, previous_response_id, conversation, prompt, input: 400/404 with the field),
then runs the agent loop (fnstack.services.responses_loop) in one of three ways:

- plain: the loop runs in the request; the response is stored (``store``, the
  default) before the answer goes out;
- ``stream: true``: the loop runs as the SSE stream is read; the response is stored
  before its terminal event goes out;
- ``background: true``: the response is stored ``queued`` and a ``responses.run`` job
  runs it (a background task locally, the SQS worker function on AWS: nothing runs after
  a Lambda function's response). The job checkpoints the loop's state after every step
  (output, usage, next step, event sequence number) and writes the event log, so a
  redelivered job resumes from the last step and ``GET ...?stream=true`` replays.
  ``POST /v1/responses/{id}/cancel`` marks it ``cancelled``; the running job notices
  (it watches the record) and stops at once, never overwriting the status.

Stored responses are owned records (kind ``response``, ids ``resp_``): another
principal's is a 404 everywhere, including as ``previous_response_id``. Key layout in
the ``responses`` kv store::

    resp:<id>          {"response": {...}, "state": {...}}   the Response and loop state
    resp_in:<id>       {"items": [...]}                      the request's input items
    resp_ev:<id>:<seq> {"events": [...]}                     a background run's events

Earlier turns reach the model through ``previous_response_id`` (the chain's inputs and
outputs, oldest first) or ``conversation`` (the conversation's items; the response's
input and output are appended to it when it ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter

from fnstack.api.inference import ChatCompletionRequest
from fnstack.api.responses import (
    INCLUDABLE,
    TERMINAL,
    CreateResponseRequest,
    InputItemList,
    InputTokens,
    Response,
    ResponseDeleted,
    ResponseList,
)
from fnstack.errors import (
    ConflictError,
    FnstackError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from fnstack.guardrails import FIELDS, requested
from fnstack.jobs import JobQueue, LocalJobQueue
from fnstack.records import RecordStore, authorize, check_storable, claim, mutate
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.services.inference import InferenceService
from fnstack.services.models import ModelsService
from fnstack.services.responses_items import to_messages, validate_input
from fnstack.services.responses_loop import Run, fresh_state, public_view, validate_tools
from fnstack.services.responses_stream import TERMINAL_EVENTS, EventLog, Events, replay
from fnstack.services.responses_tools import builtin_tools
from fnstack.spec import Api
from fnstack.storage import KVRecord, KVStore, Owner

__all__ = ["ResponsesService", "spec"]

log = logging.getLogger("fnstack.responses")

STORE = "responses"
KIND = "response"
MAX_CHAIN = 200
LEASE_S = 300.0
FILE_TEXT_LIMIT = 1_000_000
OPTIONAL = ("files", "vector_stores", "conversations", "prompts", "tool_runtime", "safety")


def _now() -> int:
    return int(time.time())


class ResponsesService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        self.inference = ctx.dep("inference", InferenceService)
        self.models = ctx.dep("models", ModelsService)
        self.services: dict[str, Any] = {n: ctx.deps[n] for n in OPTIONAL if n in ctx.deps}
        self.jobs: JobQueue | None = ctx.jobs
        self.policy = ctx.policy
        self.limits = ctx.config.responses
        self.kv: KVStore = ctx.stores.kv(STORE)
        self.records = RecordStore(self.kv, kind=KIND, id_prefix="resp_", key_prefix="resp:",
                                   policy=ctx.policy)
        self._tasks: set[asyncio.Task[Any]] = set()

    def service(self, name: str) -> Any | None:
        return self.services.get(name)

    # --- create ---------------------------------------------------------------------------

    async def create(self, request: CreateResponseRequest, user: Owner
                     ) -> Response | AsyncIterator[dict[str, Any]]:
        if not request.model:
            raise InvalidRequestError("model is required", param="model")
        conversation_id = request.conversation_id()
        if conversation_id and request.previous_response_id:
            raise InvalidRequestError(
                "previous_response_id and conversation cannot be used together",
                param="conversation")
        store = request.store is not False
        if request.background and not store:
            raise InvalidRequestError("background responses must be stored (store: true)",
                                      param="background")
        for n, value in enumerate(request.include or []):
            if value not in INCLUDABLE:
                raise InvalidRequestError(
                    f"include[{n}] {value!r} is not supported; use one of: "
                    f"{', '.join(INCLUDABLE)}", param=f"include[{n}]", code="invalid_value")
        tools, choice, prompt_text, context, items = await self._prepare(request, user)

        rid = self.records.new_id()
        response: dict[str, Any] = Response.model_validate(dict(
            id=rid, created_at=_now(), status="queued" if request.background else "in_progress",
            background=bool(request.background),
            conversation={"id": conversation_id} if conversation_id else None,
            instructions=request.instructions, max_output_tokens=request.max_output_tokens,
            max_tool_calls=request.max_tool_calls, metadata=request.metadata or {},
            model=request.model, parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            prompt=request.prompt, store=store, temperature=request.temperature,
            text=request.text or {"format": {"type": "text"}}, tool_choice=choice,
            tools=tools, top_p=request.top_p, truncation=request.truncation or "disabled",
            user=request.user,
        )).model_dump(mode="json", by_alias=True)
        response["_include"] = list(request.include or [])
        response["_guardrails"] = await self._guardrails(request, user)
        response["_prompt_text"] = prompt_text
        state = fresh_state()

        if request.background:
            authorize(self.policy, "create", KIND, rid, user, user)
            await self.kv.put(f"resp_in:{rid}", {"items": items}, owner=user)
            await self.records.create(rid, {"response": response, "state": state}, user)
            if self.jobs is None:
                raise ServiceUnavailableError("no job queue: background responses cannot run")
            await self.jobs.submit("responses.run", {"response_id": rid})
            if request.stream:
                return self._replay(rid, None)
            return _view(response)

        run = self._run(response, state, [*context, *items], user, Events())
        if request.stream:
            if store:
                # Stored (in_progress) before the first event: the id a client reads in
                # response.created is never a 404, whenever the client leaves.
                await self._save(run, items, store, first=True)
            return self._stream(run, items, store)
        await run.run()
        await self._save(run, items, store, first=True)
        return _view(run.response)

    async def _prepare(self, request: CreateResponseRequest, user: Owner
                       ) -> tuple[list[dict[str, Any]], str | dict[str, Any], str | None,
                                  list[dict[str, Any]], list[dict[str, Any]]]:
        """Everything checked before any work: (tools, tool_choice, the rendered prompt,
        the earlier items, the input items)."""
        check_storable(request.instructions, "instructions")
        check_storable(request.tools, "tools")
        tools = validate_tools(request.tools)
        by_type, _ = builtin_tools()
        for n, tool in enumerate(tools):
            check = getattr(by_type.get(tool["type"]), "check", None)
            if check is not None:
                await check(tool, f"tools[{n}]", user, self.service)
        choice = _tool_choice(request.tool_choice, tools)
        model = request.model or ""
        entry = await self.models.resolve(model, user)  # 404 for a model it may not use

        prompt_text: str | None = None
        if request.prompt is not None:
            prompts = self._need("prompts", "prompt")
            version = request.prompt.version
            if version is not None and not version.isdigit():
                raise InvalidRequestError("prompt.version must be a version number",
                                          param="prompt.version")
            rendered = await prompts.render(request.prompt.id,
                                            int(version) if version else None,
                                            request.prompt.variables, user)
            prompt_text = rendered.text
        conversation_id = request.conversation_id()
        if conversation_id:
            await self._need("conversations", "conversation").get(conversation_id, user)
        if request.previous_response_id:
            prev = await self._get(request.previous_response_id, user, "previous_response_id")
            status = prev.value["response"]["status"]
            if status in ("queued", "in_progress"):
                raise InvalidRequestError(
                    f"response {request.previous_response_id!r} is still {status}: its output "
                    "is not known yet; continue from it once it has finished",
                    param="previous_response_id", code="response_not_finished")
        context = await self._context(request.previous_response_id, conversation_id, user)
        items = validate_input(request.input, context)
        if not items and prompt_text is None:
            raise InvalidRequestError("input is required", param="input")
        if self._text_only(entry):
            _refuse_images(model, items)
        return tools, choice, prompt_text, context, items

    async def count_input_tokens(self, request: CreateResponseRequest, user: Owner
                                 ) -> InputTokens:
        """``POST /v1/responses/input_tokens``: what the first model call of this request
        would read. Exact with the model's tokenizer where its provider has one, else an
        estimate (4 characters a token)."""
        if not request.model:
            raise InvalidRequestError("model is required", param="model")
        if request.conversation_id() and request.previous_response_id:
            raise InvalidRequestError(
                "previous_response_id and conversation cannot be used together",
                param="conversation")
        tools, _, prompt_text, context, items = await self._prepare(request, user)
        system = "\n\n".join(t for t in (prompt_text, request.instructions) if t)
        messages = await to_messages([*context, *items])
        text = "\n".join([system, json.dumps(tools) if tools else "",
                          *(json.dumps(m["content"]) if not isinstance(m.get("content"), str)
                            else m["content"] for m in messages if m.get("content")),
                          *(json.dumps(m["tool_calls"]) for m in messages
                            if m.get("tool_calls"))])
        entry = await self.models.resolve(request.model, user)
        if "tokenizer" in self.models.hooks(entry.provider_id):
            provider = self.models.provider(entry.provider_id)
            tokenizer = await provider.tokenizer(entry.provider_resource_id)
            count = len(tokenizer.encode(text).ids)
        else:
            count = -(-len(text) // 4)
        # Each message's framing (role, separators) costs a few tokens too.
        return InputTokens(input_tokens=count + 4 * (len(messages) + bool(system)) + 3)

    async def _guardrails(self, request: CreateResponseRequest, user: Owner
                          ) -> dict[str, Any]:
        """Llama Stack's ``guardrails`` (and ``shields``, ``input_shields``,
        ``output_shields``) fields, checked now: no safety API is a 400, an unknown
        shield a 404 (param ``guardrails``). They run around every model call."""
        extra = request.model_extra or {}
        fields = {k: extra[k] for k in FIELDS if extra.get(k) is not None}
        if not fields:
            return {}
        probe = ChatCompletionRequest.model_validate({
            "model": request.model or "", "messages": [{"role": "user", "content": "."}],
            **fields})
        guard, _ = requested(probe)
        if guard is None:
            return {}
        safety = self._need("safety", "guardrails")
        for shield_id in dict.fromkeys(guard.input + guard.output):
            await safety.resolve(shield_id, user, param="guardrails")
        return fields

    def _text_only(self, entry: Any) -> bool:
        """Whether the model reads text only: its metadata says so (``input_modalities``
        without ``image``), or it is the bundled model (inline::reference, a text LLM)."""
        modalities = entry.metadata.get("input_modalities")
        if isinstance(modalities, list):
            return "image" not in modalities
        spec = getattr(self.models, "_specs", {}).get(entry.provider_id)
        return getattr(spec, "provider_type", "") == "inline::reference"

    def _need(self, name: str, param: str) -> Any:
        svc = self.service(name)
        if svc is None:
            raise InvalidRequestError(f"{param} needs the {name} API, which this deployment "
                                      "does not serve", param=param)
        return svc

    def _run(self, response: dict[str, Any], state: dict[str, Any],
             context: list[dict[str, Any]], user: Owner, events: Events,
             checkpoint: Any = None) -> Run:
        async def read_file(file_id: str) -> tuple[str, str]:
            files = self._need("files", "input")
            content = await files.content(file_id, user)
            data = b""
            async for chunk in content.chunks:
                data += chunk
                if len(data) > FILE_TEXT_LIMIT:
                    break
            return content.file.filename, data[:FILE_TEXT_LIMIT].decode("utf-8", "replace")

        return Run(response=response, state=state, context=context, user=user,
                   inference=self.inference, services=self.services, events=events,
                   max_calls=self.limits.max_inference_calls, read_file=read_file,
                   checkpoint=checkpoint)

    async def _stream(self, run: Run, items: list[dict[str, Any]], store: bool
                      ) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def sink(event: dict[str, Any]) -> None:
            await queue.put(event)

        run.events.sinks.append(sink)

        settled = False

        async def work() -> None:
            nonlocal settled
            try:
                await run.run()
            except FnstackError as exc:
                err = exc.to_dict()["error"]
                await run.fail(err["code"] or err["type"], err["message"])
            except Exception:
                log.exception("response run failed", extra={"response_id": run.response_id})
                await run.fail("server_error", "the response failed; retry")
            try:
                await self._save(run, items, store)
                settled = True
            finally:
                await queue.put(None)

        # Awaited by the stream: it ends with the stream, or is cancelled with it.
        task = asyncio.ensure_future(work())
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                if event["type"] in TERMINAL_EVENTS:
                    # Stored before the client hears it is done (as chat completions).
                    await asyncio.wait({task})
                yield event
        finally:
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if store and not settled:
                # The client left before the end: the run stops (the model with it) and
                # the stored response settles as cancelled, never stuck in_progress.
                run.response.update(status="cancelled", usage=run.usage)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._save(run, items, store))

    async def _save(self, run: Run, items: list[dict[str, Any]], store: bool,
                    first: bool = False) -> None:
        """Store the response (``first``: with its input items, as a new record); a
        finished one in a conversation then appends its turn there."""
        response = run.response
        if store:
            value = {"response": response, "state": run.state}
            if first:
                await self.kv.put(f"resp_in:{run.response_id}", {"items": items},
                                  owner=run.user)
                await self.records.create(run.response_id, value, run.user)
            elif await mutate(self.kv, f"resp:{run.response_id}", lambda _: value) is None:
                return  # deleted while it ran: it stays deleted, its turn unrecorded
        await self.append_turn(response, items, run.user)

    async def append_turn(self, response: dict[str, Any], items: list[dict[str, Any]],
                          user: Owner) -> None:
        """A finished response's input and output, appended to its conversation. One
        deleted while the response ran stays deleted: the turn is dropped, not an error."""
        conv = (response.get("conversation") or {}).get("id")
        if not conv or response["status"] not in ("completed", "incomplete"):
            return
        try:
            await self._need("conversations", "conversation").append_items(
                conv, [*items, *response["output"]], user)
        except NotFoundError:
            log.warning("conversation gone before the response ended",
                        extra={"response_id": response["id"], "conversation_id": conv})

    async def _context(self, previous: str | None, conversation: str | None, user: Owner
                       ) -> list[dict[str, Any]]:
        if conversation:
            items: list[dict[str, Any]] = await self._need(
                "conversations", "conversation").all_items(conversation, user)
            return items
        turns: list[list[dict[str, Any]]] = []
        while previous and len(turns) < MAX_CHAIN:
            rec = await self._get(previous, user, "previous_response_id")
            inputs = await self.kv.get(f"resp_in:{previous}")
            response = rec.value["response"]
            turns.append([*(inputs.value["items"] if inputs else []), *response["output"]])
            previous = response.get("previous_response_id")
        return [item for turn in reversed(turns) for item in turn]

    # --- read, delete, cancel -------------------------------------------------------------

    async def _get(self, rid: str, user: Owner, param: str = "response_id") -> KVRecord:
        try:
            return await self.records.get(rid, user)
        except NotFoundError:
            raise NotFoundError(f"response {rid!r} not found", param=param) from None

    async def get(self, rid: str, user: Owner, include: list[str] | None = None) -> Response:
        value = (await self._get(rid, user)).value["response"]
        # What the create request included is not retrieval's default: ask again.
        return _view(value, include or [])

    async def stream_stored(self, rid: str, user: Owner, starting_after: int | None
                            ) -> AsyncIterator[dict[str, Any]]:
        value = (await self._get(rid, user)).value["response"]
        if not value.get("background"):
            raise InvalidRequestError("only background responses can be streamed again",
                                      param="stream")
        return self._replay(rid, starting_after)

    def _replay(self, rid: str, starting_after: int | None) -> AsyncIterator[dict[str, Any]]:
        async def finished() -> bool:
            rec = await self.kv.get(f"resp:{rid}")
            return rec is None or rec.value["response"]["status"] in TERMINAL

        return replay(EventLog(self.kv, rid), starting_after, finished)

    async def list_responses(self, user: Owner, *, after: str | None, limit: int,
                             order: Literal["asc", "desc"], model: str | None
                             ) -> ResponseList:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100", param="limit")
        page = await self.records.list(
            user, after=after, limit=limit, order=order,
            where=None if model is None else (lambda v: v["response"]["model"] == model))
        data = [_view(r.value["response"], []) for r in page.records]
        return ResponseList(data=data, first_id=data[0].id if data else None,
                            last_id=data[-1].id if data else None, has_more=page.has_more)

    async def delete(self, rid: str, user: Owner) -> ResponseDeleted:
        rec = await self._get(rid, user)
        authorize(self.policy, "delete", KIND, rid, rec.owner, user)
        await self.kv.delete(f"resp_in:{rid}")
        await self.records.delete(rid, user)
        await EventLog(self.kv, rid).rewind(0)
        return ResponseDeleted(id=rid)

    async def input_items(self, rid: str, user: Owner, *, after: str | None,
                          before: str | None, limit: int, order: str) -> InputItemList:
        if not 1 <= limit <= 100:
            raise InvalidRequestError("limit must be between 1 and 100", param="limit")
        await self._get(rid, user)
        rec = await self.kv.get(f"resp_in:{rid}")
        items: list[dict[str, Any]] = list(rec.value["items"]) if rec else []
        if order == "desc":
            items.reverse()
        ids = [i["id"] for i in items]
        for cursor, name in ((after, "after"), (before, "before")):
            if cursor is not None and cursor not in ids:
                raise InvalidRequestError(f"{name} {cursor!r} is not an item of this response",
                                          param=name)
        start = ids.index(after) + 1 if after else 0
        stop = ids.index(before) if before else len(items)
        window = items[start:stop]
        page = window[-limit:] if before and not after else window[:limit]
        has_more = len(window) > limit
        return InputItemList(data=page, first_id=page[0]["id"] if page else None,
                             last_id=page[-1]["id"] if page else None, has_more=has_more)

    async def cancel(self, rid: str, user: Owner) -> Response:
        rec = await self._get(rid, user)
        authorize(self.policy, "update", KIND, rid, rec.owner, user)
        response = rec.value["response"]
        if not response.get("background"):
            raise InvalidRequestError("only background responses can be cancelled",
                                      param="response_id")
        if response["status"] == "cancelled":
            return _view(response)
        if response["status"] in TERMINAL:
            raise ConflictError(f"response {rid!r} is {response['status']} and cannot be "
                                "cancelled", param="response_id", code="invalid_state")

        def cancelled(v: dict[str, Any]) -> dict[str, Any] | None:
            if v["response"]["status"] in TERMINAL:
                return None
            return {**v, "response": {**v["response"], "status": "cancelled"}}

        value = await mutate(self.kv, f"resp:{rid}", cancelled)
        if value is None:  # it finished meanwhile
            return await self.get(rid, user)
        return _view(value["response"])

    # --- background runs ------------------------------------------------------------------

    async def start(self) -> None:
        """Locally, jobs live in this process's memory: resume what a killed server left
        unfinished. (On AWS the queue keeps them and SQS redelivers.)"""
        if isinstance(self.jobs, LocalJobQueue):
            task = asyncio.create_task(self._resume_unfinished())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _resume_unfinished(self) -> None:
        cursor: str | None = None
        while True:
            page = await self.kv.list("resp:", limit=1000, after=cursor)
            for r in page.records:
                response = r.value["response"]
                if response["status"] not in ("queued", "in_progress"):
                    continue
                if response.get("background") and self.jobs is not None:
                    await self.jobs.submit("responses.run", {"response_id": response["id"],
                                                             "reclaim": True})
                elif not response.get("background"):
                    # A stream a killed server was running: it never ends now.
                    await mutate(self.kv, r.key, _stopped)
            if not page.has_more:
                return
            cursor = page.last_cursor

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def run_job(self, name: str, args: dict[str, Any]) -> None:
        if name != "run":
            raise InvalidRequestError(f"unknown responses job {name!r}")
        from fnstack.services.responses_background import run_background

        await run_background(self, str(args["response_id"]), bool(args.get("reclaim")))

    async def claim(self, rid: str, reclaim: bool) -> KVRecord | None:
        return await claim(self.kv, f"resp:{rid}", lease_s=LEASE_S, reclaim=reclaim, name=rid,
                           active=lambda v: v["response"]["status"] not in TERMINAL)


def _stopped(v: dict[str, Any]) -> dict[str, Any] | None:
    if v["response"]["status"] not in ("queued", "in_progress"):
        return None
    error = {"code": "server_error", "message": "the server stopped while the response ran"}
    return {**v, "response": {**v["response"], "status": "failed", "error": error}}


def _refuse_images(model: str, items: list[dict[str, Any]]) -> None:
    for i, item in enumerate(items):
        if item.get("type") != "message" or not isinstance(item.get("content"), list):
            continue
        for j, part in enumerate(item["content"]):
            if part.get("type") == "input_image":
                raise InvalidRequestError(
                    f"model {model!r} reads text only and cannot take image input; send text, "
                    "or use a model with vision", param=f"input[{i}].content[{j}]",
                    code="unsupported_value")


def _tool_choice(choice: str | dict[str, Any] | None, tools: list[dict[str, Any]]
                 ) -> str | dict[str, Any]:
    if choice is None:
        return "auto"
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequestError("tool_choice must be 'auto', 'none', 'required' or a "
                                      "tool object", param="tool_choice", code="invalid_value")
        if choice == "required" and not tools:
            raise InvalidRequestError("tool_choice 'required' needs at least one tool",
                                      param="tool_choice")
        return choice
    kind = choice.get("type")
    if kind == "function":
        names = [t["name"] for t in tools if t["type"] == "function"]
        if choice.get("name") not in names:
            raise InvalidRequestError(
                f"tool_choice names function {choice.get('name')!r}, which is not among the "
                "tools", param="tool_choice.name")
    elif kind == "allowed_tools":
        if choice.get("mode", "auto") not in ("auto", "required"):
            raise InvalidRequestError("tool_choice.mode must be 'auto' or 'required'",
                                      param="tool_choice.mode", code="invalid_value")
        allowed = choice.get("tools")
        if not isinstance(allowed, list) or not allowed:
            raise InvalidRequestError("tool_choice.tools must list at least one tool",
                                      param="tool_choice.tools")
        for n, want in enumerate(allowed):
            if not isinstance(want, dict) or not any(_matches(want, t) for t in tools):
                raise InvalidRequestError(
                    f"tool_choice.tools[{n}] names a tool that is not among the tools",
                    param=f"tool_choice.tools[{n}]")
    elif not any(t["type"] == kind or (kind == "web_search_preview" and
                                       t["type"].startswith("web_search")) for t in tools):
        raise InvalidRequestError(f"tool_choice {kind!r} names a tool type the request does "
                                  "not define", param="tool_choice")
    return choice


def _matches(want: dict[str, Any], tool: dict[str, Any]) -> bool:
    """Whether an ``allowed_tools`` entry names ``tool`` (by type, and name / label)."""
    if want.get("type") != tool["type"]:
        return False
    if tool["type"] == "function":
        return bool(want.get("name") == tool["name"])
    if tool["type"] == "mcp":
        return bool(want.get("server_label") == tool.get("server_label"))
    return True


def _view(value: dict[str, Any], include: list[str] | None = None) -> Response:
    shown = {k: v for k, v in value.items() if not k.startswith("_")}
    wanted = include if include is not None else value.get("_include")
    return Response.model_validate(public_view(shown, wanted))


async def _build(ctx: ServiceContext) -> Service:
    return ResponsesService(ctx)


def _router() -> APIRouter:
    from fnstack.routes.responses import router

    return router


spec = ServiceSpec(
    name="responses",
    apis=(Api.responses,),
    factory=_build,
    router=_router,
    depends=("inference", "models"),
    optional=OPTIONAL,
    stores=(StoreNeed(STORE),),
    description="responses: the agent loop (tools, file search, MCP), stored and streamed",
)
