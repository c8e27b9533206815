"""Authentication end to end through AuthMiddleware, against real parts: API keys in
SQLite, JWTs signed with PyJWT and verified against a JWKS served over HTTP on
127.0.0.1, a custom authentication service over HTTP, API Gateway events through
Mangum, and the bootstrap key in SSM on a moto server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from mangum import Mangum
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from fnstack.auth import (
    AuthConfig,
    Authenticator,
    AuthMiddleware,
    build_authenticator,
    check_exposure,
    claim_values,
)
from fnstack.errors import ConfigError
from fnstack.keys import KeyStore
from fnstack.storage import KVSqliteConfig, StorageConfig, StoreRef, Stores

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://idp.example.test"
AUDIENCE = "fnstack-test"


# --- the app under the middleware -------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    p = request.state.principal
    return JSONResponse({"principal": p.principal, "attributes": p.attributes})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "OK"})


APP = Starlette(routes=[
    Route("/v1/whoami", whoami, methods=["GET", "POST"]),
    Route("/v1/health", health),
])


def client(authenticator: Authenticator) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=AuthMiddleware(APP, authenticator))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def assert_401(r: httpx.Response, code: str, *, token_sent: bool) -> str:
    assert r.status_code == 401, r.text
    err = r.json()["error"]
    assert set(r.json()) == {"error"} and set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "authentication_error" and err["code"] == code
    expected = 'Bearer realm="fnstack"' + (', error="invalid_token"' if token_sent else "")
    assert r.headers["www-authenticate"] == expected
    assert r.headers["content-type"] == "application/json"
    return str(err["message"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class LocalHTTP:
    """A ThreadingHTTPServer on 127.0.0.1 in a thread; ``handle(handler)`` answers."""

    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                handle(self)

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHTTP:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(
    h: BaseHTTPRequestHandler, status: int, body: Any, ctype: str = "application/json"
) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up waiting (the timeout case): that is the point


# --- API keys ---------------------------------------------------------------------------


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Stores]:
    s = Stores(StorageConfig(
        backends={"kv": KVSqliteConfig(type="kv_sqlite", db_path=str(tmp_path / "kv.db"))},
        stores={"registry": StoreRef(backend="kv", namespace="registry")},
    ))
    yield s
    await s.close()


def keys_auth(stores: Stores, **api_keys: Any) -> tuple[Authenticator, KeyStore]:
    config = AuthConfig.model_validate({"type": "api_keys", "api_keys": api_keys})
    auth = build_authenticator(config, stores)
    assert auth is not None
    return auth, auth.keys  # type: ignore[attr-defined]


async def test_api_keys(stores: Stores) -> None:
    auth, keys = keys_auth(stores, bootstrap_key="operator-chosen-admin-key")
    _, alice = await keys.create("alice", attributes={"teams": ["red"]})
    bob_info, bob = await keys.create("bob-key", principal="bob", roles=["admin"])
    async with client(auth) as c:
        r = await c.get("/v1/whoami", headers=bearer(alice))
        assert r.json() == {"principal": "alice", "attributes": {"teams": ["red"]}}
        r = await c.post("/v1/whoami", headers={"x-api-key": bob})  # the anthropic SDK's header
        assert r.json() == {"principal": "bob", "attributes": {"roles": ["admin"]}}
        # Both headers: Authorization wins (API Gateway usage plans own x-api-key).
        r = await c.get("/v1/whoami", headers={**bearer(alice), "x-api-key": "junk"})
        assert r.json()["principal"] == "alice"
        r = await c.get("/v1/whoami", headers={**bearer("junk"), "x-api-key": alice})
        assert_401(r, "invalid_api_key", token_sent=True)
        # A non-Bearer Authorization (Basic) falls back to x-api-key.
        r = await c.get("/v1/whoami", headers={"Authorization": "Basic eDp5", "x-api-key": bob})
        assert r.json()["principal"] == "bob"
        # The operator's bootstrap key is an admin.
        r = await c.get("/v1/whoami", headers=bearer("operator-chosen-admin-key"))
        assert r.json() == {"principal": "admin", "attributes": {"roles": ["admin"]}}

        # Missing credentials: 401 that says what to do, no error="invalid_token".
        message = assert_401(await c.get("/v1/whoami"), "missing_credentials", token_sent=False)
        assert "Authorization: Bearer" in message and "fnstack keys create" in message
        r = await c.get("/v1/whoami", headers={"Authorization": "Basic eDp5"})
        assert_401(r, "missing_credentials", token_sent=True)
        r = await c.get("/v1/whoami", headers={"Authorization": "Bearer "})
        assert_401(r, "missing_credentials", token_sent=True)

        wrong = [
            alice[:-3] + "xyz",  # wrong secret
            "fns-0123456789abcdef00-" + alice.rsplit("-", 1)[1],  # unknown key id
            "fns-abc",  # malformed
            "fns-" + "f" * 40 + "-" + "s" * 300,  # oversized
            "sk-proj-not-ours",
            "operator-chosen-admin-kez",
        ]
        for token in wrong:
            message = assert_401(
                await c.get("/v1/whoami", headers=bearer(token)), "invalid_api_key",
                token_sent=True,
            )
            assert "fnstack keys" in message and token not in message

        # Revoked: refused at once (revoked through the authenticator's own store).
        await keys.revoke(bob_info.id)
        assert_401(await c.get("/v1/whoami", headers={"x-api-key": bob}), "invalid_api_key",
                   token_sent=True)

        # Exempt paths need nothing.
        assert (await c.get("/v1/health")).json() == {"status": "OK"}
        assert (await c.get("/v1/health", headers=bearer("junk"))).status_code == 200


async def test_no_bootstrap_key_means_none(stores: Stores) -> None:
    auth, _ = keys_auth(stores, bootstrap_key="")  # ${env.FNSTACK_ADMIN_KEY:=} unset
    async with client(auth) as c:
        assert_401(await c.get("/v1/whoami", headers=bearer("")), "missing_credentials",
                   token_sent=True)
        assert_401(await c.get("/v1/whoami", headers={"x-api-key": "x"}), "invalid_api_key",
                   token_sent=True)


async def test_store_failure_is_503_not_500(stores: Stores) -> None:
    auth, _ = keys_auth(stores)
    await stores.close()  # the store is gone under the authenticator (a broken database)
    async with client(auth) as c:
        r = await c.get("/v1/whoami", headers=bearer("fns-0123456789abcdef00-secret"))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "auth_unavailable"


async def test_api_keys_need_the_registry_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="registry"):
        build_authenticator(AuthConfig(type="api_keys"), Stores(StorageConfig()))
    assert build_authenticator(AuthConfig(), Stores(StorageConfig())) is None


async def test_bootstrap_key_from_ssm(stores: Stores) -> None:
    from fnstack_dev.emulate import MotoServer, free_port
    from fnstack_dev.emulate import client as aws_client

    with MotoServer() as moto:
        aws_client("ssm", moto.endpoint).put_parameter(
            Name="/fnstack/admin-key", Value="from-ssm-secret", Type="SecureString"
        )
        auth, keys = keys_auth(
            stores, bootstrap_key_ssm="/fnstack/admin-key", ssm_endpoint_url=moto.endpoint
        )
        _, key = await keys.create("k")
        async with client(auth) as c:
            r = await c.get("/v1/whoami", headers=bearer("from-ssm-secret"))
            assert r.json()["attributes"] == {"roles": ["admin"]}, r.text
            assert_401(await c.get("/v1/whoami", headers=bearer("nope")), "invalid_api_key",
                       token_sent=True)
    # SSM unreachable: fnstack keys still work; an unknown token is a 503, not a wrong 401.
    auth, _ = keys_auth(
        stores, bootstrap_key_ssm="/fnstack/admin-key",
        ssm_endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
    )
    auth.keys = keys  # type: ignore[attr-defined]
    async with client(auth) as c:
        assert (await c.get("/v1/whoami", headers=bearer(key))).status_code == 200
        r = await c.get("/v1/whoami", headers=bearer("from-ssm-secret"))
        assert r.status_code == 503 and "SSM" in r.json()["error"]["message"], r.text


# --- the middleware itself --------------------------------------------------------------


async def test_streaming_passes_through_untouched(stores: Stores) -> None:
    auth, keys = keys_auth(stores)
    _, key = await keys.create("s")
    sent_by_app: list[Message] = []

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["state"]["principal"].principal == "s"
        for m in [
            {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream")]},
            {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True},
            {"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True},
            {"type": "http.response.body", "body": b"", "more_body": False},
        ]:
            sent_by_app.append(m)
            await send(m)

    received: list[Message] = []

    async def send(m: Message) -> None:
        received.append(m)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"authorization", f"Bearer {key}".encode())]}
    await AuthMiddleware(streaming, auth)(scope, receive, send)
    assert received == sent_by_app  # same messages, same order, one by one

    # lifespan passes through without authentication
    called = []

    async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope["type"])

    await AuthMiddleware(lifespan, auth)({"type": "lifespan"}, receive, send)
    assert called == ["lifespan"]


async def test_exempt_paths_and_root_path(stores: Stores) -> None:
    auth, _ = keys_auth(stores)
    app = AuthMiddleware(APP, auth, exempt_paths=["/v1/health"])
    transport = httpx.ASGITransport(app=app, root_path="/prod")
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/prod/v1/health")).status_code == 200
        assert (await c.get("/prod/v1/whoami")).status_code == 401
        assert (await c.get("/prod/v1/health/../whoami")).status_code == 401


# --- JWT against a real JWKS endpoint ---------------------------------------------------


class Idp:
    """An identity provider: RSA and EC signing keys and a JWKS served over HTTP."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {
            "rsa1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec1": ec.generate_private_key(ec.SECP256R1()),
        }
        self.published = ["rsa1", "ec1"]
        self.fetches = 0
        self.http = LocalHTTP(self._serve)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        self.fetches += 1
        reply(h, 200, self.jwks())

    def jwks(self) -> dict[str, Any]:
        out = []
        for kid in self.published:
            key = self.keys[kid]
            algs = jwt.algorithms
            alg = algs.RSAAlgorithm if kid.startswith("rsa") else algs.ECAlgorithm
            jwk = alg.to_jwk(key.public_key(), as_dict=True)
            out.append({**jwk, "kid": kid, "use": "sig"})
        # A key for encryption, and one fnstack cannot use: both are skipped.
        out.append({"kty": "RSA", "kid": "enc1", "use": "enc", "n": "AQAB", "e": "AQAB"})
        out.append({"kty": "OKP", "kid": "weird", "crv": "X448", "x": "AA"})
        return {"keys": out}

    def token(self, kid: str = "rsa1", *, exp_in: float = 300, **claims: Any) -> str:
        now = time.time()
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": int(now),
                "exp": int(now + exp_in), **claims}
        alg = "RS256" if kid.startswith("rsa") else "ES256"
        return jwt.encode(body, self.keys[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture
def idp() -> Iterator[Idp]:
    provider = Idp()
    with provider.http:
        yield provider


def jwt_auth(**cfg: Any) -> Authenticator:
    config = AuthConfig.model_validate({"type": "jwt", "jwt": {
        "issuer": ISSUER, "audience": AUDIENCE, **cfg}})
    auth = build_authenticator(config, Stores(StorageConfig()))
    assert auth is not None
    return auth


async def test_jwt_with_jwks(idp: Idp) -> None:
    auth = jwt_auth(jwks_url=idp.http.url + "/jwks.json",
                    claims_mapping={"groups": "roles", "team": "teams", "roles": "roles"})
    async with client(auth) as c:
        r = await c.get("/v1/whoami", headers=bearer(idp.token(groups=["admin", "ops"],
                                                               team="red", roles="ops")))
        assert r.json() == {"principal": "user-1",
                            "attributes": {"roles": ["admin", "ops"], "teams": ["red"]}}, r.text
        r = await c.get("/v1/whoami", headers={"x-api-key": idp.token("ec1", sub="user-2")})
        assert r.json()["principal"] == "user-2", r.text
        assert idp.fetches == 1  # one fetch serves both keys

        def bad(token: str, words: str) -> Any:
            async def check() -> None:
                r = await c.get("/v1/whoami", headers=bearer(token))
                assert words in assert_401(r, "invalid_api_key", token_sent=True)
            return check()

        await bad(idp.token(exp_in=-120), "expired")
        await bad(idp.token(aud="someone-else"), "audience")
        await bad(idp.token(iss="https://evil.test"), "not issued by")
        head, _, sig = idp.token().split(".")
        other = idp.token(sub="admin").split(".")[1]
        await bad(f"{head}.{other}.{sig}", "Signature verification failed")  # tampered
        await bad(idp.token() + "x", "not a JWT")
        await bad("not.a.jwt", "not a JWT")
        await bad(jwt.encode({"sub": "x", "exp": time.time() + 60, "iss": ISSUER,
                              "aud": AUDIENCE}, "k" * 32, algorithm="HS256"), "not accepted")
        await bad(jwt.encode({"sub": "x"}, "", algorithm="none"), "not accepted")
        no_exp = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x"},
                            idp.keys["rsa1"], algorithm="RS256", headers={"kid": "rsa1"})
        await bad(no_exp, "exp")
        await bad(idp.token(sub=""), "'sub'")
        assert_401(await c.get("/v1/whoami"), "missing_credentials", token_sent=False)


async def test_jwt_leeway(idp: Idp) -> None:
    auth = jwt_auth(jwks_url=idp.http.url, leeway_s=30)
    async with client(auth) as c:
        r = await c.get("/v1/whoami", headers=bearer(idp.token(exp_in=-10)))
        assert r.status_code == 200, r.text  # expired 10 s ago, within 30 s of skew
        r = await c.get("/v1/whoami", headers=bearer(idp.token(exp_in=-60)))
        assert r.status_code == 401
        future = idp.token(nbf=int(time.time()) + 20)
        assert (await c.get("/v1/whoami", headers=bearer(future))).status_code == 200
        future = idp.token(nbf=int(time.time()) + 120)
        assert (await c.get("/v1/whoami", headers=bearer(future))).status_code == 401


async def test_jwt_key_rotation_and_rate_limit(idp: Idp) -> None:
    idp.keys["rsa2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rotated = idp.token("rsa2", sub="rotated")
    # Refetch at most every 60 s: an unknown kid right after a fetch is refused, no fetch.
    slow = jwt_auth(jwks_url=idp.http.url, jwks_min_refresh_s=60)
    async with client(slow) as c:
        assert (await c.get("/v1/whoami", headers=bearer(idp.token()))).status_code == 200
        r = await c.get("/v1/whoami", headers=bearer(rotated))
        assert "unknown key" in assert_401(r, "invalid_api_key", token_sent=True)
        for _ in range(5):
            await c.get("/v1/whoami", headers=bearer(rotated))
        assert idp.fetches == 1
    # The issuer rotates: an unknown kid triggers one refetch, then the key is known.
    fast = jwt_auth(jwks_url=idp.http.url, jwks_min_refresh_s=0)
    async with client(fast) as c:
        assert (await c.get("/v1/whoami", headers=bearer(idp.token()))).status_code == 200
        assert idp.fetches == 2
        idp.published = ["rsa2", "ec1"]
        r = await c.get("/v1/whoami", headers=bearer(rotated))
        assert r.json()["principal"] == "rotated", r.text
        assert idp.fetches == 3
        r = await c.get("/v1/whoami", headers=bearer(idp.token("rsa2", sub="again")))
        assert r.status_code == 200 and idp.fetches == 3  # known now: no fetch
    await slow.close()
    await fast.close()


async def test_jwks_unreachable_is_503(idp: Idp) -> None:
    url = idp.http.url
    token = idp.token()
    idp.http.__exit__()
    async with client(jwt_auth(jwks_url=url)) as c:
        r = await c.get("/v1/whoami", headers=bearer(token))
    assert r.status_code == 503 and "signing keys" in r.json()["error"]["message"], r.text


async def test_jwt_static_keys(idp: Idp) -> None:
    secret = "s" * 40
    auth = jwt_auth(secret=secret)
    good = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "h", "exp": time.time() + 60},
                      secret, algorithm="HS256")
    forged = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "h", "exp": time.time() + 60},
                        "t" * 40, algorithm="HS256")
    async with client(auth) as c:
        assert (await c.get("/v1/whoami", headers=bearer(good))).json()["principal"] == "h"
        assert (await c.get("/v1/whoami", headers=bearer(good))).status_code == 200  # cached
        assert_401(await c.get("/v1/whoami", headers=bearer(forged)), "invalid_api_key",
                   token_sent=True)
        assert (await c.get("/v1/whoami", headers=bearer(idp.token()))).status_code == 401
    pem = idp.keys["rsa1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    async with client(jwt_auth(public_key=pem, principal_claim="email")) as c:
        r = await c.get("/v1/whoami", headers=bearer(idp.token(email="a@b.c")))
        assert r.json()["principal"] == "a@b.c", r.text
        assert (await c.get("/v1/whoami", headers=bearer(idp.token()))).status_code == 401


@pytest.mark.parametrize(
    ("cfg", "words"),
    [
        ({}, "exactly one key source"),
        ({"jwks_url": "https://x.test/jwks", "secret": "s"}, "exactly one key source"),
        ({"jwks_url": "http://idp.example.com/jwks"}, "https"),
        ({"secret": "s", "algorithms": ["RS256"]}, "[HS256]"),
        ({"jwks_url": "https://x.test/jwks", "algorithms": ["HS256"]}, "HS256 needs"),
        ({"jwks_url": "https://x.test/jwks", "issuer": ""}, "issuer is required"),
        ({"jwks_url": "https://x.test/jwks", "audience": ""}, "audience is required"),
    ],
)
def test_jwt_config_errors(cfg: dict[str, Any], words: str) -> None:
    from fnstack.config import parse_config

    data = {"auth": {"type": "jwt", "jwt": {"issuer": ISSUER, "audience": AUDIENCE, **cfg}}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, env={})
    assert words in str(info.value) and "at auth" in str(info.value)


# --- custom authentication service ------------------------------------------------------


class AuthService:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.http = LocalHTTP(self._serve)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["content-length"])))
        self.seen.append(body)
        token = body["token"]
        if token == "good":
            reply(h, 200, {"principal": "carol",
                           "attributes": {"teams": ["blue"], "roles": "admin,ops"}})
        elif token == "bad":
            reply(h, 401, {"error": "no"})
        elif token == "forbidden":
            reply(h, 403, {"error": "no"})
        elif token == "boom":
            reply(h, 500, {"error": "down"})
        elif token == "garbage":
            reply(h, 200, b"<html>", "text/html")
        elif token == "slow":
            time.sleep(1.0)
            reply(h, 200, {"principal": "late", "attributes": {}})


