"""The run configuration: one YAML file, environment substitution, pydantic validation.

Substitution happens on the parsed YAML, string by string, before validation::

    ${env.NAME}            NAME's value; unset -> start-up stops, naming NAME and the key
    ${env.NAME:=default}   NAME when set and non-empty, else default
    ${env.NAME:+value}     value when NAME is set (non-empty), else ""

Every error names the key path at fault, e.g. ``providers.inference[0].config.base_url``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fnstack.access import AccessRule
from fnstack.auth import AuthConfig
from fnstack.errors import ConfigError
from fnstack.quotas import QuotaConfig
from fnstack.spec import CORE_APIS, Api, load_spec
from fnstack.storage import StorageConfig

__all__ = [
    "ModelInput",
    "ProviderConfig",
    "RunConfig",
    "ServerConfig",
    "available_distributions",
    "load_config",
    "resolve_config_path",
]

_ENV = re.compile(r"\$\{env\.([A-Za-z_][A-Za-z0-9_]*)(?:(:=|:\+)([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=1, le=65535)
    # Larger bodies get 413. Lambda's own synchronous limit is 6 MB.
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=600.0, gt=0)
    # The rest applies to `fnstack run` only (see fnstack/server.py); on Lambda, API
    # Gateway owns the connection. Slow clients: the request line and headers must
    # arrive within header_timeout_s; the body gets body_timeout_s, extended by one
    # second per body_min_rate bytes received (a body dripped slower, or shorter than
    # its Content-Length, gets 408 and the connection closed); an idle keep-alive
    # connection is closed after idle_timeout_s. One client address holds at most
    # max_connections_per_client connections (more are answered 429 and closed; behind
    # a reverse proxy every client has the proxy's address: raise it there).
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=20.0, gt=0)
    body_min_rate: int = Field(default=500, ge=1, description="bytes per second")
    idle_timeout_s: float = Field(default=5.0, gt=0)
    max_connections_per_client: int = Field(default=64, ge=1)
    # On SIGTERM/SIGINT: stop accepting, let in-flight requests finish for this long,
    # then end the rest with a clean 503 (a stream with an error event), flush stored
    # writes and exit.
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Host names the server answers for (DNS rebinding protection); None: 127.0.0.1,
    # localhost, [::1] and the bind host. "*" allows any; "*.example.com" a domain.
    allowed_hosts: list[str] | None = None


class ProviderConfig(_Strict):
    provider_id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    provider_type: str
    config: dict[str, Any] = {}


class ModelInput(_Strict):
    """A model registered by the run config or by ``POST /v1/models``."""

    model_id: str = Field(min_length=1, max_length=256)
    provider_id: str | None = None
    provider_model_id: str | None = None
    model_type: Literal["llm", "embedding"] = "llm"
    metadata: dict[str, Any] = {}


class ShieldInput(_Strict):
    """A shield registered by the run config (``POST /v1/shields`` registers more)."""

    shield_id: str = Field(min_length=1, max_length=256)
    provider_id: str | None = None
    provider_shield_id: str | None = None
    params: dict[str, Any] = {}


class RegisteredResources(_Strict):
    models: list[ModelInput] = []
    shields: list[ShieldInput] = []


class RegistryConfig(_Strict):
    # How long what providers report (their /models) is trusted before asking again.
    refresh_ttl_s: float = Field(default=300.0, ge=0)
    # How long a lookup in the registry store (models registered with POST /v1/models)
    # is reused, found or not. It saves a store read on every inference request; the
    # price is that a model registered or deleted through *another* process (another
    # Lambda function) is seen here up to this many seconds late. 0: read every time.
    lookup_ttl_s: float = Field(default=2.0, ge=0, le=60)


class QueueConfig(_Strict):
    """A work queue (batch jobs). ``local`` runs jobs in-process; ``sqs`` enqueues."""

    type: Literal["local", "sqs"] = "local"
    url: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    @field_validator("url", "region", "endpoint_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class InferenceStoreConfig(_Strict):
    """How chat completions are stored (the ``inference`` store)."""

    # queue: N writer tasks, the request never waits on storage (local server).
    # sync: written before the response completes (Lambda freezes after it).
    # auto: sync when running on Lambda, else queue.
    write_mode: Literal["auto", "queue", "sync"] = "auto"
    writers: int = Field(default=4, ge=1, le=64)
    max_pending: int = Field(default=10_000, ge=1)
    # OpenAI stores only with `store: true`; fnstack keeps a history unless `store: false`.
    store_by_default: bool = True


class ResponsesConfig(_Strict):
    """The Responses API's agent loop (docs/responses.md)."""

    # Model calls one response may make; past it the response ends ``incomplete``.
    max_inference_calls: int = Field(default=10, ge=1, le=1000)
    # Seconds a background run works before it re-enqueues the rest (Lambda: 120 s).
    run_budget_s: float = Field(default=80.0, gt=0)


