"""The admin service: providers and route inspection. It builds no provider: the
providers it describes are read from the run config."""

from __future__ import annotations

from fastapi import APIRouter

from fnstack.services import Service, ServiceContext, ServiceSpec
from fnstack.spec import Api

__all__ = ["spec"]


class AdminService(Service):
    pass


async def _build(ctx: ServiceContext) -> AdminService:
    return AdminService()


def _router() -> APIRouter:
    from fnstack.routes.admin import router

    return router


spec = ServiceSpec(
    name="admin",
    apis=(Api.providers, Api.inspect),
    factory=_build,
    router=_router,
    description="the providers of the deployment and its routes",
)
