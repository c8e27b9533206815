"""/v1/responses and its records against hostile and unlucky clients, in every mode.

What OpenAI documents (API reference, create a response) is the bar: a malformed field is
a 400 ``invalid_request_error`` naming it in ``param`` (never a 500, never silently
coerced: ``"yes"`` is not a boolean); ``max_output_tokens`` has a minimum of 1; a
``function_call_output`` answers a call of the chain or is a 400; ``tool_choice`` names a
tool of ``tools``; an image part goes to a model that reads images. Races (a client that
leaves mid-stream, a conversation deleted under a running response, a chain on a response
still running or deleted) end in a terminal state every reader can see, never a response
stuck ``in_progress``.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_inference import models_of
from tests.support.scripted_llm import MODEL as SCRIPTED

TERMINAL = ("completed", "failed", "incomplete", "cancelled")
WEATHER = {"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNg"
       "YGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==")


@pytest.fixture
def reference(api: LiveApi) -> str:
    """The bundled model; naming this fixture points ``http`` at where it answers (its
    own function when deployed)."""
    return models_of(api)["reference"]


def _error(r: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:500])
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" if status == 400 else err["type"], err
    if param is not None:
        assert err["param"] == param, err
    return dict(err)


def _leave_after_first_delta(http: httpx.Client, body: dict[str, Any]) -> str:
    """Stream ``body``, hang up after the first text delta; the response's id."""
    rid = None
    with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                rid = rid or event.get("response", {}).get("id")
                if event["type"] == "response.output_text.delta":
                    break
    assert rid is not None
    return str(rid)


def _settled(http: httpx.Client, rid: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/v1/responses/{rid}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in TERMINAL:
            return body
        assert time.monotonic() < deadline, f"{rid} still {body['status']} after {timeout} s"
        time.sleep(0.3)


# --- size and types -----------------------------------------------------------------------


def test_a_20_mb_body_is_refused_cleanly(http: httpx.Client) -> None:
    # OpenAI caps a string input at 10,485,760 characters (400, param "input"); a gateway
    # may refuse the body first (413). Either way: fast, OpenAI's error shape, no 500.
    body = json.dumps({"model": SCRIPTED, "input": "x" * (20 * 1024 * 1024)})
    started = time.monotonic()
    r = http.post("/v1/responses", content=body, headers={"content-type": "application/json"},
                  timeout=120)
    assert r.status_code in (400, 413), (r.status_code, r.text[:300])
    assert r.json()["error"]["message"]
    assert time.monotonic() - started < 60
    # The server is fine afterwards.
    ok = http.post("/v1/responses", json={"model": SCRIPTED, "input": "still here"})
    assert ok.status_code == 200 and ok.json()["output"][0]["content"][0]["text"] == (
        "ECHO: still here")


def test_many_items_adding_up_to_20_mb_are_refused_cleanly(http: httpx.Client) -> None:
    items = [{"role": "user", "content": "y" * 100_000} for _ in range(210)]
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": items}, timeout=120)
    assert r.status_code in (400, 413), (r.status_code, r.text[:300])


WRONG_TYPES = [
    ("input", 5), ("input", {"role": "user"}), ("model", 5), ("background", "yes"),
    ("conversation", 5), ("include", "file_search_call.results"), ("include", [5]),
    ("instructions", 5), ("instructions", ["a"]), ("max_output_tokens", "10"),
    ("max_output_tokens", 1.5), ("max_tool_calls", "3"), ("metadata", "x"),
    ("metadata", {"k": 1}), ("metadata", ["k"]), ("parallel_tool_calls", "no"),
    ("previous_response_id", 5), ("prompt", "pmpt_x"), ("prompt", 5), ("store", "nope"),
    ("stream", "nope"), ("temperature", "hot"), ("temperature", 3), ("text", "json"),
    ("text", {"format": "json"}), ("tool_choice", 5), ("tool_choice", ["auto"]),
    ("tool_choice", "sometimes"), ("tools", {"type": "function"}), ("tools", ["x"]),
    ("top_p", "x"), ("top_p", 0), ("truncation", "sometimes"), ("user", 5),
]


@pytest.mark.parametrize(("field", "value"), WRONG_TYPES,
                         ids=[f"{f}={json.dumps(v)}" for f, v in WRONG_TYPES])
def test_a_wrong_type_is_a_400_naming_the_field(http: httpx.Client, field: str,
                                                value: Any) -> None:
    body = {"model": SCRIPTED, "input": "x", field: value}
    r = http.post("/v1/responses", json=body)
    err = _error(r, 400)
    assert err["param"] == field or str(err["param"]).startswith(
        (f"{field}.", f"{field}[")), err


@pytest.mark.parametrize("body", [b"[]", b"\"x\"", b"{", b"null", b"{\"model\": \"scripted\""])
def test_a_body_that_is_not_a_json_object_is_a_400(http: httpx.Client, body: bytes) -> None:
    r = http.post("/v1/responses", content=body, headers={"content-type": "application/json"})
    _error(r, 400)


@pytest.mark.parametrize("value", [0, -1, -(2**63)])
@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_below_one_is_a_400(http: httpx.Client, value: int,
                                              stream: bool) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x", "stream": stream,
                                         "max_output_tokens": value})
    _error(r, 400, "max_output_tokens")