@pytest.fixture
def service() -> Iterator[AuthService]:
    s = AuthService()
    with s.http:
        yield s


async def test_custom(service: AuthService) -> None:
    config = AuthConfig.model_validate({"type": "custom", "custom": {
        "url": service.http.url + "/check", "timeout_s": 0.3, "forward_headers": ["X-Tenant"]}})
    auth = build_authenticator(config, Stores(StorageConfig()))
    assert auth is not None
    async with client(auth) as c:
        r = await c.post("/v1/whoami?x=1", headers={**bearer("good"), "x-tenant": "t1",
                                                    "x-secret": "not forwarded"})
        assert r.json() == {"principal": "carol",
                            "attributes": {"teams": ["blue"], "roles": ["admin", "ops"]}}
        assert service.seen[-1] == {"token": "good", "headers": {"x-tenant": "t1"},
                                    "method": "POST", "path": "/v1/whoami"}
        await c.get("/v1/whoami", headers=bearer("good"))
        assert len(service.seen) == 1  # cached for cache_ttl_s

        for token in ("bad", "forbidden"):
            assert_401(await c.get("/v1/whoami", headers=bearer(token)), "invalid_api_key",
                       token_sent=True)
        for token, words in [("boom", "HTTP 500"), ("garbage", "answered 200 without"),
                             ("slow", "did not answer within")]:
            r = await c.get("/v1/whoami", headers=bearer(token))
            assert r.status_code == 503, r.text
            assert words in r.json()["error"]["message"]
        assert_401(await c.get("/v1/whoami"), "missing_credentials", token_sent=False)
    url = service.http.url
    service.http.__exit__()
    async with client(auth) as c:
        r = await c.get("/v1/whoami", headers=bearer("other"))
        assert r.status_code == 503 and url in r.json()["error"]["message"]
    await auth.close()


