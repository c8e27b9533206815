"""Answer only requests addressed to this server by one of its own names.

A server on loopback with no authentication is reachable from any web page the user
opens: the page's script resolves ``evil.example`` to 127.0.0.1 (DNS rebinding) and
the browser then sends ``Host: evil.example:8321`` to us. Checking the Host header
against the names the server is meant to be reached by stops that.

Only ``fnstack run`` uses this (see ``fnstack.server``): behind API Gateway the Host is
the gateway's, and the gateway already routes by it.

    server:
      allowed_hosts: null        # default: 127.0.0.1, localhost, [::1] and the bind host
      allowed_hosts: ["*"]       # no check
      allowed_hosts: [api.internal, "*.corp.example"]
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["LOOPBACK_NAMES", "HostGuard", "default_allowed_hosts", "host_name"]

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", "[::]", ""})


def default_allowed_hosts(bind_host: str) -> list[str]:
    """The loopback names, the bind host and, on a wildcard bind, this machine's names."""
    names = list(LOOPBACK_NAMES)
    if bind_host in _WILDCARD_BINDS:
        # Bound to every interface: clients come by this machine's name or address.
        hostname = socket.gethostname()
        names += [hostname, socket.getfqdn()]
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(hostname, None)}
        except OSError:
            addresses = set()
        names += [f"[{a}]" if ":" in a else a for a in sorted(addresses)]
    else:
        names.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
    return list(dict.fromkeys(n.lower() for n in names if n))


def host_name(value: str) -> str | None:
    """``Host`` header value -> lower-case host without port; None if malformed.

    ``example.com:8321`` -> ``example.com``; ``[::1]:8321`` -> ``[::1]``.
    """
    value = value.strip().lower()
    if not value or any(c in value for c in " /\\@?#"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        rest = value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return value[: end + 1]
    name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name.rstrip(".") or None


class HostGuard:
    """Pure ASGI middleware: 400 without a usable Host, 421 for a host not allowed."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        names = [n.strip().lower() for n in allowed_hosts if n.strip()]
        self.any_host = "*" in names
        self.exact = frozenset(self._bracket(n) for n in names if not n.startswith("*."))
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # ".corp.example"
        self.allowed = names

    @staticmethod
    def _bracket(name: str) -> str:
        # A bare IPv6 address in the config matches the bracketed form of the header.
        return f"[{name}]" if ":" in name and not name.startswith("[") else name

    def is_allowed(self, host: str) -> bool:
        if self.any_host or host in self.exact:
            return True
        return bool(self.suffixes) and host.endswith(self.suffixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any_host or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope.get("headers") or [] if k == b"host"), None)
        host = host_name(raw.decode("latin-1")) if raw is not None else None
        if host is None:
            await _reject(
                send, 400, "the request has no valid Host header", "invalid_host_header"
            )
            return
        if not self.is_allowed(host):
            await _reject(
                send,
                421,
                f"this server does not answer for host {host!r}; it answers for "
                f"{', '.join(self.allowed)}. To reach it by this name, add it to "
                "server.allowed_hosts in the run config (\"*\" turns the check off)",
                "host_not_allowed",
            )
            return
        await self.app(scope, receive, send)


async def _reject(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None,
                   "code": code}}
    ).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": body})