def test_max_tool_calls_below_one_is_a_400(http: httpx.Client) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                         "max_tool_calls": 0})
    _error(r, 400, "max_tool_calls")


# --- content the model cannot take -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_an_image_for_a_text_only_model_is_a_400(reference: str, http: httpx.Client,
                                                 stream: bool) -> None:
    # The bundled model reads text only: OpenAI answers a 400 for an image part sent to
    # a model without vision, before any generation (a stream never starts).
    r = http.post("/v1/responses", json={
        "model": reference, "stream": stream, "max_output_tokens": 4,
        "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "What is in this picture?"},
            {"type": "input_image", "image_url": PNG}]}]})
    err = _error(r, 400)
    assert str(err["param"]).startswith("input"), err


# --- tools and calls that do not match ------------------------------------------------------------


def test_a_function_call_output_for_no_call_of_the_chain_is_a_400(
    http: httpx.Client,
) -> None:
    first = http.post("/v1/responses", json={
        "model": SCRIPTED, "tools": [WEATHER],
        "input": 'w?\nCALL get_weather {"city": "Rome"}'}).json()
    assert first["output"][0]["type"] == "function_call"
    r = http.post("/v1/responses", json={
        "model": SCRIPTED, "tools": [WEATHER], "previous_response_id": first["id"],
        "input": [{"type": "function_call_output", "call_id": "call_matches_nothing",
                   "output": "sunny"}]})
    _error(r, 400, "input[0].call_id")


@pytest.mark.parametrize(("tools", "choice", "param"), [
    ([WEATHER], {"type": "function", "name": "get_time"}, "tool_choice.name"),
    ([WEATHER], {"type": "file_search"}, "tool_choice"),
    ([WEATHER], {"type": "web_search_preview"}, "tool_choice"),
    ([WEATHER], {"type": "mcp", "server_label": "nowhere"}, "tool_choice"),
    ([WEATHER], {"type": "allowed_tools", "mode": "auto",
                 "tools": [{"type": "function", "name": "get_time"}]}, "tool_choice"),
    ([WEATHER], {"type": "function"}, "tool_choice.name"),
])
def test_tool_choice_naming_a_tool_not_in_tools_is_a_400(
    http: httpx.Client, tools: list[Any], choice: dict[str, Any], param: str
) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x", "tools": tools,
                                         "tool_choice": choice})
    err = _error(r, 400)
    assert str(err["param"]).startswith(param), err


# --- races ------------------------------------------------------------------------------------


def test_a_stream_the_client_leaves_never_stays_in_progress(api: LiveApi,
                                                           http: httpx.Client) -> None:
    # Deltas a second apart; the client reads the first and hangs up.
    rid = _leave_after_first_delta(http, {
        "model": SCRIPTED, "input": "one two three four five six seven eight SLOW 1"})
    done = _settled(http, rid, timeout=30)
    assert done["status"] in TERMINAL


