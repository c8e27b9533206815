"""The service contract: what a service is and how it registers.

A service implements one API (or one half of one: inference generation and the stored
chat completion history are two services of the ``inference`` group). Its module
exposes ``spec = ServiceSpec(...)`` and registers under the ``fnstack.services``
entry-point group, exactly as providers register under ``fnstack.providers``::

    [project.entry-points."fnstack.services"]
    files = "fnstack.services.files:spec"

The spec declares everything the container needs to build the service without a
central table: the API groups whose routes it serves, the services it depends on, the
stores it needs, the providers it routes to, and its router. Dependencies arrive in the
factory's `ServiceContext`, typed by the api Protocols of the services they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from fnstack.spec import Api

if TYPE_CHECKING:
    from fastapi import APIRouter

    from fnstack.access import AccessPolicy
    from fnstack.config import RunConfig
    from fnstack.jobs import JobQueue
    from fnstack.quotas import Quotas
    from fnstack.spec import ProviderSpec
    from fnstack.storage import Stores

__all__ = [
    "SERVICE_ENTRY_POINT_GROUP",
    "Service",
    "ServiceContext",
    "ServiceSpec",
    "StoreNeed",
    "available_services",
]

SERVICE_ENTRY_POINT_GROUP = "fnstack.services"

T = TypeVar("T")


@dataclass(frozen=True)
class StoreNeed:
    """A store a service uses, by its name under ``storage.stores``."""

    name: str
    family: Literal["kv", "blob"] = "kv"
    # An optional store switches a feature off when absent (e.g. the chat history).
    required: bool = True


class Service:
    """Base of every service: optional start and close hooks, called by the container."""

    async def start(self) -> None:
        """Called once after construction, before the first request."""

    async def close(self) -> None:
        """Called once at shutdown, in reverse build order: drain, release."""

    async def run_job(self, name: str, args: dict[str, Any]) -> None:
        """Run the background job ``name`` this service submitted (`fnstack.jobs`)."""
        raise NotImplementedError(f"{type(self).__name__} runs no job {name!r}")


@dataclass(frozen=True)
class ServiceContext:
    """What a service factory gets: config, stores, policy, built dependencies, providers."""

    config: RunConfig
    stores: Stores
    policy: AccessPolicy
    deps: dict[str, Any]
    # provider_id -> provider instance, for the spec's ``provider_api``.
    providers: dict[str, Any]
    # Token budgets to charge usage to; None when no quota is configured.
    quotas: Quotas | None = None
    # Where background work goes (`fnstack.jobs`); the service runs it in ``run_job``.
    jobs: JobQueue | None = None
    # provider_id -> its spec, for the declared optional hooks.
    provider_specs: dict[str, ProviderSpec] = field(default_factory=dict)

    def dep(self, name: str, kind: type[T]) -> T:
        """The built dependency ``name``; ``kind`` is its api Protocol (for the type checker)."""
        service: T = self.deps[name]
        return service


ServiceFactory = Callable[[ServiceContext], Awaitable[Service]]


@dataclass(frozen=True)
class ServiceSpec:
    """One service: its name, the API groups it serves, what it needs, how to build it."""

    name: str
    apis: tuple[Api, ...]
    factory: ServiceFactory
    # The router serving this service's routes, imported only when the service is served.
    router: Callable[[], APIRouter] | None = None
    depends: tuple[str, ...] = ()
    # Services used when this config can run them (built first, then in ``deps``), absent
    # otherwise: a feature that needs one answers with its own error when it is missing.
    optional: tuple[str, ...] = ()
    stores: tuple[StoreNeed, ...] = ()
    # The providers it routes to; the container builds only these (and checks them
    # against ``provider_protocol``).
    provider_api: Api | None = None
    provider_protocol: type | None = None
    description: str = ""
    # Path prefixes whose routes read their body as a stream and enforce their own size
    # limit (file uploads): the server-wide ``server.max_body_bytes`` does not apply.
    streamed_bodies: tuple[str, ...] = ()


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=SERVICE_ENTRY_POINT_GROUP)}


@cache
def available_services() -> dict[str, ServiceSpec]:
    """Every registered service spec, by name (imports each service module: cheap)."""
    out: dict[str, ServiceSpec] = {}
    for name, ep in sorted(_entry_points().items()):
        spec = ep.load()
        if not isinstance(spec, ServiceSpec):
            raise TypeError(f"entry point {name!r} of {SERVICE_ENTRY_POINT_GROUP} is not a "
                            "ServiceSpec")
        if spec.name != name:
            raise TypeError(f"entry point {name!r} points to the spec of service {spec.name!r}")
        out[name] = spec
    if not out:
        raise LookupError(
            "no fnstack services registered; is fnstack installed? run `pip install -e .`"
        )
    return out
