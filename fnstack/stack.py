"""The running stack: configured providers and stores, built once per process.

In a Lambda function the stack is built at module scope and started lazily on the
first request (Mangum reuses one event loop across invocations, so clients bound to it
survive); in the local server it starts in the app's lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fnstack.config import ProviderConfig, RunConfig
from fnstack.errors import NotFoundError
from fnstack.registry import Registry
from fnstack.spec import Api, ProviderContext, ProviderSpec, load_spec
from fnstack.storage import Stores

if TYPE_CHECKING:
    from fnstack.inference import InferenceService

__all__ = ["ProviderHandle", "Stack"]

log = logging.getLogger("fnstack.stack")


@dataclass
class ProviderHandle:
    api: Api
    config: ProviderConfig
    spec: ProviderSpec
    instance: Any = None


class Stack:
    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.stores = Stores(config.storage)
        self.providers: dict[str, ProviderHandle] = {}
        for api, _, p in config.all_providers():
            self.providers[p.provider_id] = ProviderHandle(api, p, load_spec(p.provider_type))
        self.registry = Registry(self)
        self._lock = asyncio.Lock()
        self._started = False
        self._inference: InferenceService | None = None
        self.cache_dir = Path(config.cache_dir).expanduser()

    @property
    def inference(self) -> InferenceService:
        # Built on first use: the admin and models functions never open its store.
        if self._inference is None:
            from fnstack.inference import InferenceService

            self._inference = InferenceService(self)
        return self._inference

    async def start(self, *, warmup: bool = False) -> None:
        """Build every provider (factories are cheap); ``warmup`` loads models now."""
        async with self._lock:
            if self._started:
                return
            cache_dir = self.cache_dir
            for pid, handle in self.providers.items():
                ctx = ProviderContext(provider_id=pid, cache_dir=cache_dir, stores=self.stores)
                cfg = handle.spec.config_class.model_validate(handle.config.config)
                handle.instance = await handle.spec.factory(cfg, ctx)
                log.info("provider ready", extra={"provider_id": pid})
            self._started = True
        if warmup:
            for handle in self.providers.values():
                if hasattr(handle.instance, "warmup"):
                    await handle.instance.warmup()

    async def ensure_started(self) -> None:
        if not self._started:
            await self.start()

    async def provider(self, provider_id: str) -> Any:
        await self.ensure_started()
        handle = self.providers.get(provider_id)
        if handle is None:
            raise NotFoundError(
                f"provider {provider_id!r} not found; see GET /v1/providers", param="provider_id"
            )
        return handle.instance

    def provider_ids(self, api: Api) -> list[str]:
        return [pid for pid, h in self.providers.items() if h.api == api]

    async def shutdown(self) -> None:
        async with self._lock:
            if self._inference is not None:
                # Drain queued history writes before providers and stores go away.
                await self._inference.close()
                self._inference = None
            for pid, handle in self.providers.items():
                if handle.instance is not None and hasattr(handle.instance, "shutdown"):
                    try:
                        await handle.instance.shutdown()
                    except Exception:
                        log.exception("provider shutdown failed", extra={"provider_id": pid})
                handle.instance = None
            await self.stores.close()
            self._started = False