def test_the_bundled_model_stops_for_a_client_that_left(reference: str,
                                                        http: httpx.Client) -> None:
    # A long generation abandoned after its first delta: the engine stops (the stored
    # response settles within seconds, not after the whole budget) and serves the next.
    model = reference
    rid = _leave_after_first_delta(http, {
        "model": model, "max_output_tokens": 1500, "temperature": 0,
        "input": "Count from 1 to 2000, one number per line:"})
    done = _settled(http, rid, timeout=20)
    assert done["status"] in TERMINAL
    started = time.monotonic()
    nxt = http.post("/v1/responses", json={"model": model, "input": "Hi",
                                           "max_output_tokens": 2})
    assert nxt.status_code == 200 and time.monotonic() - started < 30


def test_chaining_on_a_response_still_in_progress(http: httpx.Client,
                                                  scripted_llm: Any) -> None:
    bg = http.post("/v1/responses", json={"model": SCRIPTED, "background": True,
                                          "input": "busy SLOW 4"}).json()
    assert bg["status"] in ("queued", "in_progress")
    # Its context does not exist yet: refused (400 naming previous_response_id), or the
    # new turn waits for it - never a chain silently missing the unfinished turn.
    seen = len(scripted_llm.requests)
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "next",
                                         "previous_response_id": bg["id"]})
    if r.status_code == 200:
        sent = [q for q in scripted_llm.requests[seen:]
                if "next" in json.dumps(q["messages"][-1:])]
        assert sent, "the chained turn never reached the model"
        assistant = [m for m in sent[0]["messages"] if m["role"] == "assistant"]
        assert "ECHO: busy SLOW 4" in json.dumps(assistant), (
            "chained on an unfinished response: the model never saw its answer")
    else:
        _error(r, 400, "previous_response_id")
    assert _settled(http, bg["id"])["status"] == "completed"
    ok = http.post("/v1/responses", json={"model": SCRIPTED, "input": "next",
                                          "previous_response_id": bg["id"]})
    assert ok.status_code == 200, ok.text
    assert ok.json()["output"][0]["content"][0]["text"] == "ECHO: next"


def test_deleting_a_response_a_later_one_references(http: httpx.Client) -> None:
    a = http.post("/v1/responses", json={"model": SCRIPTED, "input": "turn one"}).json()
    b = http.post("/v1/responses", json={"model": SCRIPTED, "input": "turn two",
                                         "previous_response_id": a["id"]}).json()
    assert http.delete(f"/v1/responses/{a['id']}").json()["deleted"] is True
    assert http.get(f"/v1/responses/{a['id']}").status_code == 404
    assert http.get(f"/v1/responses/{a['id']}/input_items").status_code == 404
    _error(http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                            "previous_response_id": a["id"]}),
           404, "previous_response_id")
    # The later response stands on its own: readable, its items intact.
    got = http.get(f"/v1/responses/{b['id']}")
    assert got.status_code == 200 and got.json()["previous_response_id"] == a["id"]
    items = http.get(f"/v1/responses/{b['id']}/input_items").json()["data"]
    assert [i["content"][0]["text"] for i in items] == ["turn two"]
    # Continuing from it works or is a clean 404; never a 500.
    c = http.post("/v1/responses", json={"model": SCRIPTED, "input": "turn three",
                                         "previous_response_id": b["id"]})
    assert c.status_code in (200, 404), c.text
    if c.status_code == 404:
        assert c.json()["error"]["param"] == "previous_response_id"
    # Deleting twice is a 404.
    assert http.delete(f"/v1/responses/{a['id']}").status_code == 404


def test_a_conversation_deleted_under_a_background_response(http: httpx.Client) -> None:
    conv = http.post("/v1/conversations", json={}).json()["id"]
    bg = http.post("/v1/responses", json={"model": SCRIPTED, "background": True,
                                          "conversation": conv,
                                          "input": "into the void SLOW 3"}).json()
    assert http.delete(f"/v1/conversations/{conv}").json()["deleted"] is True
    done = _settled(http, bg["id"])
    assert done["status"] in ("completed", "failed"), done
    # The conversation stays deleted: the late append neither resurrects it nor its items.
    assert http.get(f"/v1/conversations/{conv}").status_code == 404
    assert http.get(f"/v1/conversations/{conv}/items").status_code == 404
    _error(http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                            "conversation": conv}), 404, "conversation")


