"""HTTP routes: thin routers that parse, call the service and serialize."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.types import Scope

from fnstack.storage import Owner

__all__ = ["caller", "json_response", "principal", "service"]

_ANONYMOUS = Owner()


def caller(scope: Scope) -> Owner:
    """Who is calling: set by the authentication middleware; anonymous when auth is off."""
    state = scope.get("state") or {}
    who = state.get("principal")
    return who if isinstance(who, Owner) else _ANONYMOUS


def principal(request: Request) -> Owner:
    return caller(request.scope)


async def service(request: Request, name: str) -> Any:
    """The built service ``name`` of this app's stack."""
    return await request.app.state.stack.service(name)


def json_response(model: BaseModel) -> Response:
    # Straight to bytes in pydantic-core: no intermediate dict for json.dumps to walk.
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")