# --- API Gateway authorizer, through Mangum ---------------------------------------------


def gateway_event(authorizer: dict[str, Any] | None, headers: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((ROOT / "events/api-health.json").read_text())
    event["path"] = event["requestContext"]["path"] = "/v1/whoami"
    event["resource"] = "/v1/whoami"
    event["headers"] = {**event["headers"], **(headers or {})}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    return event


def invoke(event: dict[str, Any], cfg: dict[str, Any] | None = None) -> tuple[int, Any]:
    auth = build_authenticator(AuthConfig.model_validate({"type": "authorizer",
                                                         "authorizer": cfg or {}}),
                               Stores(StorageConfig()))
    assert auth is not None
    result: dict[str, Any] = {}

    def run() -> None:  # Mangum runs its own event loop: keep it off the test's loop
        result.update(Mangum(AuthMiddleware(APP, auth), lifespan="off")(event, None))  # type: ignore[arg-type]

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    return int(result["statusCode"]), json.loads(result["body"])


def test_authorizer_rest_jwt_claims() -> None:
    claims = {"sub": "cog-1", "cognito:groups": "[admin, ops]", "custom:team": '["red","blue"]',
              "email": "x@y.z"}
    status, body = invoke(gateway_event({"claims": claims}),
                          {"claims_mapping": {"cognito:groups": "roles", "custom:team": "teams"}})
    assert status == 200, body
    assert body == {"principal": "cog-1",
                    "attributes": {"roles": ["admin", "ops"], "teams": ["red", "blue"]}}
    status, body = invoke(gateway_event({"claims": claims}), {"principal_claim": "email"})
    assert body["principal"] == "x@y.z"


def test_authorizer_lambda_context() -> None:
    authorizer = {"principalId": "svc-7", "roles": "admin ops", "teams": "red",
                  "integrationLatency": 12}
    status, body = invoke(gateway_event(authorizer))
    assert status == 200, body
    assert body == {"principal": "svc-7",
                    "attributes": {"roles": ["admin", "ops"], "teams": ["red"]}}


def test_authorizer_missing_is_401() -> None:
    for authorizer in (None, {}, {"claims": {"email": "no-sub"}}):
        status, body = invoke(gateway_event(authorizer, {"Authorization": "Bearer whatever"}))
        assert status == 401 and body["error"]["code"] == "unauthorized", body


async def test_authorizer_outside_lambda_and_lwa_header() -> None:
    rc = json.dumps({"authorizer": {"jwt": {"claims": {"sub": "v2-user", "roles": "[a b]"}}}})
    # Not under Lambda: a forged request-context header is ignored.
    forged = build_authenticator(AuthConfig(type="authorizer"), Stores(StorageConfig()))
    assert forged is not None
    async with client(forged) as c:
        r = await c.get("/v1/whoami", headers={"x-amzn-request-context": rc})
        assert_401(r, "unauthorized", token_sent=False)
    # Under the Lambda Web Adapter (trusted): HTTP API JWT claims from the header.
    trusted = build_authenticator(AuthConfig.model_validate({
        "type": "authorizer", "authorizer": {"trust_request_context_header": True}}),
        Stores(StorageConfig()))
    assert trusted is not None
    async with client(trusted) as c:
        r = await c.get("/v1/whoami", headers={"x-amzn-request-context": rc})
        assert r.json() == {"principal": "v2-user", "attributes": {"roles": ["a", "b"]}}


def test_claim_values() -> None:
    assert claim_values(["a", 1, None]) == ["a", "1"]
    assert claim_values('["a", "b"]') == ["a", "b"]
    assert claim_values("[a, b]") == ["a", "b"]
    assert claim_values("a b,c") == ["a", "b", "c"]
    assert claim_values(True) == ["true"] and claim_values(None) == [] and claim_values("") == []


# --- secure by default ------------------------------------------------------------------


def test_check_exposure() -> None:
    from fnstack.config import load_config

    unset = load_config("local", env={})
    assert unset.auth.type == "none" and not unset.auth.open_by_choice
    check_exposure(unset.auth, host="127.0.0.1", on_lambda=False)
    check_exposure(unset.auth, host="::1", on_lambda=False)
    for host in ("0.0.0.0", "192.168.1.4", None):
        with pytest.raises(ConfigError, match="FNSTACK_AUTH=api_keys") as info:
            check_exposure(unset.auth, host=host, on_lambda=False)
        assert info.value.path == "auth.type"
    with pytest.raises(ConfigError, match="on AWS Lambda"):
        check_exposure(unset.auth, host="127.0.0.1", on_lambda=True)
    check_exposure(unset.auth, host="0.0.0.0", insecure=True, on_lambda=False)
    chosen = load_config("local", env={"FNSTACK_AUTH": "none"}).auth
    assert chosen.open_by_choice
    check_exposure(chosen, host="0.0.0.0", on_lambda=True)
    keys = load_config("local", env={"FNSTACK_AUTH": "api_keys", "FNSTACK_ADMIN_KEY": "k"}).auth
    assert keys.type == "api_keys" and keys.api_keys.bootstrap_key == "k"
    check_exposure(keys, host="0.0.0.0", on_lambda=True)
    aws_env = {"FNSTACK_TABLE": "tbl", "FNSTACK_BUCKET": "bkt", "FNSTACK_QUEUE_URL": "q"}
    assert load_config("aws", env=aws_env).auth.type == "api_keys"
    assert load_config("aws", env={**aws_env, "FNSTACK_AUTH": "authorizer"}).auth.type == (
        "authorizer")


def test_auth_config_is_strict() -> None:
    from fnstack.config import parse_config

    with pytest.raises(ConfigError, match=r"at auth\.api_keys\.bootstrap_kye"):
        parse_config({"auth": {"type": "api_keys", "api_keys": {"bootstrap_kye": "x"}}}, env={})
    with pytest.raises(ConfigError, match=r"at auth\.type"):
        parse_config({"auth": {"type": "oauth"}}, env={})
    with pytest.raises(ConfigError, match=r"custom\.url is required"):
        parse_config({"auth": {"type": "custom"}}, env={})