def test_a_conversation_deleted_under_a_stream(http: httpx.Client, api: LiveApi) -> None:
    conv = http.post("/v1/conversations", json={}).json()["id"]
    kinds: list[str] = []
    with httpx.Client(base_url=str(http.base_url), headers=dict(http.headers),
                      timeout=60) as other, http.stream("POST", "/v1/responses", json={
            "model": SCRIPTED, "stream": True, "conversation": conv,
            "input": "streaming into the void SLOW 1"}) as r:
        assert r.status_code == 200
        deleter: threading.Thread | None = None
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                kinds.append(event["type"])
                if deleter is None and event["type"] == "response.output_text.delta":
                    deleter = threading.Thread(
                        target=lambda: other.delete(f"/v1/conversations/{conv}"))
                    deleter.start()
        assert deleter is not None
        deleter.join()
    # The stream ends with a terminal event, never cut without one.
    assert kinds[-1] in ("response.completed", "response.failed", "response.incomplete",
                         "error"), kinds[-3:]
    assert http.get(f"/v1/conversations/{conv}").status_code == 404
    assert http.get(f"/v1/conversations/{conv}/items").status_code == 404


def test_cancelling_a_finished_or_foreground_response(http: httpx.Client,
                                                      client: openai.OpenAI) -> None:
    # OpenAI: only background responses can be cancelled (400); a finished one stays.
    r = client.responses.create(model=SCRIPTED, input="done already")
    c = http.post(f"/v1/responses/{r.id}/cancel")
    assert c.status_code == 400, c.text
    assert client.responses.retrieve(r.id).status == "completed"
    assert http.post("/v1/responses/resp_nope/cancel").status_code == 404


def test_retrieve_stream_of_a_foreground_response_is_a_400(http: httpx.Client) -> None:
    # Re-streaming is for background responses (OpenAI: 400), and a bad cursor is a 400.
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "fg"}).json()
    s = http.get(f"/v1/responses/{r['id']}", params={"stream": "true"})
    assert s.status_code == 400, s.text
    bg = http.post("/v1/responses", json={"model": SCRIPTED, "input": "bg",
                                          "background": True}).json()
    for bad in ("abc", "1.5"):
        got = http.get(f"/v1/responses/{bg['id']}", params={"stream": "true",
                                                            "starting_after": bad})
        assert got.status_code == 400, (bad, got.status_code, got.text[:200])


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 101}, {"limit": "x"},
                                    {"order": "sideways"}, {"after": "msg_nope"}])
def test_bad_input_items_listing_is_a_400_or_empty(http: httpx.Client,
                                                    params: dict[str, Any]) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "list me"}).json()
    got = http.get(f"/v1/responses/{r['id']}/input_items", params=params)
    if "after" in params:
        # An unknown cursor: OpenAI answers an empty page or a 400; never a 500.
        assert got.status_code in (200, 400, 404), got.text
    else:
        assert got.status_code == 400, (params, got.status_code, got.text[:200])


# --- odd text and limits ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["nul \u0000 inside", "lone \ud800 surrogate", "\ufeffbom",
                                  "rtl \u202e txet", "emoji \U0001f600 and cjk \u4e2d"])
def test_odd_text_round_trips_or_is_a_400(http: httpx.Client, text: str) -> None:
    # JSON allows every one of these; storing one must not turn into a 500.
    body = json.dumps({"model": SCRIPTED, "input": text, "metadata": {"k": text}})
    r = http.post("/v1/responses", content=body, headers={"content-type": "application/json"})
    if r.status_code == 400:
        assert r.json()["error"]["param"] in ("input", "metadata", "metadata.k")
        return
    assert r.status_code == 200, (r.status_code, r.text[:300])
    rid = r.json()["id"]
    got = http.get(f"/v1/responses/{rid}")
    assert got.status_code == 200 and got.json()["id"] == rid
    items = http.get(f"/v1/responses/{rid}/input_items")
    assert items.status_code == 200, items.text[:300]


