"""The authenticators that talk to something remote: JWT (a JWKS endpoint) and custom.

Imported only when the run config selects them (httpx and PyJWT stay out of start-up
otherwise). Both cache what they verified, so the steady state costs a sha256 and a
dict lookup per request:

- JWT: verified tokens by token hash until min(exp + leeway, cache_ttl_s). The JWKS is
  fetched with httpx (async; PyJWKClient would block the event loop with urllib),
  cached for jwks_ttl_s, and fetched again when a token names an unknown ``kid``
  (a key rotation), at most every jwks_min_refresh_s so bad tokens cannot hammer it.
- custom: accepted tokens by token hash for cache_ttl_s; rejections are not cached.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import httpx
import jwt

from fnstack.auth import (
    AuthUnavailableError,
    CustomAuthConfig,
    JwtConfig,
    TokenCache,
    attributes_from_claims,
    claim_values,
    invalid_credentials,
    missing_credentials,
    read_credentials,
)
from fnstack.storage import Owner

if TYPE_CHECKING:
    from starlette.types import Scope

__all__ = ["CustomAuthenticator", "JwtAuthenticator"]

log = logging.getLogger("fnstack.auth")

_KTY_ALGS = {"RSA": {"RS256"}, "EC": {"ES256"}, "oct": {"HS256"}}


class JwtAuthenticator:
    """Bearer JWTs: signature (JWKS, PEM key or HS256 secret), exp/nbf with leeway,
    issuer and audience; the principal from ``principal_claim``, attributes from
    ``claims_mapping``."""

    def __init__(self, config: JwtConfig) -> None:
        self.config = config
        self.algorithms = config.effective_algorithms
        self._hint = (
            f"pass a JWT issued by {config.issuer} as `Authorization: Bearer TOKEN`"
        )
        self._cache = TokenCache()
        # JWKS state: (kid or None, key type, key object) per usable key.
        self._jwks: list[tuple[str | None, str, Any]] = []
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None

    async def authenticate(self, scope: Scope) -> Owner:
        token, _ = read_credentials(scope)
        if token is None:
            raise missing_credentials(self._hint)
        cache_key = TokenCache.key(token)
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid_credentials(f"the bearer token is not a JWT; {self._hint}") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise invalid_credentials(
                f"token algorithm {alg!r} is not accepted (accepted: {', '.join(self.algorithms)})"
            )
        key = await self._key_for(header.get("kid"), str(alg))
        cfg = self.config
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise invalid_credentials(
                f"the token has expired; get a new one from {cfg.issuer}"
            ) from None
        except jwt.InvalidAudienceError:
            raise invalid_credentials(f"the token is not meant for this service (audience "
                           f"must be {cfg.audience})") from None
        except jwt.InvalidIssuerError:
            raise invalid_credentials(f"the token was not issued by {cfg.issuer}") from None
        except jwt.PyJWTError as exc:
            raise invalid_credentials(f"invalid token: {exc}") from None
        principal = claims.get(cfg.principal_claim)
        if principal is None or isinstance(principal, (dict, list)) or principal == "":
            raise invalid_credentials(
                f"the token has no {cfg.principal_claim!r} claim to name its principal"
            )
        owner = Owner(str(principal), attributes_from_claims(claims, cfg.claims_mapping))
        until = min(float(claims["exp"]) + cfg.leeway_s, time.time() + cfg.cache_ttl_s)
        self._cache.put(cache_key, owner, until)
        return owner

    async def _key_for(self, kid: Any, alg: str) -> Any:
        cfg = self.config
        if cfg.secret:
            return cfg.secret
        if cfg.public_key:
            return cfg.public_key
        now = time.monotonic()
        if now - self._fetched_at > cfg.jwks_ttl_s:
            await self._refresh(stale_ok=bool(self._jwks))
        key = self._pick(kid, alg)
        if key is None and time.monotonic() - self._fetched_at >= cfg.jwks_min_refresh_s:
            # An unknown kid: the issuer may have rotated its keys since the last fetch.
            await self._refresh(stale_ok=False)
            key = self._pick(kid, alg)
        if key is None:
            known = ", ".join(str(k) for k, _, _ in self._jwks) or "none"
            raise invalid_credentials(f"the token is signed with an unknown key (kid {kid!r}; the "
                           f"issuer's JWKS has: {known})")
        return key

    def _pick(self, kid: Any, alg: str) -> Any:
        fits = [(k, key) for k, kty, key in self._jwks if alg in _KTY_ALGS.get(kty, ())]
        if kid is not None:
            return next((key for k, key in fits if k == kid), None)
        return fits[0][1] if len(fits) == 1 else None

    async def _refresh(self, *, stale_ok: bool) -> None:
        started = self._fetched_at
        async with self._lock:
            if self._fetched_at != started:
                return  # another request fetched while this one waited
            url = self.config.jwks_url
            assert url is not None
            try:
                if self._client is None:
                    self._client = httpx.AsyncClient(timeout=self.config.timeout_s)
                response = await self._client.get(url, headers={"accept": "application/json"})
                response.raise_for_status()
                data = response.json()
                keys = self._parse(data)
            except (httpx.HTTPError, ValueError) as exc:
                # Retry no sooner than jwks_min_refresh_s; keep the keys we have.
                self._fetched_at = time.monotonic() - self.config.jwks_ttl_s + (
                    self.config.jwks_min_refresh_s
                )
                if stale_ok:
                    log.warning("JWKS refresh from %s failed; keeping the old keys: %s", url, exc)
                    return
                raise AuthUnavailableError(
                    f"could not fetch the signing keys from {url} ({type(exc).__name__}: {exc}); "
                    "retry shortly"
                ) from exc
            self._jwks = keys
            self._fetched_at = time.monotonic()

    @staticmethod
    def _parse(data: Any) -> list[tuple[str | None, str, Any]]:
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError("not a JWKS document (no `keys` list)")
        out: list[tuple[str | None, str, Any]] = []
        for entry in data["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                jwk = jwt.PyJWK(entry)
            except jwt.PyJWTError as exc:
                log.warning("skipping unusable JWKS key %s: %s", entry.get("kid"), exc)
                continue
            kid = entry.get("kid")
            out.append((str(kid) if kid is not None else None, str(entry.get("kty")), jwk.key))
        return out

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class CustomAuthenticator:
    """POSTs ``{"token", "headers", "method", "path"}`` to ``url``.

    200 ``{"principal": ..., "attributes": {...}}`` accepts, 401/403 rejects; any other
    status, a malformed answer or a timeout is a 503 (the service is at fault, not the
    caller)."""

    def __init__(self, config: CustomAuthConfig) -> None:
        self.config = config
        self._cache = TokenCache()
        self._client: httpx.AsyncClient | None = None
        self._forward = frozenset(h.encode("latin-1") for h in config.forward_headers)

    async def authenticate(self, scope: Scope) -> Owner:
        token, _ = read_credentials(scope)
        if token is None:
            raise missing_credentials("pass your token as `Authorization: Bearer TOKEN`")
        cache_key = TokenCache.key(token)
        hit = self._cache.get(cache_key)
        if hit is not None:
            return hit
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers") or ()
            if k in self._forward
        }
        payload = {
            "token": token,
            "headers": headers,
            "method": scope.get("method"),
            "path": scope.get("path"),
        }
        url = self.config.url
        assert url is not None
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.config.timeout_s)
        try:
            response = await self._client.post(url, json=payload)
        except httpx.TimeoutException as exc:
            raise AuthUnavailableError(
                f"the authentication service at {url} did not answer within "
                f"{self.config.timeout_s}s; retry shortly"
            ) from exc
        except httpx.HTTPError as exc:
            raise AuthUnavailableError(
                f"the authentication service at {url} is unreachable ({type(exc).__name__}); "
                "retry shortly"
            ) from exc
        if response.status_code in (401, 403):
            raise invalid_credentials("the authentication service rejected these credentials")
        if response.status_code != 200:
            raise AuthUnavailableError(
                f"the authentication service at {url} failed (HTTP {response.status_code}); "
                "retry shortly"
            )
        owner = self._owner(response)
        self._cache.put(cache_key, owner, time.time() + self.config.cache_ttl_s)
        return owner

    def _owner(self, response: httpx.Response) -> Owner:
        try:
            data = response.json()
        except ValueError:
            data = None
        principal = data.get("principal") if isinstance(data, dict) else None
        attributes = data.get("attributes", {}) if isinstance(data, dict) else None
        if not isinstance(principal, str) or not principal or not isinstance(attributes, dict):
            raise AuthUnavailableError(
                f"the authentication service at {self.config.url} answered 200 without "
                '{"principal": "...", "attributes": {...}}'
            )
        return Owner(principal, {str(k): claim_values(v) for k, v in attributes.items()})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

