"""The provider contract: what a provider is and how it registers.

A provider is one module exposing ``spec = ProviderSpec(...)``. It registers under the
``fnstack.providers`` entry-point group, named by its provider type::

    [project.entry-points."fnstack.providers"]
    "remote::openai" = "providers.inference.openai_compat:spec"

Built-in providers register exactly this way, so the third-party path is always the
one exercised. Only the providers a run config names are imported, and only when the
app starts: a provider module must keep heavy imports (torch, onnxruntime, boto3)
inside its factory or implementation, never at module top level.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel

from fnstack.api.common import ProviderModel

if TYPE_CHECKING:
    from fnstack.storage import Stores

__all__ = [
    "ENTRY_POINT_GROUP",
    "Api",
    "Provider",
    "ProviderContext",
    "ProviderModel",
    "ProviderSpec",
    "available_specs",
    "check_implements",
    "load_spec",
]

ENTRY_POINT_GROUP = "fnstack.providers"


class Api(StrEnum):
    """The API groups. Those with providers are configured under ``providers:``."""

    inference = "inference"
    models = "models"
    providers = "providers"
    inspect = "inspect"
    files = "files"
    vector_io = "vector_io"
    responses = "responses"
    conversations = "conversations"
    safety = "safety"
    batches = "batches"
    tool_runtime = "tool_runtime"
    prompts = "prompts"
    datasets = "datasets"
    scoring = "scoring"
    eval = "eval"
    post_training = "post_training"
    keys = "keys"


# APIs served by the core itself, with no provider behind them.
CORE_APIS = frozenset({Api.models, Api.providers, Api.inspect, Api.keys})

# Optional provider hooks. A provider declares the ones it implements in its spec
# (``hooks=("warmup",)``); callers use only declared hooks, never probe with hasattr.
#   warmup:    ``async warmup()`` loads models now (the local server calls it at start)
#   tokenizer: ``async tokenizer(model) -> tokenizers.Tokenizer`` the model's own tokenizer
#              (token-aware chunking of documents for the model that embeds them)
#   inference: ``bind_inference(chat)`` takes the function through which the provider
#              calls a registered LLM (``chat(request) -> ChatCompletion``): the
#              llm-judge safety provider classifies with any model the stack routes to
Hook = Literal["warmup", "tokenizer", "inference"]


@dataclass(frozen=True)
class ProviderContext:
    """What a provider factory gets besides its own config."""

    provider_id: str
    cache_dir: Path
    stores: Stores | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Provider(Protocol):
    """What every provider instance offers, whatever its API."""

    async def list_models(self) -> list[ProviderModel]:
        """The models this provider serves now; [] when it serves none or cannot tell."""
        ...

    async def shutdown(self) -> None:
        """Release clients, threads and memory. Called once when the app stops."""
        ...


ProviderFactory = Callable[[Any, ProviderContext], Awaitable[Any]]


@dataclass(frozen=True)
class ProviderSpec:
    """One provider type: its API, its config model and how to build it."""

    api: Api
    provider_type: str  # "inline::reference", "remote::openai"
    config_class: type[BaseModel]
    factory: ProviderFactory
    description: str = ""
    # Extras of the fnstack distribution this provider needs (e.g. "models", "aws").
    extras: tuple[str, ...] = ()
    # Optional hooks this provider implements (see `Hook`).
    hooks: tuple[Hook, ...] = ()

    def __post_init__(self) -> None:
        kind, _, name = self.provider_type.partition("::")
        if kind not in ("inline", "remote") or not name:
            raise ValueError(
                "provider_type must be 'inline::NAME' or 'remote::NAME', "
                f"got {self.provider_type!r}"
            )


@cache
def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_spec(provider_type: str) -> ProviderSpec:
    """Import the one provider module registered as ``provider_type``."""
    eps = _entry_points()
    if provider_type not in eps:
        known = ", ".join(sorted(eps)) or "none (is fnstack installed? run `pip install -e .`)"
        raise LookupError(f"no provider registered as {provider_type!r}; known: {known}")
    spec = eps[provider_type].load()
    if not isinstance(spec, ProviderSpec):
        raise TypeError(f"entry point {provider_type!r} does not point to a ProviderSpec")
    if spec.provider_type != provider_type:
        raise TypeError(
            f"entry point {provider_type!r} points to a spec for {spec.provider_type!r}"
        )
    return spec


def protocol_methods(protocol: type) -> list[str]:
    """The methods a Protocol class declares (its own and its bases'), by name."""
    names: list[str] = []
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or cls.__name__ == "Generic":
            continue
        for name, value in vars(cls).items():
            if not name.startswith("_") and callable(value) and name not in names:
                names.append(name)
    return names


def check_implements(instance: object, protocol: type, what: str) -> None:
    """Raise TypeError naming every method of ``protocol`` that ``instance`` lacks."""
    missing = [n for n in protocol_methods(protocol) if not callable(getattr(instance, n, None))]
    if missing:
        raise TypeError(
            f"{what} does not implement {protocol.__name__}: missing {', '.join(missing)}"
        )


def available_specs(api: Api | None = None) -> list[ProviderSpec]:
    """Every registered provider (imports each module: for the CLI, not the request path)."""
    specs = [load_spec(name) for name in sorted(_entry_points())]
    return [s for s in specs if api is None or s.api == api]
