"""Prompts (Llama Stack's /v1/prompts) over HTTP, every mode: versions, the default
version, lost-update protection, variable rules, and tenancy (another principal's
prompt is a 404)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.api.conftest import LiveApi
from tests.api.test_tenancy import Tenant, tenant_pair
from tests.support.lsc_client import run_lsc

PROMPT_ID = re.compile(r"pmpt_[0-9a-f]{48}")


@pytest.fixture(scope="module")
def pair(api: LiveApi) -> Iterator[tuple[Tenant, Tenant]]:
    yield from tenant_pair(api, "pmpt")


def _create(http: httpx.Client, text: str, variables: list[str]) -> dict:
    r = http.post("/v1/prompts", json={"prompt": text, "variables": variables})
    assert r.status_code == 200, r.text
    return r.json()


def test_create_retrieve_versions_default_delete(http: httpx.Client) -> None:
    p1 = _create(http, "Hello {{ name }}, welcome to {{place}}.", ["name", "place"])
    pid = p1["prompt_id"]
    assert PROMPT_ID.fullmatch(pid)
    assert p1 == {"prompt_id": pid, "version": 1, "is_default": True,
                  "prompt": "Hello {{ name }}, welcome to {{place}}.",
                  "variables": ["name", "place"]}
    assert http.get(f"/v1/prompts/{pid}").json() == p1

    # An update makes version 2, the default unless told otherwise; variables carry over.
    r = http.put(f"/v1/prompts/{pid}", json={"prompt": "Hi {{name}} at {{place}}!",
                                             "version": 1})
    assert r.status_code == 200, r.text
    p2 = r.json()
    assert p2["version"] == 2 and p2["is_default"] and p2["variables"] == ["name", "place"]
    # POST works too (older Llama Stack clients); set_as_default false keeps version 2.
    r = http.post(f"/v1/prompts/{pid}", json={"prompt": "Yo {{name}}", "version": 2,
                                              "variables": ["name"], "set_as_default": False})
    assert r.status_code == 200, r.text
    p3 = r.json()
    assert p3["version"] == 3 and not p3["is_default"] and p3["variables"] == ["name"]

    assert http.get(f"/v1/prompts/{pid}").json()["version"] == 2
    got1 = http.get(f"/v1/prompts/{pid}", params={"version": 1}).json()
    assert got1["prompt"] == p1["prompt"] and got1["is_default"] is False
    assert http.get(f"/v1/prompts/{pid}", params={"version": 3}).json()["prompt"] == "Yo {{name}}"

    versions = http.get(f"/v1/prompts/{pid}/versions").json()["data"]
    assert [(v["version"], v["is_default"]) for v in versions] == [
        (1, False), (2, True), (3, False)]

    r = http.put(f"/v1/prompts/{pid}/set-default-version", json={"version": 1})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["is_default"]
    assert http.get(f"/v1/prompts/{pid}").json()["prompt"] == p1["prompt"]
    listed = {p["prompt_id"]: p for p in http.get("/v1/prompts").json()["data"]}
    assert listed[pid]["version"] == 1 and listed[pid]["is_default"]
    # The latest is still 3: an update must start from it.
    r = http.put(f"/v1/prompts/{pid}", json={"prompt": "x", "version": 3, "variables": []})
    assert r.status_code == 200 and r.json()["version"] == 4

    r = http.delete(f"/v1/prompts/{pid}")
    assert r.status_code == 204, r.text
    assert http.get(f"/v1/prompts/{pid}").status_code == 404
    assert http.get(f"/v1/prompts/{pid}", params={"version": 2}).status_code == 404
    assert http.get(f"/v1/prompts/{pid}/versions").status_code == 404
    assert pid not in {p["prompt_id"] for p in http.get("/v1/prompts").json()["data"]}
    assert http.delete(f"/v1/prompts/{pid}").status_code == 404


def test_a_stale_update_is_a_conflict(http: httpx.Client) -> None:
    pid = _create(http, "v1", [])["prompt_id"]
    assert http.put(f"/v1/prompts/{pid}", json={"prompt": "v2 by A", "version": 1}
                    ).status_code == 200
    # B edited version 1 too: its update would silently overwrite A's.
    r = http.put(f"/v1/prompts/{pid}", json={"prompt": "v2 by B", "version": 1})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["param"] == "version"
    assert r.json()["error"]["code"] == "version_conflict"
    # A version that never existed is a plain bad request.
    for bad in (7, 0, -1):
        r = http.put(f"/v1/prompts/{pid}", json={"prompt": "x", "version": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "version", r.text
    assert [v["prompt"] for v in http.get(f"/v1/prompts/{pid}/versions").json()["data"]] == [
        "v1", "v2 by A"]


def test_concurrent_updates_make_exactly_one_new_version(api: LiveApi) -> None:
    with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=120,
                      headers=api.headers) as http:
        pid = _create(http, "base", [])["prompt_id"]

        def edit(n: int) -> int:
            with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=120,
                              headers=api.headers) as c:
                return c.put(f"/v1/prompts/{pid}",
                             json={"prompt": f"edit {n}", "version": 1}).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(edit, range(8)))
        assert codes.count(200) == 1 and codes.count(409) == 7, codes
        versions = http.get(f"/v1/prompts/{pid}/versions").json()["data"]
        assert [v["version"] for v in versions] == [1, 2]
        winner = f"edit {codes.index(200)}"
        assert versions[1]["prompt"] == winner
        assert http.get(f"/v1/prompts/{pid}").json()["prompt"] == winner


def test_variable_rules(http: httpx.Client) -> None:
    cases = [
        ({"prompt": "Hi {{ name }}", "variables": []}, "variables"),
        ({"prompt": "Hi {{ name }}"}, "variables"),
        ({"prompt": "Hi {{ name }} {{ city }}", "variables": ["name"]}, "variables"),
        ({"prompt": "Hi {{ 1st }}", "variables": ["1st"]}, "variables[0]"),
        ({"prompt": "Hi {{ a b }}", "variables": ["a"]}, "prompt"),
        ({"prompt": "Hi {{}}", "variables": []}, "prompt"),
        ({"prompt": "Hi", "variables": ["x", "x"]}, "variables[1]"),
        ({"prompt": "   ", "variables": []}, "prompt"),
        ({"variables": []}, "prompt"),
        ({"prompt": "Hi", "variables": "name"}, "variables"),
        ({"prompt": "é" * 50_001, "variables": []}, "prompt"),  # 100,002 bytes of UTF-8
    ]
    for body, param in cases:
        r = http.post("/v1/prompts", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param, (body, r.json())
    undeclared = http.post("/v1/prompts", json={"prompt": "{{a}}{{b}}", "variables": ["a"]})
    assert "b" in undeclared.json()["error"]["message"]
    # Declared but unused is fine; so is single-brace text.
    ok = _create(http, "Literal {braces} and {{ used }}", ["used", "spare"])
    # An update is held to the same rules (its variables default to the previous ones).
    pid = ok["prompt_id"]
    r = http.put(f"/v1/prompts/{pid}", json={"prompt": "{{ other }}", "version": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "variables", r.text
    assert http.get(f"/v1/prompts/{pid}/versions").json()["data"][-1]["version"] == 1


def test_unknown_prompts_and_versions_are_404(http: httpx.Client) -> None:
    missing = "pmpt_" + "0" * 48
    assert http.get(f"/v1/prompts/{missing}").status_code == 404
    assert http.get("/v1/prompts/nope").status_code == 404
    assert http.put(f"/v1/prompts/{missing}", json={"prompt": "x", "version": 1}
                    ).status_code == 404
    assert http.put(f"/v1/prompts/{missing}/set-default-version", json={"version": 1}
                    ).status_code == 404
    assert http.get(f"/v1/prompts/{missing}/versions").status_code == 404
    assert http.delete(f"/v1/prompts/{missing}").status_code == 404
    pid = _create(http, "x", [])["prompt_id"]
    r = http.get(f"/v1/prompts/{pid}", params={"version": 5})
    assert r.status_code == 404 and r.json()["error"]["param"] == "version"
    assert http.get(f"/v1/prompts/{pid}", params={"version": 0}).status_code == 400
    r = http.put(f"/v1/prompts/{pid}/set-default-version", json={"version": 2})
    assert r.status_code == 404 and r.json()["error"]["param"] == "version"


def test_another_principals_prompt_is_a_404(pair: tuple[Tenant, Tenant]) -> None:
    alice, bob = pair
    pid = _create(alice.http, "alice's {{ secret }}", ["secret"])["prompt_id"]
    assert bob.http.get(f"/v1/prompts/{pid}").status_code == 404
    assert bob.http.get(f"/v1/prompts/{pid}", params={"version": 1}).status_code == 404
    assert bob.http.get(f"/v1/prompts/{pid}/versions").status_code == 404
    assert bob.http.put(f"/v1/prompts/{pid}", json={
        "prompt": "bob's", "version": 1, "variables": []}).status_code == 404
    assert bob.http.put(f"/v1/prompts/{pid}/set-default-version",
                        json={"version": 1}).status_code == 404
    assert bob.http.delete(f"/v1/prompts/{pid}").status_code == 404
    assert pid not in {p["prompt_id"] for p in bob.http.get("/v1/prompts").json()["data"]}
    # Alice's prompt is untouched and listed for her.
    got = alice.http.get(f"/v1/prompts/{pid}").json()
    assert got["prompt"] == "alice's {{ secret }}" and got["version"] == 1
    assert pid in {p["prompt_id"] for p in alice.http.get("/v1/prompts").json()["data"]}


# llama-stack-client (on Python 3.12, in .venv-lsc: see test_llama_stack_client.py) drives
# every prompts call it has; the script prints one JSON line of what came back.
LSC_SCRIPT = r"""
import json, sys
from llama_stack_client import LlamaStackClient
c = LlamaStackClient(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
p = c.prompts.create(prompt="Dear {{ name }}", variables=["name"])
u = c.prompts.update(p.prompt_id, prompt="Hello {{ name }}", version=1, set_as_default=False)
d = c.prompts.set_default_version(p.prompt_id, version=2)
out = {
    "created": p.model_dump(), "updated": u.model_dump(), "default": d.model_dump(),
    "retrieved_v1": c.prompts.retrieve(p.prompt_id, version=1).model_dump(),
    "retrieved": c.prompts.retrieve(p.prompt_id).model_dump(),
    "versions": [v.version for v in c.prompts.versions.list(p.prompt_id)],
    "listed": p.prompt_id in [x.prompt_id for x in c.prompts.list()],
}
c.prompts.delete(p.prompt_id)
try:
    c.prompts.retrieve(p.prompt_id)
    out["after_delete"] = "found"
except Exception as exc:
    out["after_delete"] = type(exc).__name__
print(json.dumps(out))
"""


def test_llama_stack_client_prompts(api: LiveApi) -> None:
    out = run_lsc("-c", LSC_SCRIPT, api.base_url.removesuffix("/v1"), api.key)
    assert PROMPT_ID.fullmatch(out["created"]["prompt_id"])
    assert out["created"]["version"] == 1 and out["created"]["variables"] == ["name"]
    assert out["updated"]["version"] == 2 and out["updated"]["is_default"] is False
    assert out["default"]["version"] == 2 and out["default"]["is_default"] is True
    assert out["retrieved_v1"]["prompt"] == "Dear {{ name }}"
    assert out["retrieved"]["prompt"] == "Hello {{ name }}"
    assert out["versions"] == [1, 2] and out["listed"] is True
    assert out["after_delete"] == "NotFoundError"
