"""The API test suite runs unchanged against every execution mode.

``--mode local`` (default ``all``) serves the ``local`` distribution with ``fnstack run``
(SQLite + a folder); the ``gateway`` mode serves the ``aws`` distribution through the
emulated API Gateway on moto-emulated DynamoDB/S3/SQS created from template.yaml.
Tests get ``api`` (a live server: base_url + mode + the admin key), ``client`` (the
official openai SDK) and ``http`` (httpx, for calls the SDK does not have), both
authenticated as the admin.

Both modes run with API-key authentication on, as the ``aws`` distribution does by
default: the operator's bootstrap admin key comes from ``FNSTACK_ADMIN_KEY``, and the
tenancy tests create ordinary principals' keys with it through ``POST /v1/keys``.

One real llama.cpp server (SmolLM2 GGUF) starts first, for the whole session, and every
mode gets its URL as ``FNSTACK_OPENAI_BASE_URL``: the ``remote::openai`` provider
``openai`` then serves its model next to the inline ones. A rule-based scripted upstream
(tests/support/scripted_llm.py, model ``scripted``) is the second ``remote::openai``
provider ``vllm`` (``FNSTACK_VLLM_BASE_URL``): the agent tests' reliable tool caller.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.fake_search import TAVILY_KEY, FakeSearch
from tests.support.llamacpp import LlamaCppServer
from tests.support.mcp_server import McpTestServer
from tests.support.scripted_llm import ScriptedLLM
from tests.support.servers import FnstackServer

MODES = ("local", "gateway")

# The operator's bootstrap admin key for this session's servers (not a stored key).
ADMIN_KEY = f"fns-admin-{secrets.token_urlsafe(24)}"
AUTH_ENV = {"FNSTACK_AUTH": "api_keys", "FNSTACK_ADMIN_KEY": ADMIN_KEY}


@dataclass(frozen=True)
class LiveApi:
    mode: str
    base_url: str
    key: str = ADMIN_KEY
    # Where the bundled model (provider ``reference``, torch) answers. Deployed, it lives
    # in the container-image function under /image/v1 of the same API (the ImageApiUrl
    # output): the zip functions behind /v1 carry no torch. Locally: ``base_url``.
    reference_url: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def url_for(self, request: pytest.FixtureRequest) -> str:
        """The base URL serving the test's models: a test of the bundled model (it uses
        the ``reference`` fixture, or a parameter naming it) talks to its function."""
        params = getattr(request.node, "callspec", None)
        on_reference = "reference" in request.fixturenames or (
            params is not None and "reference" in params.params.values())
        return self.reference_url if on_reference and self.reference_url else self.base_url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "api" in metafunc.fixturenames:
        modes = metafunc.config.getoption("--mode") or list(MODES)
        # `@pytest.mark.modes("gateway")`: a behaviour only one mode has (an S3 trigger,
        # an SQS redelivery) is generated for that mode only, never skipped in the other.
        marker = metafunc.definition.get_closest_marker("modes")
        if marker is not None:
            modes = [m for m in modes if m in marker.args]
        metafunc.parametrize("api", modes, indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A mode-only test under `--mode` of the other mode has no parameters left: it is
    # deselected (not run, and not reported as a skip), as `-k` would.
    dropped = [item for item in items
               if item.get_closest_marker("modes") is not None
               and getattr(getattr(item, "callspec", None), "params", {}).get("api")
               not in MODES]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(scope="session")
def llamacpp() -> Iterator[LlamaCppServer]:
    """The real OpenAI-compatible upstream behind ``remote::openai`` in every mode."""
    with LlamaCppServer() as server:
        yield server


def _local(tmp: Path, upstream: dict[str, str]) -> Iterator[LiveApi]:
    env = {"FNSTACK_HOME": str(tmp / "home"), **AUTH_ENV, **upstream}
    with FnstackServer(["run", "local"], env=env, log_path=tmp / "server.log") as server:
        yield LiveApi("local", server.base_url)


def _gateway(tmp: Path, upstream: dict[str, str]) -> Iterator[LiveApi]:
    from tests.support.gateway import IMAGE_PREFIX, emulated_gateway

    # The template sets FNSTACK_OPENAI_BASE_URL on every function (from a parameter):
    # only the gateway's --env overrides what a function sees.
    overrides = [arg for name, value in {**AUTH_ENV, **upstream}.items()
                 for arg in ("--env", f"{name}={value}")]
    with emulated_gateway(tmp, args=overrides) as base_url:
        # The development mode (FNSTACK_TEST_GATEWAY_BUILT=0) serves it under /v1 too.
        image = base_url.removesuffix("/v1") + IMAGE_PREFIX + "/v1"
        reachable = httpx.get(f"{image}/health", timeout=120).status_code == 200
        yield LiveApi("gateway", base_url, reference_url=image if reachable else "")


@pytest.fixture(scope="session")
def scripted_llm() -> Iterator[ScriptedLLM]:
    """The scripted upstream behind ``remote::openai`` provider ``vllm`` in every mode."""
    with ScriptedLLM() as server:
        yield server


@pytest.fixture(scope="session")
def mcp_server() -> Iterator[McpTestServer]:
    """A real MCP server (the mcp SDK's) on 127.0.0.1, for the Responses API's mcp tool."""
    with McpTestServer() as server:
        yield server


@pytest.fixture(scope="session")
def fake_search() -> Iterator[FakeSearch]:
    """Tavily's (and Brave's) wire format on 127.0.0.1: the web_search tool's provider."""
    with FakeSearch(slow_s=60) as server:
        yield server


# What the tools of the Responses API reach in every mode: web search through Tavily's
# wire format, MCP calls bounded by a short deadline (the slow-tool tests wait for it).
TOOLS_TIMEOUT_S = 4


@pytest.fixture(scope="session")
def api(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    llamacpp: LlamaCppServer,
    scripted_llm: ScriptedLLM,
    fake_search: FakeSearch,
) -> Iterator[LiveApi]:
    tmp = tmp_path_factory.mktemp(f"api-{request.param}")
    starter = _local if request.param == "local" else _gateway
    yield from starter(tmp, {"FNSTACK_OPENAI_BASE_URL": llamacpp.base_url,
                             "FNSTACK_VLLM_BASE_URL": scripted_llm.base_url,
                             "FNSTACK_TAVILY_API_KEY": TAVILY_KEY,
                             "FNSTACK_TAVILY_BASE_URL": fake_search.base_url,
                             "FNSTACK_MCP_TIMEOUT_S": str(TOOLS_TIMEOUT_S),
                             # The test MCP servers are on loopback, which the functions
                             # of the emulated gateway (Lambda) refuse unless allowed.
                             "FNSTACK_MCP_ALLOWED_URLS": "http://127.0.0.1:"})
    # No request of the suite may end in a 500: bad input and upstream faults each have
    # their own status. The access log (JSON lines) says how every request ended.
    errors = [line for log in tmp.glob("*.log") for line in log.read_text().splitlines()
              if '"status": 500' in line or '"message": "stream failed"' in line]
    assert not errors, f"{len(errors)} request(s) answered 500:\n" + "\n".join(errors[:5])


@pytest.fixture
def client(api: LiveApi, request: pytest.FixtureRequest) -> openai.OpenAI:
    return openai.OpenAI(base_url=api.url_for(request), api_key=api.key, max_retries=0,
                         timeout=120)


@pytest.fixture
def http(api: LiveApi, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url_for(request).removesuffix("/v1"), timeout=120,
                      headers=api.headers) as c:
        yield c
