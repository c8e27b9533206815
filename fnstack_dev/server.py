"""uvicorn for the emulated gateway, keeping the header names as the client spelled them.

ASGI servers lower-case header names; API Gateway passes them to Lambda as sent
(``X-Request-Id`` stays ``X-Request-Id``). h11 keeps the original spelling in
``raw_items()``: this protocol class puts it in the scope as ``fnstack.raw_headers``
before the request's task runs, and the gateway builds the event from it.
"""

from __future__ import annotations

from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["RawHeadersH11Protocol"]


class RawHeadersH11Protocol(H11Protocol):
    _fnstack_raw: list[tuple[bytes, bytes]] | None = None

    def handle_events(self) -> None:
        conn: Any = self.conn
        if not getattr(conn, "_fnstack_wrapped", False):
            next_event = conn.next_event

            def wrapped() -> Any:
                event = next_event()
                if isinstance(event, h11.Request):
                    self._fnstack_raw = list(event.headers.raw_items())
                return event

            conn.next_event = wrapped
            conn._fnstack_wrapped = True
        super().handle_events()
        # The request's task is created above but runs only after this returns.
        raw, self._fnstack_raw = self._fnstack_raw, None
        scope = getattr(self, "scope", None)
        if raw is not None and scope is not None:
            scope["fnstack.raw_headers"] = raw
