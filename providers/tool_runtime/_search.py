"""What the web search providers share: config, one pooled HTTP client, the error boundary,
and the provider shell (count clamp, result filtering); each API adds its request and its
result mapping.

Upstream failures become `fnstack.errors` types here, once, for every search API:

- connect failures and 5xx: UpstreamError (502); timeouts: UpstreamTimeoutError (504)
- 429 (and Tavily's 432/433 plan limits): RateLimitError, ``retry-after`` passed on
- our key refused (401/403, Brave's 422 SUBSCRIPTION_TOKEN_INVALID): ServiceUnavailableError
  (503): the caller did nothing wrong, an operator must fix ``api_key``
- an answer that is not the expected JSON: UpstreamError
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fnstack.api.tool_runtime import MAX_SEARCH_RESULTS, WebSearchResult
from fnstack.errors import (
    FnstackError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from fnstack.spec import ProviderModel

__all__ = ["SearchConfig", "SearchHttp", "SearchProvider"]


class SearchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: str = Field(min_length=1, description="The search API's key")
    base_url: str = Field(description="The API's origin (tests point it at a local fake)")
    timeout: float = Field(default=15.0, gt=0, description="Seconds for one search, in all")
    max_connections: int = Field(default=20, ge=1)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


class SearchHttp:
    """One pooled client for one search API, and its error boundary."""

    def __init__(self, name: str, config: SearchConfig, headers: dict[str, str]) -> None:
        self.name = name
        self.base_url = config.base_url
        self.client = httpx.AsyncClient(
            base_url=config.base_url,
            headers={"Accept": "application/json", **headers},
            timeout=httpx.Timeout(config.timeout),
            limits=httpx.Limits(max_connections=config.max_connections),
            follow_redirects=False,
        )

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """The parsed JSON answer of a 2xx, or the fnstack error for anything else."""
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(
                f"{self.name} did not answer in time ({type(exc).__name__}); try again, or "
                "raise `timeout` in the provider config"
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"cannot reach {self.name} at {self.base_url}: {exc or type(exc).__name__}"
            ) from exc
        if response.status_code >= 400:
            raise self._status_error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise UpstreamError(f"{self.name} answered something that is not JSON") from exc

    def _status_error(self, response: httpx.Response) -> FnstackError:
        status = response.status_code
        detail = _detail(response)
        if status == 429 or status in (432, 433):
            keep = {k: response.headers[k] for k in ("retry-after",) if k in response.headers}
            return RateLimitError(f"{self.name} rate limit or quota reached ({status}): "
                                  f"{detail}; try again later", headers=keep)
        if status in (401, 403) or "TOKEN_INVALID" in detail:
            return ServiceUnavailableError(
                f"{self.name} refused this deployment's API key ({status}): {detail}; an "
                "operator must fix api_key in the tool_runtime provider config",
                code="search_provider_auth",
            )
        return UpstreamError(f"{self.name} answered {status}: {detail}")

    async def close(self) -> None:
        await self.client.aclose()


class SearchProvider:
    """A web search tool_runtime provider: subclasses send the query (``_search``) and map one
    upstream result (``_result``); entries that are not objects with a string ``url`` are
    dropped, and never more than the clamped count is returned."""

    http: SearchHttp

    async def list_models(self) -> list[ProviderModel]:
        return []

    async def web_search(self, query: str, max_results: int) -> list[WebSearchResult]:
        count = max(1, min(max_results, MAX_SEARCH_RESULTS))
        out = [self._result(r) for r in await self._search(query, count)
               if isinstance(r, dict) and isinstance(r.get("url"), str)]
        return out[:count]

    async def _search(self, query: str, count: int) -> list[Any]:
        """The upstream's result list for ``query`` (``count`` results asked for)."""
        raise NotImplementedError

    def _result(self, r: dict[str, Any]) -> WebSearchResult:
        """One upstream result, known to be an object with a string ``url``."""
        raise NotImplementedError

    async def shutdown(self) -> None:
        await self.http.close()


def _detail(response: httpx.Response) -> str:
    """The upstream's own error message: Brave {"error": {"detail"}}, Tavily {"detail":
    {"error"}}, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error, detail = body.get("error"), body.get("detail")
        if isinstance(error, dict):
            found = error.get("detail") or error.get("message")
            code = error.get("code")
            if found:
                return f"{code}: {found}" if code else str(found)
        if isinstance(detail, dict) and detail.get("error"):
            return str(detail["error"])
        if isinstance(detail, str):
            return detail
        if isinstance(error, str):
            return error
    return json.dumps(body)[:200]
