"""The running stack: a small container of services, their providers and stores.

``Stack(config, apis)`` plans which services to build: those whose API groups are
served, plus everything they depend on, in dependency order. Planning happens at
construction, so a missing dependency, a cycle or a store the config lacks stops
start-up with a `ConfigError` naming it (never a 500 at request time). Only the
providers of the built services are built; the admin function builds none.

In a Lambda function the stack is built at module scope and started lazily on the
first request (Mangum reuses one event loop across invocations, so clients bound to it
survive); in the local server it starts in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fnstack.access import AccessPolicy, policy_for
from fnstack.config import ProviderConfig, RunConfig
from fnstack.errors import ConfigError, NotFoundError
from fnstack.jobs import open_queue
from fnstack.quotas import Quotas
from fnstack.services import Service, ServiceContext, ServiceSpec, available_services
from fnstack.spec import Api, ProviderContext, ProviderSpec, check_implements, load_spec
from fnstack.storage import BLOB_TYPES, KV_TYPES, Stores

__all__ = ["ProviderHandle", "Stack", "plan_services", "served_apis"]

log = logging.getLogger("fnstack.stack")


@dataclass
class ProviderHandle:
    api: Api
    config: ProviderConfig
    spec: ProviderSpec
    instance: Any = None


def served_apis(config: RunConfig, apis: Iterable[Api | str] | None = None) -> list[Api]:
    """The API groups to serve: those asked for (a Lambda function's, or the config's
    ``apis:``), else every one whose services the config can run: their providers and
    their required stores are configured, and so are their dependencies'. An API asked
    for explicitly is served or start-up stops naming what is missing; by default a
    config simply serves what it supports (one with no ``batches`` store, no batches)."""
    if apis is not None:
        return [Api(a) for a in apis]
    if config.apis is not None:
        return list(config.apis)
    specs = available_services()
    out: list[Api] = []
    for spec in specs.values():
        if _runnable(config, spec, specs, set()):
            out += [a for a in spec.apis if a not in out]
    return out


def _runnable(config: RunConfig, spec: ServiceSpec, specs: Mapping[str, ServiceSpec],
              seen: set[str]) -> bool:
    if spec.name in seen:
        return True  # a cycle: planning reports it
    seen.add(spec.name)
    if spec.provider_api is not None and not config.providers.get(spec.provider_api):
        return False
    if any(need.required and need.name not in config.storage.stores for need in spec.stores):
        return False
    return all(dep in specs and _runnable(config, specs[dep], specs, seen)
               for dep in spec.depends)


def plan_services(
    apis: Iterable[Api], specs: Mapping[str, ServiceSpec], config: RunConfig | None = None
) -> tuple[list[ServiceSpec], list[ServiceSpec]]:
    """(services to build in dependency order, services whose routes are served).

    A spec's ``optional`` services are planned when registered and (given ``config``)
    runnable under it."""
    wanted = set(apis)
    routed = [s for s in specs.values() if wanted.intersection(s.apis)]
    order: list[ServiceSpec] = []
    state: dict[str, str] = {}

    def visit(spec: ServiceSpec, path: list[str]) -> None:
        if state.get(spec.name) == "done":
            return
        if state.get(spec.name) == "visiting":
            cycle = " -> ".join([*path[path.index(spec.name):], spec.name])
            raise ConfigError(f"services depend on each other in a cycle: {cycle}")
        state[spec.name] = "visiting"
        for dep in spec.depends:
            if dep not in specs:
                raise ConfigError(
                    f"service {spec.name!r} depends on {dep!r}, which is not registered "
                    f"(registered: {', '.join(sorted(specs))})"
                )
            visit(specs[dep], [*path, spec.name])
        for dep in spec.optional:
            if dep in specs and (config is None or _runnable(config, specs[dep], specs, set())):
                visit(specs[dep], [*path, spec.name])
        state[spec.name] = "done"
        order.append(spec)

    for spec in routed:
        visit(spec, [])
    return order, routed


def _check_stores(config: RunConfig, specs: Iterable[ServiceSpec]) -> None:
    for spec in specs:
        for need in spec.stores:
            ref = config.storage.stores.get(need.name)
            if ref is None:
                if need.required:
                    raise ConfigError(
                        f"the {spec.name} service needs a {need.family} store named "
                        f"{need.name!r}; add it under storage.stores",
                        path=f"storage.stores.{need.name}",
                    )
                continue
            backend = config.storage.backends[ref.backend]
            family_types = KV_TYPES if need.family == "kv" else BLOB_TYPES
            if backend.type not in family_types:
                raise ConfigError(
                    f"the {spec.name} service needs {need.name!r} to be a {need.family} store, "
                    f"but its backend {ref.backend!r} is {backend.type}",
                    path=f"storage.stores.{need.name}.backend",
                )


class Stack:
    def __init__(
        self,
        config: RunConfig,
        apis: Iterable[Api | str] | None = None,
        *,
        specs: Mapping[str, ServiceSpec] | None = None,
    ) -> None:
        self.config = config
        self.apis = served_apis(config, apis)
        self.specs = dict(specs) if specs is not None else available_services()
        self.build_order, self.routed = plan_services(self.apis, self.specs, config)
        _check_stores(config, self.build_order)
        self.stores = Stores(config.storage)
        self.policy = _policy(config)
        self.quotas = Quotas.open(config.quotas, self.stores) if config.quotas.rules else None
        provider_apis = {s.provider_api for s in self.build_order if s.provider_api}
        self.providers: dict[str, ProviderHandle] = {}
        for api, _, p in config.all_providers():
            if api in provider_apis:
                self.providers[p.provider_id] = ProviderHandle(api, p, load_spec(p.provider_type))
        self._services: dict[str, Service] = {}
        self.jobs = open_queue(config.queues, self.run_job)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._lock = asyncio.Lock()
        self._started = False
        self.cache_dir = Path(config.cache_dir).expanduser()

    async def start(self, *, warmup: bool = False) -> None:
        """Build the providers, then the services in dependency order.

        ``warmup`` runs the providers' declared warmup hooks (loads models now)."""
        async with self._lock:
            if self._started:
                return
            for pid, handle in self.providers.items():
                pctx = ProviderContext(provider_id=pid, cache_dir=self.cache_dir,
                                       stores=self.stores)
                cfg = handle.spec.config_class.model_validate(handle.config.config)
                handle.instance = await handle.spec.factory(cfg, pctx)
                log.info("provider ready", extra={"provider_id": pid})
            for spec in self.build_order:
                providers = {pid: h.instance for pid, h in self.providers.items()
                             if h.api == spec.provider_api}
                if spec.provider_protocol is not None:
                    for pid, instance in providers.items():
                        kind = self.providers[pid].spec.provider_type
                        check_implements(instance, spec.provider_protocol,
                                         f"provider {pid!r} ({kind})")
                ctx = ServiceContext(
                    config=self.config,
                    stores=self.stores,
                    policy=self.policy,
                    deps={d: self._services[d] for d in (*spec.depends, *spec.optional)
                          if d in self._services},
                    providers=providers,
                    quotas=self.quotas,
                    jobs=self.jobs,
                    provider_specs={pid: self.providers[pid].spec for pid in providers},
                )
                service = await spec.factory(ctx)
                await service.start()
                self._services[spec.name] = service
            self._started = True
        if warmup:
            for handle in self.providers.values():
                if "warmup" in handle.spec.hooks:
                    await handle.instance.warmup()

    async def ensure_started(self) -> None:
        if not self._started:
            await self.start()

    async def service(self, name: str) -> Any:
        """The built service ``name`` (starting the stack on first use)."""
        await self.ensure_started()
        try:
            return self._services[name]
        except KeyError:
            raise NotFoundError(
                f"the {name} service is not served by this function", code="not_served"
            ) from None

    async def run_job(self, service: str, name: str, args: dict[str, Any]) -> None:
        """Run a background job: by the local job queue, or by the worker function."""
        svc: Service = await self.service(service)
        await svc.run_job(name, args)

    async def provider(self, provider_id: str) -> Any:
        await self.ensure_started()
        handle = self.providers.get(provider_id)
        if handle is None:
            raise NotFoundError(
                f"provider {provider_id!r} not found; see GET /v1/providers", param="provider_id"
            )
        return handle.instance

    def add_closer(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run ``close`` at shutdown (before the services): for what the app builds
        around the stack, such as the authenticator's HTTP clients."""
        self._closers.append(close)

    async def shutdown(self) -> None:
        async with self._lock:
            await self.jobs.close()
            for close in self._closers:
                try:
                    await close()
                except Exception:
                    log.exception("close failed")
            # Services first, newest first: the history drains its writes while the
            # providers and stores it writes through are still there.
            for name in reversed(list(self._services)):
                try:
                    await self._services[name].close()
                except Exception:
                    log.exception("service close failed", extra={"service": name})
            self._services.clear()
            for pid, handle in self.providers.items():
                if handle.instance is not None:
                    try:
                        await handle.instance.shutdown()
                    except Exception:
                        log.exception("provider shutdown failed", extra={"provider_id": pid})
                handle.instance = None
            await self.stores.close()
            self._started = False


def _policy(config: RunConfig) -> AccessPolicy:
    return policy_for(config.access_policy, auth_enabled=config.auth.type != "none")
