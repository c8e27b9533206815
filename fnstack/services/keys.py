"""The keys service: API keys over HTTP (``/v1/keys``), a fnstack extension.

Keys live hashed in the ``registry`` store (`fnstack.keys.KeyStore`); a new key's
value is answered once, by the create call, and never again. Every call asks the
access policy with the caller's principal: under the default policy only admins
create and revoke keys; another principal's key is a 404.
"""

from __future__ import annotations

from fastapi import APIRouter

from fnstack.errors import NotFoundError
from fnstack.keys import KeyInfo, KeyStore
from fnstack.records import Policy, authorize, readable
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed
from fnstack.spec import Api
from fnstack.storage import Owner

__all__ = ["KeysService", "spec"]

KIND = "key"


def _owner(info: KeyInfo) -> Owner:
    return Owner(info.principal, info.attributes)


class KeysService(Service):
    def __init__(self, keys: KeyStore, policy: Policy) -> None:
        self.keys = keys
        self.policy = policy

    async def create(
        self, user: Owner, name: str, principal: str | None,
        attributes: dict[str, list[str]] | None, roles: list[str] | None,
    ) -> tuple[KeyInfo, str]:
        who = principal or name
        authorize(self.policy, "create", KIND, name, Owner(who, attributes or {}), user)
        return await self.keys.create(name, principal=principal, attributes=attributes,
                                      roles=roles)

    async def list(self, user: Owner) -> list[KeyInfo]:
        own_only = self.policy.reads_only_own(KIND, user)
        infos = await self.keys.list(principal=user.principal if own_only else None)
        return [i for i in infos if readable(self.policy, KIND, i.id, _owner(i), user)]

    async def get(self, key_id: str, user: Owner) -> KeyInfo:
        try:
            info = await self.keys.get(key_id)
        except NotFoundError:
            info = None
        if info is None or not readable(self.policy, KIND, key_id, _owner(info), user):
            raise NotFoundError(f"key {key_id!r} not found", param="key_id")
        return info

    async def revoke(self, key_id: str, user: Owner) -> KeyInfo:
        info = await self.get(key_id, user)
        authorize(self.policy, "delete", KIND, key_id, _owner(info), user)
        return await self.keys.revoke(key_id)


async def _build(ctx: ServiceContext) -> KeysService:
    return KeysService(KeyStore(ctx.stores.kv("registry")), ctx.policy)


def _router() -> APIRouter:
    from fnstack.routes.keys import router

    return router


spec = ServiceSpec(
    name="keys",
    apis=(Api.keys,),
    factory=_build,
    router=_router,
    stores=(StoreNeed("registry"),),
    description="API keys: create (shown once), list, get, revoke",
)
