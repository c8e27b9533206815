"""The ``fnstack`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from fnstack import __version__
from fnstack.errors import ConfigError
from fnstack.spec import Api

__all__ = ["main"]


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is in the `server` extra; fall back to plain text
        for row in rows:
            click.echo("  ".join(str(row.get(c, "")) for c in columns))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    Console().print(table)


@click.group()
@click.version_option(__version__, prog_name="fnstack")
def main() -> None:
    """fnstack: OpenAI-compatible APIs served by pluggable providers, serverless or local."""


@main.command()
@click.argument("config", default="local")
@click.option("--port", type=int, default=None, help="Port (default: server.port, 8321).")
@click.option("--host", default=None, help="Interface (default: server.host, 127.0.0.1).")
@click.option("--no-warmup", is_flag=True, help="Load models on first use instead of at start.")
@click.option("--insecure", is_flag=True,
              help="Serve without authentication on a non-loopback address (on purpose).")
def run(config: str, port: int | None, host: str | None, no_warmup: bool,
        insecure: bool) -> None:
    """Serve every API from one process. CONFIG: a distribution name or a YAML file."""
    from fnstack.auth import check_exposure
    from fnstack.config import load_config

    try:
        cfg = load_config(config)
        # Open only on loopback: anywhere else authentication, or an explicit choice.
        check_exposure(cfg.auth, host=host or cfg.server.host, insecure=insecure,
                       on_lambda=False)
    except ConfigError as exc:
        _fail(exc)
        return
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        _fail(RuntimeError("the server needs uvicorn: pip install 'fnstack[server]'"))
        return
    from fnstack.server import StartupError, serve

    try:
        serve(cfg, host=host or cfg.server.host, port=port or cfg.server.port,
              warmup=not no_warmup)
    except (ConfigError, StartupError) as exc:  # a busy port fails before models load
        _fail(exc)


@main.command("list-apis")
def list_apis() -> None:
    """The API groups this installation serves, the services behind them and their providers.

    Computed from what is registered (the fnstack.services and fnstack.providers entry
    points), so an API appears only when something really serves it.
    """
    from fnstack.services import available_services
    from fnstack.spec import available_specs

    try:
        services = available_services()
    except LookupError as exc:
        _fail(exc)
        return
    served: dict[Api, list[str]] = {}
    for service in services.values():
        for api in service.apis:
            served.setdefault(api, []).append(service.name)
    routed: dict[Api, Api] = {  # the provider API each served API routes to
        api: service.provider_api
        for service in services.values()
        if service.provider_api is not None
        for api in service.apis
    }
    provider_types: dict[Api, list[str]] = {}
    for spec in available_specs():
        provider_types.setdefault(spec.api, []).append(spec.provider_type)
    rows = [
        {
            "api": api.value,
            "service": ", ".join(served[api]),
            "providers": _providers_cell(api, routed.get(api), provider_types),
        }
        for api in Api
        if api in served
    ]
    _table(rows, ["api", "service", "providers"])


def _providers_cell(api: Api, routed: Api | None, types: dict[Api, list[str]]) -> str:
    if routed is None:
        return "(none: served by fnstack itself)"
    if routed != api:
        return f"(those of {routed.value})"
    return ", ".join(types.get(api, [])) or "(none registered)"


@main.command("list-providers")
@click.argument("api", required=False)
def list_providers(api: str | None) -> None:
    """Registered provider types, optionally for one API."""
    from fnstack.spec import available_specs

    try:
        which = Api(api) if api else None
    except ValueError:
        _fail(ValueError(f"unknown API {api!r}; see `fnstack list-apis`"))
        return
    rows = [
        {"api": s.api.value, "provider_type": s.provider_type, "description": s.description}
        for s in available_specs(which)
    ]
    _table(rows, ["api", "provider_type", "description"])


@main.command("list-distributions")
def list_distributions() -> None:
    """The bundled run configs, each with the comment paragraph that opens its file."""
    from fnstack.config import available_distributions, resolve_config_path

    rows = [
        {"distribution": name, "description": _leading_comment(resolve_config_path(name))}
        for name in available_distributions()
    ]
    _table(rows, ["distribution", "description"])


def _leading_comment(path: Path) -> str:
    """The file's first comment paragraph, its lines joined: the whole text, never cut."""
    lines: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        text = stripped.lstrip("#").strip()
        if not text and lines:  # a bare "#" ends the paragraph
            break
        if text:
            lines.append(text)
    return " ".join(lines)


@main.command("check-config")
@click.argument("config", default="local")
def check_config(config: str) -> None:
    """Validate a run config and print it resolved."""
    from fnstack.config import load_config

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(exc)
        return
    click.echo(json.dumps(cfg.model_dump(mode="json"), indent=2))


# The development tools (fnstack_dev) are left out of the Lambda layer: without them
# the CLI still works, minus `invoke` and `gateway`.
try:
    from fnstack_dev.cli import gateway, invoke
except ImportError:  # pragma: no cover - only in the layer
    pass
else:
    main.add_command(invoke)
    main.add_command(gateway)

from fnstack.cli_keys import keys  # noqa: E402  (registered after main exists)

main.add_command(keys)


if __name__ == "__main__":
    main()
