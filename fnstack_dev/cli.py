"""`fnstack invoke` and `fnstack gateway`: develop against template.yaml like Lambda.

Both read the template for each function's handler, code folder and environment
(Globals merged, ``!Ref``/``!GetAtt``/``!Sub`` resolved to local names, or to the
emulator's resources with ``--emulate-aws``). A variable the template sets is taken
from the template, except ``FNSTACK_CONFIG`` when the calling shell sets it (to try a
function against another run config) and anything given with ``--env NAME=VALUE``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fnstack_dev.template import Resolver, Template, TemplateError, load_template

__all__ = ["gateway", "invoke"]


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _pairs(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--env takes NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _load(path: str) -> Template:
    try:
        return load_template(path)
    except TemplateError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


@contextmanager
def _aws(template: Template, emulate: bool) -> Iterator[tuple[Resolver, dict[str, str], Any]]:
    """The resolver and extra environment: emulated AWS (moto) or plain local names."""
    if not emulate:
        yield Resolver(template), {}, None
        return
    try:
        from fnstack_dev.emulate import EmulatedAws
    except ImportError as exc:
        _fail(f"--emulate-aws needs moto[server] and boto3: pip install 'fnstack[dev]' ({exc})")
        raise
    with EmulatedAws(template) as aws:
        yield aws.resolver(), aws.env, aws


def function_env(template: Template, name: str, resolver: Resolver, extra: dict[str, str],
                 overrides: dict[str, str]) -> dict[str, str]:
    env = {**extra, **template.environment(name, resolver)}
    if os.environ.get("FNSTACK_CONFIG"):
        env["FNSTACK_CONFIG"] = os.environ["FNSTACK_CONFIG"]
    env.update(overrides)
    return env


@click.command()
@click.argument("function_id")
@click.option("--event", "-e", "event_path", required=True,
              help="Event JSON file (events/*.json), or - for stdin.")
@click.option("--template", "-t", "template_path", default="template.yaml", show_default=True)
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="Set or override a function environment variable (repeatable).")
@click.option("--emulate-aws", is_flag=True, help="Run against moto with the template's resources.")
def invoke(function_id: str, event_path: str, template_path: str, env_pairs: tuple[str, ...],
           emulate_aws: bool) -> None:
    """Run FUNCTION_ID's handler from template.yaml once, in-process, with an event.

    Prints the Lambda response JSON (like `sam local invoke`, without Docker).
    """
    from fnstack_dev.gateway import LocalFunction

    template = _load(template_path)
    try:
        fn = template.function(function_id)
    except TemplateError as exc:
        _fail(str(exc))
        return
    if not fn.handler:
        _fail(f"{function_id} has no handler in {template.path.name} (a container image "
              "function needs Metadata FnstackBufferedHandler)")
    try:
        raw = sys.stdin.read() if event_path == "-" else Path(event_path).read_text()
        event = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"cannot read the event {event_path}: {exc}")
        return
    overrides = _pairs(env_pairs)
    with _aws(template, emulate_aws) as (resolver, extra, _):
        env = function_env(template, function_id, resolver, extra, overrides)
        local = LocalFunction(fn, env)
        try:
            result = local.invoke(event)
        except Exception as exc:
            click.echo(json.dumps({"errorMessage": str(exc), "errorType": type(exc).__name__}))
            sys.exit(1)
        finally:
            local.close()
    click.echo(json.dumps(result, indent=2))


@click.command()
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--template", "-t", "template_path", default="template.yaml", show_default=True)
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
              help="Set or override a function environment variable (repeatable).")
@click.option("--emulate-aws", is_flag=True,
              help="Start moto and create the template's table, bucket and queues in it.")
def gateway(port: int, host: str, template_path: str, env_pairs: tuple[str, ...],
            emulate_aws: bool) -> None:
    """Serve template.yaml's REST API locally: each request is a Lambda invocation."""
    try:
        import uvicorn
    except ImportError:
        _fail("the gateway needs uvicorn: pip install 'fnstack[server]'")
        return
    import asyncio

    from fnstack_dev.gateway import Gateway

    template = _load(template_path)
    overrides = _pairs(env_pairs)
    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting through SystemExit
    # instead lets the emulator (moto, a child process) be stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with _aws(template, emulate_aws) as (resolver, extra, aws):
        envs = {name: function_env(template, name, resolver, extra, overrides)
                for name, fn in template.functions.items() if fn.package_type == "Zip"}
        app = Gateway(template, envs)
        try:
            app.load()
        except Exception as exc:
            _fail(f"a function failed to start: {type(exc).__name__}: {exc}")
        sources = _sqs_sources(template, aws.refs) if aws is not None else []

        async def serve() -> None:
            server = uvicorn.Server(uvicorn.Config(
                app, host=host, port=port, log_level="warning", lifespan="off",
                timeout_keep_alive=60))
            poller = (asyncio.create_task(app.poll_sqs(aws.client("sqs"), sources))
                      if sources else None)
            try:
                await server.serve()
            finally:
                if poller:
                    poller.cancel()

        click.echo(f"fnstack gateway on http://{host}:{port}/v1 "
                   f"({len(app.routes)} routes, {len(envs)} functions"
                   f"{', emulated AWS at ' + aws.endpoint if aws else ''})", err=True)
        asyncio.run(serve())


def _sqs_sources(template: Template, refs: dict[str, str]) -> list[tuple[str, str, int]]:
    out = []
    for fn in template.functions.values():
        for event in fn.events.values():
            if event.get("Type") != "SQS":
                continue
            queue = event.get("Properties", {}).get("Queue")
            logical = None
            if isinstance(queue, dict) and "Fn::GetAtt" in queue:
                att = queue["Fn::GetAtt"]
                logical = att[0] if isinstance(att, list) else str(att).split(".")[0]
            if logical in refs:
                size = int(event.get("Properties", {}).get("BatchSize", 10))
                out.append((fn.logical_id, refs[logical], size))
    return out