@pytest.mark.parametrize("metadata", [
    {f"k{i}": "v" for i in range(17)},  # OpenAI: at most 16 pairs
    {"k" * 65: "v"},                    # keys at most 64 characters
    {"k": "v" * 513},                   # values at most 512 characters
])
def test_metadata_over_openai_limits_is_a_400(http: httpx.Client,
                                             metadata: dict[str, str]) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                         "metadata": metadata})
    err = _error(r, 400)
    assert str(err["param"]).startswith("metadata"), err


@pytest.mark.parametrize(("fmt", "param"), [
    ({"type": "json_schema", "name": "has space", "schema": {"type": "object"}},
     "text.format.name"),
    ({"type": "json_schema", "name": "x" * 65, "schema": {"type": "object"}},
     "text.format.name"),
    ({"type": "json_schema", "name": "ok", "schema": "object"}, "text.format.schema"),
    ({"type": "json_schema", "schema": {"type": "object"}}, "text.format.name"),
    ({"type": "yaml"}, "text.format.type"),
])
def test_bad_text_formats_are_400(http: httpx.Client, fmt: dict[str, Any], param: str) -> None:
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                         "text": {"format": fmt}})
    err = _error(r, 400)
    assert str(err["param"]).startswith(param.rsplit(".", 1)[0]), err


# --- background: a dropped connection resumes; cancel is idempotent ---------------------