class BatchesConfig(_Strict):
    """How the batch worker runs a job (docs/batches.md)."""

    # Requests of one batch in flight at once.
    concurrency: int = Field(default=8, ge=1, le=256)
    # Lines per checkpoint: a redelivered job redoes at most one chunk.
    chunk_lines: int = Field(default=32, ge=1, le=10_000)
    # Seconds one run works before it re-enqueues the rest (Lambda's timeout is 120 s).
    run_budget_s: float = Field(default=80.0, gt=0)
    # Lines one input file may hold (OpenAI: 50,000).
    max_lines: int = Field(default=50_000, ge=1)


class FilesConfig(_Strict):
    """Limits of the files and uploads APIs (413 past them)."""

    # One POST /v1/files body. On AWS every request passes through a function (6 MB).
    max_file_bytes: int = Field(default=512 * 1024 * 1024, ge=1)
    # A file assembled through the Uploads API (OpenAI: 8 GB).
    max_upload_bytes: int = Field(default=8 * 1024**3, ge=1)
    # One part of an upload (OpenAI: 64 MB). On AWS keep it under Lambda's 6 MB payload
    # after base64 (API Gateway sends multipart bodies base64-encoded): about 4 MB.
    max_part_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    # An upload not completed this long after its creation expires (OpenAI: an hour).
    upload_ttl_s: int = Field(default=3600, ge=1)
    # File content larger than this is answered with a redirect to a short-lived URL of
    # the blob store (S3: presigned), where it has one; None: always streamed. On AWS a
    # response passes through Lambda's 6 MB (binary content base64-encoded).
    redirect_content_bytes: int | None = Field(default=None, ge=0)


