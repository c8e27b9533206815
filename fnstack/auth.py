"""Authentication: who is calling, as an ``Owner`` (principal + attributes).

One ``Authenticator`` per deployment, chosen by the run config's ``auth.type``:

    none        no authentication (loopback only, or by explicit choice)
    api_keys    fnstack's own keys (``fnstack keys create``) + an operator bootstrap key
    jwt         OAuth2/OIDC bearer tokens: issuer, audience, a JWKS URL or a static key
    custom      POST the credentials to a URL that answers with a principal
    authorizer  trust API Gateway's authorizer (the function need not re-verify)

``AuthMiddleware`` (pure ASGI: streaming responses pass through untouched) calls it for
every request but the exempt paths, puts the Owner at ``request.state.principal``, and
answers 401 in OpenAI's error shape with a ``WWW-Authenticate`` header when it fails.

Credentials come as ``Authorization: Bearer <token>`` (the openai SDK) or
``x-api-key: <token>`` (the anthropic SDK); Authorization wins when both are sent
(API Gateway usage plans put their own key in x-api-key).

This module stays import-light (it is imported by the run config): httpx, PyJWT and
boto3 are imported by the authenticators that need them; the JWT and custom ones live in
``fnstack.auth_remote``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fnstack.errors import (
    AuthenticationError,
    ConfigError,
    FnstackError,
    ServiceUnavailableError,
)
from fnstack.logs import request_id_var
from fnstack.storage import Owner

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from fnstack.keys import KeyStore
    from fnstack.storage import Stores

__all__ = [
    "DEFAULT_CLAIMS_MAPPING",
    "DEFAULT_EXEMPT_PATHS",
    "ApiKeyAuthenticator",
    "ApiKeysConfig",
    "AuthConfig",
    "AuthMiddleware",
    "AuthUnavailableError",
    "Authenticator",
    "AuthorizerAuthenticator",
    "AuthorizerConfig",
    "CustomAuthConfig",
    "JwtConfig",
    "TokenCache",
    "attributes_from_claims",
    "build_authenticator",
    "check_exposure",
    "claim_values",
    "invalid_credentials",
    "is_loopback",
    "missing_credentials",
    "read_credentials",
]

log = logging.getLogger("fnstack.auth")

DEFAULT_EXEMPT_PATHS = ("/v1/health", "/docs", "/docs/oauth2-redirect", "/openapi.json")
# Claim name -> attribute name. Claims a token does not carry are skipped.
DEFAULT_CLAIMS_MAPPING = {"roles": "roles", "teams": "teams", "projects": "projects"}

REALM = 'Bearer realm="fnstack"'
KEYS_HINT = (
    "pass an API key as `Authorization: Bearer KEY` (or `x-api-key: KEY`); "
    "create one with `fnstack keys create NAME`"
)


# --- errors -----------------------------------------------------------------------------


class AuthUnavailableError(ServiceUnavailableError):
    """The credentials could not be checked (a JWKS, SSM or the custom service failed):
    the caller may retry; never a 500 and never an open door."""

    status = 503
    type = "server_error"
    default_code = "auth_unavailable"


def missing_credentials(hint: str) -> AuthenticationError:
    return AuthenticationError(f"no credentials: {hint}", code="missing_credentials")


def invalid_credentials(message: str) -> AuthenticationError:
    return AuthenticationError(message, code="invalid_api_key")


# --- config -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _empty_is_none(value: Any) -> Any:
    # `${env.X:=}` substitutes "", which means "not set".
    return None if value == "" else value


class ApiKeysConfig(_Strict):
    # An admin key chosen by the operator (any string; compared by hash in constant time).
    bootstrap_key: str | None = None
    # Or the name of an SSM SecureString parameter holding it, read once at cold start.
    bootstrap_key_ssm: str | None = None
    bootstrap_principal: str = Field(default="admin", min_length=1)
    # Where SSM is (an emulator in development); None: the default endpoint.
    ssm_endpoint_url: str | None = None
    # How long a verified key is trusted in-process before the store is read again:
    # a revocation from another process takes effect within this time.
    cache_ttl_s: float = Field(default=5.0, ge=0, le=300)

    _empty = field_validator(
        "bootstrap_key", "bootstrap_key_ssm", "ssm_endpoint_url", mode="before"
    )(_empty_is_none)


JwtAlgorithm = Literal["RS256", "ES256", "HS256"]


class JwtConfig(_Strict):
    issuer: str | None = None
    audience: str | list[str] | None = None
    # One key source: a JWKS URL (keys picked by `kid`), a PEM public key, or an HS256 secret.
    jwks_url: str | None = None
    public_key: str | None = None
    secret: str | None = None
    # Default: HS256 with a secret, else RS256 and ES256.
    algorithms: list[JwtAlgorithm] | None = None
    leeway_s: float = Field(default=30.0, ge=0, le=600)
    principal_claim: str = Field(default="sub", min_length=1)
    claims_mapping: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLAIMS_MAPPING))
    # JWKS: re-read after this long; an unknown `kid` re-reads at most every jwks_min_refresh_s.
    jwks_ttl_s: float = Field(default=600.0, ge=1)
    jwks_min_refresh_s: float = Field(default=10.0, ge=0)
    # A verified token is trusted until min(its exp, this long) without re-verifying.
    cache_ttl_s: float = Field(default=60.0, ge=0, le=3600)
    timeout_s: float = Field(default=5.0, gt=0, le=60)

    _empty = field_validator(
        "issuer", "audience", "jwks_url", "public_key", "secret", mode="before"
    )(_empty_is_none)

    def problems(self) -> list[str]:
        out: list[str] = []
        sources = [n for n in ("jwks_url", "public_key", "secret") if getattr(self, n)]
        if len(sources) != 1:
            out.append(
                "auth.jwt needs exactly one key source: jwks_url, public_key or secret "
                f"(set: {', '.join(sources) or 'none'})"
            )
        if not self.issuer:
            out.append("auth.jwt.issuer is required (the `iss` every token must carry)")
        if not self.audience:
            out.append(
                "auth.jwt.audience is required: without it a token the same issuer minted "
                "for another application would be accepted"
            )
        algs = set(self.effective_algorithms)
        if self.secret and algs != {"HS256"}:
            out.append("auth.jwt.algorithms must be [HS256] with a secret")
        if not self.secret and "HS256" in algs:
            out.append("auth.jwt.algorithms: HS256 needs auth.jwt.secret (not a public key)")
        if self.jwks_url and not _https_or_loopback(self.jwks_url):
            out.append("auth.jwt.jwks_url must be https:// (http:// only on loopback)")
        return out

    @property
    def effective_algorithms(self) -> list[str]:
        if self.algorithms:
            return list(dict.fromkeys(self.algorithms))
        return ["HS256"] if self.secret else ["RS256", "ES256"]


class CustomAuthConfig(_Strict):
    url: str | None = None
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    # Answers are cached per token for this long: the service's answer must not depend
    # on the method or path it is told (or set 0).
    cache_ttl_s: float = Field(default=5.0, ge=0, le=3600)
    # Request headers passed on to the service besides the token (lower case).
    forward_headers: list[str] = []

    _empty = field_validator("url", mode="before")(_empty_is_none)

    @field_validator("forward_headers")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [h.lower() for h in value]


class AuthorizerConfig(_Strict):
    # The claim naming the principal; a Lambda authorizer's principalId when absent.
    principal_claim: str = Field(default="sub", min_length=1)
    claims_mapping: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLAIMS_MAPPING))
    # Under the Lambda Web Adapter (streaming functions) the event is not in the ASGI
    # scope; the adapter passes its requestContext as the x-amzn-request-context header.
    # Trusted only where nothing else can reach the app: None = only on Lambda.
    trust_request_context_header: bool | None = None


AuthType = Literal["none", "api_keys", "jwt", "custom", "authorizer"]


class AuthConfig(_Strict):
    """``auth:`` in the run config. Flat: ``type`` picks the section that applies, so one
    distribution can carry every section and switch with ``${env.FNSTACK_AUTH}``."""

    # Unset (or "") means none *by default*: refused on a public bind. Writing
    # `type: none` (or FNSTACK_AUTH=none) is the operator's explicit choice.
    type: AuthType = "none"
    exempt_paths: list[str] = list(DEFAULT_EXEMPT_PATHS)
    api_keys: ApiKeysConfig = ApiKeysConfig()
    jwt: JwtConfig = JwtConfig()
    custom: CustomAuthConfig = CustomAuthConfig()
    authorizer: AuthorizerConfig = AuthorizerConfig()

    @model_validator(mode="before")
    @classmethod
    def _unset_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") in ("", None) and "type" in data:
            data = {k: v for k, v in data.items() if k != "type"}
        return data

    @model_validator(mode="after")
    def _selected_section(self) -> AuthConfig:
        problems: list[str] = []
        if self.type == "jwt":
            problems = self.jwt.problems()
        elif self.type == "custom" and not self.custom.url:
            problems = ["auth.custom.url is required with auth.type custom"]
        elif self.type == "custom" and not _https_or_loopback(self.custom.url or ""):
            problems = ["auth.custom.url must be https:// (http:// only on loopback)"]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def open_by_choice(self) -> bool:
        """True when the config says ``type: none`` in so many words."""
        return self.type == "none" and "type" in self.model_fields_set


def _https_or_loopback(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and is_loopback(parts.hostname or "")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(
    config: AuthConfig, *, host: str | None, insecure: bool = False, on_lambda: bool | None = None
) -> None:
    """Refuse to serve without authentication anywhere but loopback.

    Open is allowed when auth is configured, when the server binds a loopback address
    (not on Lambda), when the operator passed ``--insecure``, or when the config says
    ``auth: {type: none}`` explicitly. Raises ConfigError saying why and what to do.
    """
    if config.type != "none" or insecure or config.open_by_choice:
        return
    if on_lambda is None:
        on_lambda = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
    if not on_lambda and host is not None and is_loopback(host):
        return
    where = "on AWS Lambda" if on_lambda else f"on {host or 'a non-loopback address'}"
    raise ConfigError(
        f"refusing to serve {where} without authentication: anyone who can reach it could "
        "read, delete and spend everything. Configure auth (e.g. FNSTACK_AUTH=api_keys, then "
        "`fnstack keys create NAME`), or say `auth: {type: none}` / FNSTACK_AUTH=none / "
        "--insecure to run open on purpose",
        path="auth.type",
    )


# --- credentials and claims -------------------------------------------------------------


def read_credentials(scope: Scope) -> tuple[str | None, bool]:
    """(token, whether any credential header was sent). The token is the Bearer token of
    Authorization, else x-api-key; a non-Bearer Authorization yields no token."""
    auth: bytes | None = None
    xkey: bytes | None = None
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            auth = value
        elif name == b"x-api-key":
            xkey = value
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token:
            return token, True
    if xkey is not None:
        token = xkey.decode("latin-1").strip()
        if token:
            return token, True
    return None, auth is not None or xkey is not None


_SPLIT = re.compile(r"[,\s]+")


def claim_values(value: Any) -> list[str]:
    """A claim as a list of strings. API Gateway flattens claims to strings, so a list
    may arrive as a list, a JSON list string, ``[a, b]``, or a space/comma-separated string."""
    if value is None:
        return []
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None]
    if isinstance(value, (int, float)):
        return [str(value)]
    text = str(value).strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            text = text.strip("[]")
        else:
            if isinstance(parsed, list):
                return [str(v) for v in parsed if v is not None]
    return [v for v in _SPLIT.split(text) if v]


def attributes_from_claims(claims: dict[str, Any], mapping: dict[str, str]) -> dict[str, list[str]]:
    """Mapped claims as attributes; several claims may feed one attribute."""
    attrs: dict[str, list[str]] = {}
    for claim, attr in mapping.items():
        if claim in claims:
            values = claim_values(claims[claim])
            if values:
                merged = attrs.setdefault(attr, [])
                merged.extend(v for v in values if v not in merged)
    return attrs


# --- the protocol -----------------------------------------------------------------------


@runtime_checkable
class Authenticator(Protocol):
    """Turns a request into its principal, or raises AuthenticationError (401) /
    AuthUnavailableError (503)."""

    async def authenticate(self, scope: Scope) -> Owner: ...

    async def close(self) -> None: ...


class TokenCache:
    """Verified principals by token hash, each until its own deadline (wall clock)."""

    MAX = 10_000

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[float, Owner]] = {}

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes) -> Owner | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] <= time.time():
            self._entries.pop(key, None)
            return None
        return hit[1]

    def put(self, key: bytes, owner: Owner, until: float) -> None:
        if until <= time.time():
            return
        if len(self._entries) >= self.MAX:
            self._entries.clear()
        self._entries[key] = (until, owner)


# --- api keys ---------------------------------------------------------------------------


class ApiKeyAuthenticator:
    """fnstack's own keys (``KeyStore``) plus the operator's bootstrap admin key."""

    def __init__(self, config: ApiKeysConfig, keys: KeyStore) -> None:
        self.config = config
        self.keys = keys
        self._admin = Owner(config.bootstrap_principal, {"roles": ["admin"]})
        self._bootstrap: bytes | None = (
            hashlib.sha256(config.bootstrap_key.encode()).digest()
            if config.bootstrap_key
            else None
        )
        self._ssm_pending = config.bootstrap_key_ssm is not None
        self._ssm_error: str | None = None
        self._ssm_retry_at = 0.0
        self._ssm_lock = asyncio.Lock()

    async def authenticate(self, scope: Scope) -> Owner:
        token, _ = read_credentials(scope)
        if token is None:
            raise missing_credentials(KEYS_HINT)
        owner = await self.keys.verify(token)
        if owner is not None:
            return owner
        if self._ssm_pending:
            await self._load_ssm()
        if self._bootstrap is not None and hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), self._bootstrap
        ):
            return self._admin
        if self._ssm_pending and self._ssm_error is not None:
            raise AuthUnavailableError(
                "this key is not an fnstack key and the bootstrap key could not be read "
                f"from SSM ({self._ssm_error}); retry shortly"
            )
        raise invalid_credentials(
            "invalid API key: it is unknown, revoked, or mistyped; "
            "`fnstack keys list` shows the keys, `fnstack keys create NAME` makes a new one"
        )

    async def _load_ssm(self) -> None:
        async with self._ssm_lock:
            if not self._ssm_pending or time.monotonic() < self._ssm_retry_at:
                return
            name = self.config.bootstrap_key_ssm
            assert name is not None
            try:
                value = await asyncio.to_thread(self._read_ssm, name)
            except Exception as exc:  # any boto failure: keep serving fnstack keys
                self._ssm_error = f"{type(exc).__name__}: {exc}"
                self._ssm_retry_at = time.monotonic() + 30.0
                log.error("cannot read bootstrap key from SSM %s", name, exc_info=exc)
                return
            if value:
                self._bootstrap = hashlib.sha256(value.encode()).digest()
            self._ssm_pending = False
            self._ssm_error = None

    def _read_ssm(self, name: str) -> str:
        import boto3  # in the Lambda runtime; only needed when SSM is configured
        from botocore.config import Config

        # Bounded: this runs on the first request after a cold start.
        client = boto3.client(
            "ssm",
            endpoint_url=self.config.ssm_endpoint_url,
            config=Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 2}),
        )
        answer = client.get_parameter(Name=name, WithDecryption=True)
        return str(answer["Parameter"]["Value"])

    async def close(self) -> None:
        return None


# --- API Gateway authorizer -------------------------------------------------------------


class AuthorizerAuthenticator:
    """The principal API Gateway's authorizer established (``requestContext.authorizer``).

    REST API: a Cognito/JWT authorizer's ``claims``, or a Lambda authorizer's
    ``principalId`` + context keys. HTTP API: ``jwt.claims`` or ``lambda``. Missing data
    is a 401: a function must never run open because the authorizer was not wired.
    """

    def __init__(self, config: AuthorizerConfig) -> None:
        self.config = config
        trust = config.trust_request_context_header
        self._trust_header = (
            bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) if trust is None else trust
        )

    def _request_context(self, scope: Scope) -> dict[str, Any] | None:
        event = scope.get("aws.event")
        if isinstance(event, dict):
            rc = event.get("requestContext")
            return rc if isinstance(rc, dict) else None
        if self._trust_header:
            for name, value in scope.get("headers") or ():
                if name == b"x-amzn-request-context":
                    try:
                        rc = json.loads(value)
                    except ValueError:
                        return None
                    return rc if isinstance(rc, dict) else None
        return None

    async def authenticate(self, scope: Scope) -> Owner:
        rc = self._request_context(scope)
        authz = rc.get("authorizer") if rc else None
        if not isinstance(authz, dict) or not authz:
            raise AuthenticationError(
                "no API Gateway authorizer data on this request: the route has no authorizer "
                "wired (template.yaml), or auth.type should not be `authorizer` here",
                code="unauthorized",
            )
        claims: Any = authz.get("claims")
        if not isinstance(claims, dict):
            jwt_part = authz.get("jwt")
            claims = jwt_part.get("claims") if isinstance(jwt_part, dict) else None
        if not isinstance(claims, dict):
            lam = authz.get("lambda")
            claims = lam if isinstance(lam, dict) else authz
        principal = claims.get(self.config.principal_claim) or authz.get("principalId")
        if not principal or not isinstance(principal, (str, int)):
            raise AuthenticationError(
                f"the authorizer gave no principal (no {self.config.principal_claim!r} claim "
                "and no principalId)",
                code="unauthorized",
            )
        return Owner(str(principal), attributes_from_claims(claims, self.config.claims_mapping))

    async def close(self) -> None:
        return None


# --- building and the middleware --------------------------------------------------------


def build_authenticator(config: AuthConfig, stores: Stores) -> Authenticator | None:
    """The authenticator ``config`` asks for; None when auth is off."""
    if config.type == "none":
        return None
    if config.type == "api_keys":
        from fnstack.keys import KeyStore

        if not stores.has("registry"):
            raise ConfigError(
                "API keys are stored in the `registry` kv store; add it to storage.stores",
                path="auth.type",
            )
        keys = KeyStore(stores.kv("registry"), cache_ttl_s=config.api_keys.cache_ttl_s)
        return ApiKeyAuthenticator(config.api_keys, keys)
    if config.type == "authorizer":
        return AuthorizerAuthenticator(config.authorizer)
    from fnstack.auth_remote import CustomAuthenticator, JwtAuthenticator

    if config.type == "jwt":
        return JwtAuthenticator(config.jwt)
    return CustomAuthenticator(config.custom)


def _root_relative(scope: Scope) -> str:
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    return path


class AuthMiddleware:
    """Authenticates every HTTP/WebSocket request but the exempt paths.

    Install it inside the request-id middleware (so errors carry the id) and outside the
    body limit (an unauthenticated caller never makes the server read its body)."""

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        exempt_paths: Iterable[str] = DEFAULT_EXEMPT_PATHS,
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.exempt = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or _root_relative(scope) in self.exempt:
            await self.app(scope, receive, send)
            return
        try:
            owner = await self.authenticator.authenticate(scope)
        except FnstackError as exc:
            await self._reject(scope, send, exc)
            return
        except Exception as exc:  # a store or network failure: 503, never a 500
            log.error("authentication failed", exc_info=exc)
            await self._reject(scope, send, AuthUnavailableError(
                "the credentials could not be checked (the key store or the identity "
                "provider failed); retry shortly"
            ))
            return
        scope.setdefault("state", {})["principal"] = owner
        await self.app(scope, receive, send)

    async def _reject(self, scope: Scope, send: Send, exc: FnstackError) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
            return
        headers = dict(exc.headers)
        if exc.status == 401:
            _, sent = read_credentials(scope)
            headers["www-authenticate"] = REALM + (', error="invalid_token"' if sent else "")
        rid = request_id_var.get()
        if rid:
            headers["x-request-id"] = rid
        body = json.dumps(exc.to_dict(), separators=(",", ":")).encode()
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": exc.status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