def test_a_background_stream_survives_its_client(http: httpx.Client) -> None:
    # OpenAI's background mode: a dropped stream loses nothing - the response keeps
    # running and the client resumes with starting_after from the last number it saw.
    seen: list[dict[str, Any]] = []
    with http.stream("POST", "/v1/responses", json={
            "model": SCRIPTED, "stream": True, "background": True,
            "input": "keep going SLOW 1"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if len(seen) == 2:
                    break
    rid = seen[0]["response"]["id"]
    assert _settled(http, rid)["status"] == "completed"
    rest = []
    with http.stream("GET", f"/v1/responses/{rid}", params={
            "stream": "true", "starting_after": seen[-1]["sequence_number"]}) as r:
        assert r.status_code == 200
        rest = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    numbers = [e["sequence_number"] for e in seen + rest]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert rest[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in seen + rest if e["type"] == "response.output_text.delta")
    assert text == "ECHO: keep going SLOW 1"


def test_cancel_twice_is_idempotent(http: httpx.Client) -> None:
    # OpenAI: cancelling again returns the final response (200), no error.
    bg = http.post("/v1/responses", json={"model": SCRIPTED, "background": True,
                                          "input": "cancel me SLOW 5"}).json()
    first = http.post(f"/v1/responses/{bg['id']}/cancel")
    assert first.status_code == 200 and first.json()["status"] == "cancelled", first.text
    again = http.post(f"/v1/responses/{bg['id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled", again.text
    time.sleep(6)  # past the upstream's delay: the run must not overwrite the cancel
    assert http.get(f"/v1/responses/{bg['id']}").json()["status"] == "cancelled"


def test_a_conversation_deleted_under_a_plain_response(http: httpx.Client) -> None:
    conv = http.post("/v1/conversations", json={}).json()["id"]
    with httpx.Client(base_url=str(http.base_url), headers=dict(http.headers),
                      timeout=60) as other:
        timer = threading.Timer(0.8, lambda: other.delete(f"/v1/conversations/{conv}"))
        timer.start()
        r = http.post("/v1/responses", json={"model": SCRIPTED, "conversation": conv,
                                             "input": "plain into the void SLOW 2"})
        timer.join()
    # Either the response settled and is readable, or a clean 404 naming the
    # conversation; the conversation stays deleted either way.
    if r.status_code == 200:
        assert r.json()["status"] in TERMINAL
        assert http.get(f"/v1/responses/{r.json()['id']}").status_code == 200
    else:
        _error(r, 404, "conversation")
    assert http.get(f"/v1/conversations/{conv}/items").status_code == 404


# --- what reaches the model ----------------------------------------------------------


def _upstream_after(scripted_llm: Any, seen: int, marker: str) -> dict[str, Any]:
    sent = [q for q in scripted_llm.requests[seen:] if marker in json.dumps(q["messages"])]
    assert sent, f"no upstream request carried {marker!r}"
    return dict(sent[0])


@pytest.mark.parametrize(("n", "choice", "upstream"), [
    (1, "none", "none"), (2, "required", "required"),
    (3, {"type": "function", "name": "get_weather"},
     {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice_reaches_the_model(http: httpx.Client, scripted_llm: Any, n: int,
                                       choice: Any, upstream: Any) -> None:
    marker = f"choice-{n}-{time.monotonic_ns()}"
    seen = len(scripted_llm.requests)
    r = http.post("/v1/responses", json={"model": SCRIPTED, "input": marker,
                                         "tools": [WEATHER], "tool_choice": choice})
    assert r.status_code == 200, r.text
    sent = _upstream_after(scripted_llm, seen, marker)
    # "none" may also be honoured by sending no tools at all.
    assert sent.get("tool_choice") == upstream or (choice == "none" and not sent.get("tools"))


def test_parallel_tool_calls_false_reaches_the_model(http: httpx.Client,
                                                     scripted_llm: Any) -> None:
    seen = len(scripted_llm.requests)
    r = http.post("/v1/responses", json={
        "model": SCRIPTED, "tools": [WEATHER], "parallel_tool_calls": False,
        "input": 'serial\nCALL get_weather {"city": "A"}\nCALL get_weather {"city": "B"}'})
    assert r.status_code == 200, r.text
    sent = _upstream_after(scripted_llm, seen, "serial")
    # OpenAI: at most one tool call per turn. The model is told; if it still answers two,
    # the response hands back at most one.
    calls = [i for i in r.json()["output"] if i["type"] == "function_call"]
    assert sent.get("parallel_tool_calls") is False or len(calls) <= 1, (sent, calls)
    assert len(calls) <= 1, calls


def test_max_output_tokens_cut_is_incomplete(reference: str, http: httpx.Client) -> None:
    # OpenAI: the budget reached is status "incomplete", reason "max_output_tokens".
    r = http.post("/v1/responses", json={"model": reference,
                                         "input": "Count from 1 to 100.",
                                         "max_output_tokens": 1, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "incomplete", body
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 1


def _over_the_window() -> list[dict[str, Any]]:
    filler = "lorem ipsum dolor sit amet " * 700  # ~3,500 tokens a message
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} {filler}"}
            for i in range(8)] + [{"role": "user", "content": "Say hi."}]


def test_input_over_the_context_window_is_a_400(reference: str, http: httpx.Client) -> None:
    # OpenAI: with truncation "disabled" (the default) an input over the model's context
    # window is a 400 (code context_length_exceeded), before any generation.
    started = time.monotonic()
    r = http.post("/v1/responses", json={"model": reference, "input": _over_the_window(),
                                         "max_output_tokens": 2})
    err = _error(r, 400, "input")  # a Responses request has no "messages"
    assert err["code"] == "context_length_exceeded", err
    assert time.monotonic() - started < 60


def test_truncation_auto_fits_the_context_window(reference: str, http: httpx.Client) -> None:
    # OpenAI: "auto" drops input items from the start of the conversation to fit.
    r = http.post("/v1/responses", json={"model": reference, "input": _over_the_window(),
                                         "max_output_tokens": 2, "truncation": "auto"})
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.json()["status"] in ("completed", "incomplete")
    assert r.json()["truncation"] == "auto"


# --- deletes that race the run ----------------------------------------------------------------


def test_a_background_response_deleted_while_running_stays_deleted(
    http: httpx.Client,
) -> None:
    bg = http.post("/v1/responses", json={"model": SCRIPTED, "background": True,
                                          "input": "delete me SLOW 2"}).json()
    d = http.delete(f"/v1/responses/{bg['id']}")
    assert d.status_code == 200 and d.json()["deleted"] is True, d.text
    time.sleep(5)  # past the run's end: its last save must not bring the record back
    assert http.get(f"/v1/responses/{bg['id']}").status_code == 404
    assert http.get(f"/v1/responses/{bg['id']}/input_items").status_code == 404


def test_a_streamed_response_deleted_mid_stream_stays_deleted(http: httpx.Client) -> None:
    rid = None
    kinds: list[str] = []
    with httpx.Client(base_url=str(http.base_url), headers=dict(http.headers),
                      timeout=60) as other, http.stream("POST", "/v1/responses", json={
            "model": SCRIPTED, "stream": True, "input": "vanish SLOW 1"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                kinds.append(event["type"])
                if rid is None and "response" in event:
                    rid = event["response"]["id"]
                    got = other.delete(f"/v1/responses/{rid}")
                    # Stored from its first event on (or not yet): deleted, or a 404.
                    assert got.status_code in (200, 404), got.text
    assert rid is not None and kinds[-1] == "response.completed", kinds[-3:]
    time.sleep(1)
    after = http.get(f"/v1/responses/{rid}")
    if got.status_code == 200:
        assert after.status_code == 404, "a deleted response came back when its run ended"


def test_store_false_is_never_readable(http: httpx.Client) -> None:
    for stream in (False, True):
        r = http.post("/v1/responses", json={"model": SCRIPTED, "input": "ephemeral",
                                             "store": False, "stream": stream})
        assert r.status_code == 200, r.text
        if stream:
            first = next(line for line in r.text.splitlines() if line.startswith("data: "))
            rid = json.loads(first[6:])["response"]["id"]
        else:
            rid = r.json()["id"]
            assert r.json()["store"] is False
        assert http.get(f"/v1/responses/{rid}").status_code == 404
        assert http.get(f"/v1/responses/{rid}/input_items").status_code == 404
        _error(http.post("/v1/responses", json={"model": SCRIPTED, "input": "x",
                                                "previous_response_id": rid}),
               404, "previous_response_id")


def test_concurrent_responses_in_one_conversation_append_whole_turns(
    http: httpx.Client,
) -> None:
    conv = http.post("/v1/conversations", json={}).json()["id"]
    results: dict[int, int] = {}

    def turn(n: int) -> None:
        with httpx.Client(base_url=str(http.base_url), headers=dict(http.headers),
                          timeout=120) as c:
            results[n] = c.post("/v1/responses", json={
                "model": SCRIPTED, "conversation": conv,
                "input": f"turn {n} SLOW 0.3"}).status_code

    threads = [threading.Thread(target=turn, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results.values()) == {200}, results
    items = http.get(f"/v1/conversations/{conv}/items",
                     params={"order": "asc", "limit": 100}).json()["data"]
    texts = [i["content"][0]["text"] for i in items]
    assert len(texts) == 8, texts
    # Each turn's input and output sit together: the user's message, then its answer.
    for k in range(0, 8, 2):
        assert texts[k + 1] == f"ECHO: {texts[k]}", texts
    assert sorted(texts[::2]) == [f"turn {n} SLOW 0.3" for n in range(4)]


# --- guardrails (Llama Stack's extension, sent by llama-stack-client) -------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_guardrails_are_enforced_or_refused_never_ignored(http: httpx.Client,
                                                         scripted_llm: Any,
                                                         stream: bool) -> None:
    # llama-stack-client sends `guardrails: [shield ids]`; fnstack's chat completions honour
    # it. Silently ignoring it on a response would send and store what the caller asked
    # to keep out: it is a refusal (Llama Stack: an output message with a refusal part),
    # or a 400 naming guardrails - never the card reaching the model.
    card = "4111 1111 1111 1111"
    seen = len(scripted_llm.requests)
    r = http.post("/v1/responses", json={
        "model": SCRIPTED, "stream": stream, "guardrails": ["pii"],
        "input": f"My card is {card}, remember it."})
    leaked = [q for q in scripted_llm.requests[seen:] if card in json.dumps(q)]
    assert not leaked, "the guarded input reached the model"
    if r.status_code == 400:
        assert str(r.json()["error"]["param"]).startswith("guardrails")
        return
    assert r.status_code == 200, r.text[:300]
    if stream:
        events = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ")]
        body = events[-1]["response"]
    else:
        body = r.json()
    parts = [p for item in body["output"] if item["type"] == "message"
             for p in item["content"]]
    assert any(p["type"] == "refusal" for p in parts), body["output"]
    assert card not in json.dumps(body["output"])
