"""A background response's run: the ``responses.run`` job.

Locally a task of the local job queue runs it, on AWS the SQS worker function: either
way the request that created the response has already answered. The run

1. claims the record (a lease, by conditional write: a second delivery while it is
   held is retried later; a redelivery after the lease expired resumes);
2. rewinds the event log to the checkpointed sequence number and resumes the loop at the
   checkpointed step (a fresh response starts at ``call_model``);
3. checkpoints after every step: the event log is flushed first, then output, usage,
   state and the next sequence number are written - unless the response was cancelled
   meanwhile, which stops the run without writing;
4. watches the record while it runs: ``cancelled`` stops the run at once, even mid
   model call;
5. past ``responses.run_budget_s`` (Lambda's timeout is 120 s) it re-enqueues itself
   and returns: the next delivery continues from the checkpoint.

The terminal event is in the log before the terminal status is in the record, so a
reader that sees the status has every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from fnstack.api.responses import TERMINAL
from fnstack.errors import FnstackError
from fnstack.records import mutate
from fnstack.services.responses_loop import Run
from fnstack.services.responses_stream import EventLog, Events

if TYPE_CHECKING:
    from fnstack.services.responses import ResponsesService

__all__ = ["run_background"]

log = logging.getLogger("fnstack.responses")

LEASE_S = 300.0
WATCH_S = 0.5


async def run_background(svc: ResponsesService, rid: str, reclaim: bool) -> None:
    rec = await svc.claim(rid, reclaim)
    if rec is None:
        return  # gone, finished or cancelled
    key = f"resp:{rid}"
    response: dict[str, Any] = rec.value["response"]
    state: dict[str, Any] = rec.value["state"]
    user = rec.owner
    inputs = await svc.kv.get(f"resp_in:{rid}")
    items: list[dict[str, Any]] = inputs.value["items"] if inputs else []
    conv = (response.get("conversation") or {}).get("id")
    log_ = EventLog(svc.kv, rid)
    await log_.rewind(int(state["seq"]))
    events = Events(start=int(state["seq"]))
    events.sinks.append(log_.add)

    async def write(run: Run) -> bool:
        """Persist the run's progress; False when the response was cancelled."""
        await log_.flush()
        run.state["seq"] = events.seq

        def change(v: dict[str, Any]) -> dict[str, Any] | None:
            if v["response"]["status"] in TERMINAL:
                return None
            return {**v, "response": run.response, "state": run.state,
                    "lease_until": time.time() + LEASE_S}

        return await mutate(svc.kv, key, change) is not None

    try:
        context = await svc._context(response.get("previous_response_id"), conv, user)
    except FnstackError as exc:
        context = None
        failure: FnstackError | None = exc
    else:
        failure = None
    run = svc._run(response, state, [*(context or []), *items], user, events,
                   checkpoint=write)
    if failure is not None:
        err = failure.to_dict()["error"]
        await run.fail(err["code"] or err["type"], err["message"])
        await log_.flush()
        await _final(svc, key, run)
        return

    task = asyncio.ensure_future(run.run(budget_s=svc.limits.run_budget_s))
    watcher = asyncio.ensure_future(_watch(svc, key, task))
    finished = False
    try:
        finished = await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        log.info("background response cancelled", extra={"response_id": rid})
        return
    except FnstackError as exc:
        err = exc.to_dict()["error"]
        await run.fail(err["code"] or err["type"], err["message"])
        await log_.flush()
        await _final(svc, key, run)
        return
    except Exception:
        log.exception("background response failed", extra={"response_id": rid})
        await run.fail("server_error", "the response failed")
        await log_.flush()
        await _final(svc, key, run)
        return
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if not finished:
        # Budget spent (the checkpoint is written) or cancelled: a cancelled one stays.
        current = await svc.kv.get(key)
        if current is not None and current.value["response"]["status"] not in TERMINAL \
                and svc.jobs is not None:
            await svc.jobs.submit("responses.run", {"response_id": rid, "reclaim": True})
        return
    await log_.flush()
    # The turn joins its conversation before the status says done: a client that sees
    # "completed" finds it there. (A worker dying between the two redoes the last step
    # on redelivery and appends that turn again: the price of never showing a finished
    # response whose turn is missing.)
    current = await svc.kv.get(key)
    if current is not None and current.value["response"]["status"] not in TERMINAL:
        await svc.append_turn(run.response, items, user)
    await _final(svc, key, run)


async def _final(svc: ResponsesService, key: str, run: Run) -> bool:
    def change(v: dict[str, Any]) -> dict[str, Any] | None:
        if v["response"]["status"] in TERMINAL:
            return None
        return {**v, "response": run.response, "state": run.state, "lease_until": 0}

    return await mutate(svc.kv, key, change) is not None


async def _watch(svc: ResponsesService, key: str, task: asyncio.Future[Any]) -> None:
    while not task.done():
        await asyncio.sleep(WATCH_S)
        rec = await svc.kv.get(key)
        if rec is None or rec.value["response"]["status"] == "cancelled":
            task.cancel()
            return
