"""The service container: planning, store checks, provider protocol checks, order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fnstack.config import RunConfig, parse_config
from fnstack.errors import ConfigError
from fnstack.services import Service, ServiceContext, ServiceSpec, StoreNeed, available_services
from fnstack.spec import Api
from fnstack.stack import Stack, plan_services
from tests.support.fake_openai import FakeOpenAI


def _config(tmp: Path, *, stores: dict[str, Any] | None = None,
            providers: dict[str, Any] | None = None) -> RunConfig:
    data: dict[str, Any] = {
        "storage": {
            "backends": {"kv": {"type": "kv_sqlite", "db_path": str(tmp / "kv.db")},
                         "blob": {"type": "blob_localfs", "root": str(tmp / "blobs")}},
            "stores": stores if stores is not None else {
                "registry": {"backend": "kv", "namespace": "registry"}},
        },
    }
    if providers:
        data["providers"] = providers
    return parse_config(data, env={})


events: list[str] = []


class _Recorder(Service):
    def __init__(self, name: str, ctx: ServiceContext) -> None:
        self.name = name
        self.deps = ctx.deps

    async def start(self) -> None:
        events.append(f"start {self.name}")

    async def close(self) -> None:
        events.append(f"close {self.name}")


def _spec(name: str, *, apis: tuple[Api, ...] = (), depends: tuple[str, ...] = (),
          stores: tuple[StoreNeed, ...] = ()) -> ServiceSpec:
    async def build(ctx: ServiceContext) -> Service:
        return _Recorder(name, ctx)

    return ServiceSpec(name=name, apis=apis, factory=build, depends=depends, stores=stores)


def test_dependencies_are_built_first_and_closed_last(tmp_path: Path) -> None:
    specs = {
        "a": _spec("a", apis=(Api.files,), depends=("b",)),
        "b": _spec("b", depends=("c",)),
        "c": _spec("c"),
        "unrelated": _spec("unrelated", apis=(Api.batches,)),
    }
    order, routed = plan_services([Api.files], specs)
    assert [s.name for s in order] == ["c", "b", "a"]
    assert [s.name for s in routed] == ["a"]


async def test_start_and_shutdown_order(tmp_path: Path) -> None:
    events.clear()
    specs = {"a": _spec("a", apis=(Api.files,), depends=("b",)), "b": _spec("b")}
    stack = Stack(_config(tmp_path), [Api.files], specs=specs)
    a = await stack.service("a")
    assert a.deps["b"] is await stack.service("b")
    await stack.shutdown()
    assert events == ["start b", "start a", "close a", "close b"]


def test_cycle_is_a_start_up_error_naming_it(tmp_path: Path) -> None:
    specs = {"a": _spec("a", apis=(Api.files,), depends=("b",)),
             "b": _spec("b", depends=("a",))}
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        Stack(_config(tmp_path), [Api.files], specs=specs)


def test_missing_dependency_is_a_start_up_error(tmp_path: Path) -> None:
    specs = {"a": _spec("a", apis=(Api.files,), depends=("nope",))}
    with pytest.raises(ConfigError, match="'a' depends on 'nope'"):
        Stack(_config(tmp_path), [Api.files], specs=specs)


def test_missing_or_wrong_store_is_a_start_up_error(tmp_path: Path) -> None:
    specs = {"a": _spec("a", apis=(Api.files,), stores=(StoreNeed("files", "blob"),))}
    with pytest.raises(ConfigError, match="needs a blob store named 'files'") as missing:
        Stack(_config(tmp_path), [Api.files], specs=specs)
    assert missing.value.path == "storage.stores.files"
    wrong = {"files": {"backend": "kv", "namespace": "files"}}
    with pytest.raises(ConfigError, match="to be a blob store"):
        Stack(_config(tmp_path, stores=wrong), [Api.files], specs=specs)
    # An optional store may be absent.
    ok = {"a": _spec("a", apis=(Api.files,),
                     stores=(StoreNeed("files", "blob", required=False),))}
    Stack(_config(tmp_path), [Api.files], specs=ok)


def test_the_real_services_check_their_stores(tmp_path: Path) -> None:
    # The models service needs the registry store: missing, start-up stops naming it.
    with pytest.raises(ConfigError, match="models service needs a kv store named 'registry'"):
        Stack(_config(tmp_path, stores={}), [Api.models])


def test_admin_builds_no_provider(tmp_path: Path) -> None:
    providers = {"inference": [{"provider_id": "up", "provider_type": "remote::openai",
                                "config": {"base_url": "http://127.0.0.1:9/v1"}}]}
    admin = Stack(_config(tmp_path, providers=providers), [Api.providers, Api.inspect])
    assert admin.providers == {}
    assert [s.name for s in admin.build_order] == ["admin"]
    inference = Stack(_config(tmp_path, providers=providers), [Api.inference])
    assert list(inference.providers) == ["up"]
    order = [s.name for s in inference.build_order]
    # Every service of the inference group, each after what it depends on.
    assert {"models", "inference", "chat_completions"} <= set(order)
    for spec in inference.build_order:
        assert all(order.index(dep) < order.index(spec.name) for dep in spec.depends)
    assert {s.name for s in inference.routed} >= {"inference", "chat_completions"}


def test_default_serves_what_the_config_can_run(tmp_path: Path) -> None:
    # No `apis:` in the config: a service whose stores or providers are missing is not
    # served (and not an error); asked for explicitly, it is a start-up error.
    from fnstack.stack import served_apis

    bare = _config(tmp_path, stores={"registry": {"backend": "kv", "namespace": "r"}})
    apis = served_apis(bare)
    assert Api.models not in apis  # no inference provider to route to
    assert Api.keys in apis and Api.providers in apis
    assert Api.vector_io not in apis  # no vector store records, no vector_io provider
    with pytest.raises(ConfigError, match="vector_stores service needs a kv store"):
        Stack(bare, [Api.vector_io])


async def test_provider_missing_a_method_is_a_start_up_error(tmp_path: Path) -> None:
    from fnstack.api.inference import InferenceProvider

    class Half:
        async def list_models(self) -> list[Any]:
            return []

        async def shutdown(self) -> None:
            return None

    async def build(ctx: ServiceContext) -> Service:
        return Service()

    specs = {"x": ServiceSpec(name="x", apis=(Api.inference,), factory=build,
                              provider_api=Api.inference,
                              provider_protocol=InferenceProvider)}
    with FakeOpenAI() as fake:
        providers = {"inference": [{"provider_id": "up", "provider_type": "remote::openai",
                                    "config": {"base_url": fake.base_url}}]}
        stack = Stack(_config(tmp_path, providers=providers), [Api.inference], specs=specs)
        stack.providers["up"].spec = stack.providers["up"].spec.__class__(
            **{**stack.providers["up"].spec.__dict__, "factory": _half_factory(Half)}
        )
        with pytest.raises(TypeError, match=r"provider 'up' .* missing chat_completion, "
                                            r"completion, embeddings"):
            await stack.start()
        await stack.shutdown()


def _half_factory(cls: type) -> Any:
    async def factory(config: Any, ctx: Any) -> Any:
        return cls()

    return factory


def test_every_registered_service_names_itself() -> None:
    specs = available_services()
    assert {"admin", "models", "inference", "chat_completions", "keys"} <= set(specs)
    for name, spec in specs.items():
        assert spec.name == name
        # A service serves routes, or exists only as another's in-process dependency
        # (tool_runtime: the web_search tool of the Responses API).
        used = any(name in (*other.depends, *other.optional) for other in specs.values())
        assert spec.router is not None or used, name


def test_model_providers_declare_their_warmup_hook() -> None:
    # `fnstack run` loads models at start only through declared hooks.
    from fnstack.spec import load_spec

    for provider_type in ("inline::reference", "inline::onnx-embeddings"):
        spec = load_spec(provider_type)
        assert "warmup" in spec.hooks, provider_type
        assert callable(spec.factory)
