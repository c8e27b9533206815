"""``fnstack keys``: create, list and revoke API keys in a deployment's registry store.

CONFIG is a distribution name or a YAML file, as for ``fnstack run``; the keys live in
its ``registry`` kv store (SQLite locally, DynamoDB for ``aws``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import click

from fnstack.errors import ConfigError, FnstackError
from fnstack.keys import KeyInfo, KeyStore, parse_key

__all__ = ["keys"]

T = TypeVar("T")

# `--attr team=red` means the attribute policies read as `teams`.
_PLURAL = {"team": "teams", "project": "projects", "role": "roles"}


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _table(rows: list[dict[str, str]], columns: list[str]) -> None:
    # Plain aligned text: greppable, and the same with or without a terminal.
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    for row in [{c: c.upper() for c in columns}, *rows]:
        click.echo("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


def _run(config: str, action: Callable[[KeyStore], Awaitable[T]]) -> T:
    """Open the config's registry store, run ``action`` on it, close the store."""
    from fnstack.config import load_config
    from fnstack.storage import Stores

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc))
    stores = Stores(cfg.storage)
    if not stores.has("registry"):
        _fail(f"{config} has no `registry` store in storage.stores: keys live there")

    async def go() -> T:
        try:
            return await action(KeyStore(stores.kv("registry")))
        finally:
            await stores.close()

    try:
        return asyncio.run(go())
    except FnstackError as exc:
        _fail(exc.message)


def _attributes(pairs: tuple[str, ...]) -> dict[str, list[str]]:
    attrs: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise click.BadParameter(
                f"{pair!r} is not NAME=VALUE (e.g. team=red)", param_hint="--attr"
            )
        values = attrs.setdefault(_PLURAL.get(name, name), [])
        if value not in values:
            values.append(value)
    return attrs


def _when(ts: int | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _show_attrs(info: KeyInfo) -> str:
    return " ".join(
        f"{name}={','.join(values)}" for name, values in sorted(info.attributes.items())
    )


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (auth.type api_keys)."""


@keys.command()
@click.argument("name")
@click.argument("config", default="local")
@click.option("--principal", default=None, help="Who the key acts as (default: NAME).")
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE",
              help="An attribute, e.g. team=red (repeatable; team/project/role become "
                   "teams/projects/roles).")
@click.option("--role", "roles", multiple=True, help="A role, e.g. admin (repeatable).")
def create(
    name: str, config: str, principal: str | None, attrs: tuple[str, ...], roles: tuple[str, ...]
) -> None:
    """Create a key NAME. The key is printed once, alone on the last line."""
    attributes = _attributes(attrs)
    info, secret = _run(
        config,
        lambda store: store.create(
            name, principal=principal, attributes=attributes, roles=list(roles)
        ),
    )
    click.echo(f"created API key {info.id} ({info.name}) for principal {info.principal}", err=True)
    if info.attributes:
        click.echo(f"attributes: {_show_attrs(info)}", err=True)
    click.echo("store it now: it is shown once and cannot be retrieved again", err=True)
    click.echo(secret)


@keys.command("list")
@click.argument("config", default="local")
@click.option("--principal", default=None, help="Only this principal's keys.")
def list_keys(config: str, principal: str | None) -> None:
    """List keys (never their secrets)."""
    infos = _run(config, lambda store: store.list(principal=principal))
    rows = [
        {
            "id": i.id,
            "name": i.name,
            "principal": i.principal,
            "attributes": _show_attrs(i),
            "created": _when(i.created_at),
            "status": f"revoked {_when(i.revoked_at)}" if i.revoked else "active",
            "key": i.redacted_value,
        }
        for i in infos
    ]
    if not rows:
        click.echo("no API keys; create one with `fnstack keys create NAME`")
        return
    _table(rows, ["id", "name", "principal", "attributes", "created", "status", "key"])


@keys.command()
@click.argument("key_id")
@click.argument("config", default="local")
def revoke(key_id: str, config: str) -> None:
    """Revoke KEY_ID (the id from `fnstack keys list`, or the key itself)."""
    parsed = parse_key(key_id)
    if parsed is not None:
        key_id = parsed[0]
    info = _run(config, lambda store: store.revoke(key_id))
    click.echo(f"revoked API key {info.id} ({info.name}, principal {info.principal})")