class LoggingConfig(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class RunConfig(_Strict):
    version: int = 1
    distribution: str = "custom"
    apis: list[Api] | None = None
    server: ServerConfig = ServerConfig()
    providers: dict[Api, list[ProviderConfig]] = {}
    storage: StorageConfig = StorageConfig()
    registered_resources: RegisteredResources = RegisteredResources()
    registry: RegistryConfig = RegistryConfig()
    queues: dict[str, QueueConfig] = {}
    inference_store: InferenceStoreConfig = InferenceStoreConfig()
    files: FilesConfig = FilesConfig()
    batches: BatchesConfig = BatchesConfig()
    responses: ResponsesConfig = ResponsesConfig()
    logging: LoggingConfig = LoggingConfig()
    # Permit/forbid rules, first match wins (fnstack/access.py); None: the default policy.
    access_policy: list[AccessRule] | None = None
    # Requests and tokens per principal or attribute value per window; none by default.
    quotas: QuotaConfig = QuotaConfig()
    # Who may call: api_keys, jwt, custom, authorizer, or none (see docs/auth.md).
    auth: AuthConfig = AuthConfig()
    # Where providers cache derived artefacts (dequantized weights, ONNX graphs).
    cache_dir: str = "~/.cache/fnstack"

    @field_validator("providers")
    @classmethod
    def _no_core_providers(
        cls, value: dict[Api, list[ProviderConfig]]
    ) -> dict[Api, list[ProviderConfig]]:
        for api in value:
            if api in CORE_APIS:
                raise ValueError(f"the {api.value} API is served by fnstack itself, not providers")
        return value

    def all_providers(self) -> list[tuple[Api, int, ProviderConfig]]:
        return [(api, i, p) for api, ps in self.providers.items() for i, p in enumerate(ps)]


def _substitute(node: Any, path: str, env: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, _join(path, str(k)), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":=":
            return value if value else (arg or "")
        if op == ":+":
            return (arg or "") if value else ""
        if value is None:
            raise ConfigError(
                f"environment variable {name} is not set (used as ${{env.{name}}}); "
                f"set it, or write ${{env.{name}:=default}}",
                path=path or None,
            )
        return value

    result = _ENV.sub(repl, node)
    if m := re.search(r"\$\{[^}]*\}", result):
        raise ConfigError(f"malformed substitution {m.group(0)!r}", path=path or None)
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def format_loc(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """('providers', 'inference', 0, 'config') -> 'providers.inference[0].config'."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = _join(out, part)
    return out


def _user_loc(loc: tuple[int | str, ...], data: Any) -> tuple[int | str, ...]:
    """Drop the parts pydantic adds that the user never wrote (union tags, validators)."""
    out: list[int | str] = []
    node = data
    for part in loc:
        # A discriminated union's tag ("kv_sqlite") names the variant, not a key.
        if (
            isinstance(node, dict)
            and isinstance(part, str)
            and part not in node
            and (part in (node.get("type"), node.get("role")) or part.startswith("function-"))
        ):
            continue
        out.append(part)
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            node = None
    return tuple(out)


def _from_validation(
    exc: ValidationError, source: str | None, prefix: str = "", data: Any = None
) -> ConfigError:
    first = exc.errors()[0]
    path = format_loc(_user_loc(first["loc"], data), prefix)
    more = len(exc.errors()) - 1
    extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return ConfigError(first["msg"] + extra, path=path or None, source=source)


def parse_config(
    data: Any, *, source: str | None = None, env: Mapping[str, str] | None = None
) -> RunConfig:
    """Validate a parsed YAML document into a RunConfig, checking providers and stores."""
    if not isinstance(data, dict):
        raise ConfigError("the document must be a mapping", source=source)
    try:
        data = _substitute(data, "", os.environ if env is None else env)
    except ConfigError as exc:
        raise ConfigError(exc.detail, path=exc.path, source=source) from None
    _drop_disabled_providers(data)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(exc, source, data=data) from None
    for path, message in config.storage.check():
        raise ConfigError(message, path=path, source=source)
    _check_providers(config, source)
    return config


def _check_providers(config: RunConfig, source: str | None) -> None:
    seen: set[str] = set()
    for api, i, p in config.all_providers():
        path = f"providers.{api.value}[{i}]"
        if p.provider_id in seen:
            raise ConfigError(f"duplicate provider_id {p.provider_id!r}", path=path, source=source)
        seen.add(p.provider_id)
        try:
            spec = load_spec(p.provider_type)
        except (LookupError, TypeError) as exc:
            raise ConfigError(str(exc), path=f"{path}.provider_type", source=source) from None
        if spec.api != api:
            raise ConfigError(
                f"{p.provider_type} is a {spec.api.value} provider, not {api.value}",
                path=f"{path}.provider_type",
                source=source,
            )
        try:
            spec.config_class.model_validate(p.config)
        except ValidationError as exc:
            raise _from_validation(exc, source, f"{path}.config", p.config) from None
    inference_ids = [p.provider_id for p in config.providers.get(Api.inference, [])]
    for i, m in enumerate(config.registered_resources.models):
        if m.provider_id is None and len(inference_ids) != 1:
            raise ConfigError(
                f"{len(inference_ids)} inference providers are configured; say which one "
                "serves this model",
                path=f"registered_resources.models[{i}].provider_id",
                source=source,
            )
        if m.provider_id is not None and m.provider_id not in inference_ids:
            raise ConfigError(
                f"unknown provider {m.provider_id!r}; configured: {', '.join(sorted(seen))}",
                path=f"registered_resources.models[{i}].provider_id",
                source=source,
            )


def _drop_disabled_providers(data: dict[str, Any]) -> None:
    """A provider whose provider_id substitutes to "" is switched off.

    This is how a distribution offers optional providers:
    ``provider_id: ${env.OPENAI_BASE_URL:+openai}`` exists only when the variable is set.
    """
    providers = data.get("providers")
    if not isinstance(providers, dict):
        return
    for api, entries in providers.items():
        if isinstance(entries, list):
            providers[api] = [
                e for e in entries if not (isinstance(e, dict) and e.get("provider_id") == "")
            ]


def available_distributions() -> list[str]:
    root = resources.files("fnstack") / "distributions"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A distribution name (``local``, ``aws``) or a path to a YAML file."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"no such file: {path}")
        return path
    if name_or_path in available_distributions():
        return Path(str(resources.files("fnstack") / "distributions" / f"{name_or_path}.yaml"))
    raise ConfigError(
        f"{name_or_path!r} is neither a YAML file nor a distribution; "
        f"distributions: {', '.join(available_distributions())} (see `fnstack list-distributions`)"
    )


def load_config(name_or_path: str, env: Mapping[str, str] | None = None) -> RunConfig:
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source=str(path)) from None
    return parse_config(data, source=str(path), env=env)
