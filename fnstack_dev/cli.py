"""`fnstack invoke` and `fnstack gateway`: run template.yaml's functions like Lambda.

By default both run the **built bundle** (`sam build` output, ``.aws-sam/build`` next
to the template): the built template says which functions, routes, layers, timeouts
and memory there are, and each function runs in its own python3.12 process with
Lambda's environment (fnstack_dev.sandbox). ``--from-source`` is the development mode:
the source template's handlers imported in this process from the repository.

The environment of a function is the template's (Globals merged, ``!Ref``/``!GetAtt``/
``!Sub`` resolved to local names, or to the emulator's resources with ``--emulate-aws``),
except ``FNSTACK_CONFIG`` when the calling shell sets it (to try a function against
another run config) and anything given with ``--env NAME=VALUE``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fnstack_dev.template import Resolver, Template, TemplateError, load_template

__all__ = ["EMULATOR_ADMIN_KEY", "function_env", "gateway", "invoke"]

EMULATOR_ADMIN_KEY = "fnstack-emulator-admin-key"

# What the calling shell may hand a function that runs against real AWS.
_AWS_SHELL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                   "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "HOME")


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


def _load(path: str | Path) -> Template:
    try:
        return load_template(path)
    except TemplateError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _region() -> str | None:
    """The AWS region the shell would use (environment or AWS config), if any."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    try:
        import boto3
    except ImportError:
        return None
    name: str | None = boto3.session.Session().region_name
    return name


@contextmanager
def _aws(template: Template, emulate: bool, data_dir: Path | None
         ) -> Iterator[tuple[Resolver, dict[str, str], Any]]:
    """The resolver and extra environment: emulated AWS (moto), or the shell's AWS."""
    if not emulate:
        region = _region()
        if region is None:
            _fail("no AWS region is set, so this would run against real AWS with nowhere to "
                  "go. Add --emulate-aws to run against emulated AWS (moto, resources created "
                  "from the template), or set AWS_REGION and credentials to use a deployed "
                  "stack (name its resources with --env FNSTACK_TABLE=... FNSTACK_BUCKET=...)")
        extra = {k: os.environ[k] for k in _AWS_SHELL_VARS if k in os.environ}
        yield Resolver(template, region=str(region)), {**extra, "AWS_REGION": str(region)}, None
        return
    try:
        from fnstack_dev.emulate import EmulatedAws
    except ImportError as exc:
        _fail(f"--emulate-aws needs moto[server] and boto3: pip install 'fnstack[dev]' ({exc})")
        raise
    with EmulatedAws(template, data_dir=data_dir) as aws:
        # The bootstrap admin key of an emulated deployment (in place of the SSM
        # parameter): the sample events in events/ carry it. --env overrides it.
        yield aws.resolver(), {**aws.env, "FNSTACK_ADMIN_KEY": EMULATOR_ADMIN_KEY}, aws


def function_env(template: Template, name: str, resolver: Resolver, extra: Mapping[str, str],
                 overrides: Mapping[str, str]) -> dict[str, str]:
    env = {**extra, **template.environment(name, resolver)}
    if os.environ.get("FNSTACK_CONFIG"):
        env["FNSTACK_CONFIG"] = os.environ["FNSTACK_CONFIG"]
    env.update(overrides)
    return env


def _bundle_template(template_path: str, build_dir: str | None, from_source: bool
                     ) -> tuple[Template, Any]:
    """The template to run and, unless --from-source, the built bundle."""
    if from_source:
        return _load(template_path), None
    from fnstack_dev.sandbox import Bundle

    source = Path(template_path)
    build = Path(build_dir) if build_dir else source.resolve().parent / ".aws-sam" / "build"
    try:
        bundle = Bundle(build)
        bundle.prepare()
    except (FileNotFoundError, RuntimeError) as exc:
        _fail(str(exc))
        raise
    return _load(bundle.template_path), bundle


def _functions(template: Template, bundle: Any, envs: Mapping[str, Mapping[str, str]],
               concurrency: int) -> dict[str, Any]:
    if bundle is None:
        from fnstack_dev.inprocess import LocalFunction

        return {name: LocalFunction(template.function(name), env) for name, env in envs.items()
                if template.function(name).handler}
    from fnstack_dev.sandbox import FunctionPool, function_specs

    specs = function_specs(template, bundle, envs, concurrency=concurrency)
    return {name: FunctionPool(spec, bundle) for name, spec in specs.items() if name in envs}


def _image_source(template_path: str, build_dir: str | None, bundle: Any) -> Template | None:
    """The source template whose image functions get stand-ins: the one the bundle was
    built from (the default build folder next to it, or --template named with
    --build-dir)."""
    if bundle is None or not Path(template_path).is_file():
        return None
    source = Path(template_path).resolve()
    default = source.parent / ".aws-sam" / "build"
    if build_dir and Path(build_dir).resolve() != default and template_path == "template.yaml":
        return None  # a bundle of its own; the current folder's template is not its source
    return _load(source)


def _images(source: Template, bundle: Any, resolver: Resolver, extra: Mapping[str, str],
            overrides: Mapping[str, str], concurrency: int) -> dict[str, Any]:
    """Stand-ins for the source template's container-image functions (no Docker here)."""
    from fnstack_dev.image import image_spec
    from fnstack_dev.sandbox import FunctionPool

    out: dict[str, Any] = {}
    for name, fn in source.functions.items():
        if fn.package_type != "Image" or not fn.routes:
            continue
        env = function_env(source, name, resolver, extra, overrides)
        spec = image_spec(source, fn, env, work=bundle.build_dir.parent / "image-standins",
                          concurrency=concurrency)
        if spec is not None:
            out[name] = FunctionPool(spec, bundle)
    return out


_BUILD_OPTIONS = [
    click.option("--template", "-t", "template_path", default="template.yaml", show_default=True,
                 help="The source template (its .aws-sam/build is the default bundle)."),
    click.option("--build-dir", default=None,
                 help="The `sam build` output to run [default: .aws-sam/build by the template]."),
    click.option("--from-source", is_flag=True,
                 help="Development mode: import the source tree's handlers in this process "
                      "instead of running the built bundle."),
    click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE",
                 help="Set or override a function environment variable (repeatable)."),
    click.option("--emulate-aws", is_flag=True,
                 help="Start moto and create the template's table, bucket and queues in it."),
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="With --emulate-aws: keep the emulated AWS state here across restarts."),
]


def _build_options(f: Any) -> Any:
    for option in reversed(_BUILD_OPTIONS):
        f = option(f)
    return f


@click.command()
@click.argument("function_id")
@click.option("--event", "-e", "event_path", required=True,
              help="Event JSON file (events/*.json), or - for stdin.")
@_build_options
def invoke(function_id: str, event_path: str, template_path: str, build_dir: str | None,
           from_source: bool, env_pairs: tuple[str, ...], emulate_aws: bool,
           data_dir: str | None) -> None:
    """Invoke FUNCTION_ID of the built bundle once with an event, as Lambda would.

    Prints the function's response JSON (like `sam local invoke`, without Docker). A
    function error is printed as Lambda reports it, with exit status 1.
    """
    from fnstack_dev.sandbox import FunctionError, Streamed, kill_children

    template, bundle = _bundle_template(template_path, build_dir, from_source)
    source = _image_source(template_path, build_dir, bundle)
    image = (source is not None and function_id not in template.functions
             and function_id in source.functions
             and source.function(function_id).package_type == "Image")
    try:
        fn = (source if image and source else template).function(function_id)
    except TemplateError as exc:
        _fail(str(exc))
        return
    if fn.package_type != "Zip" and not image:
        _fail(f"{function_id} is a container image function: run the built bundle (its "
              "stand-in), or `sam local invoke` where Docker runs")
    try:
        raw = sys.stdin.read() if event_path == "-" else Path(event_path).read_text()
        event = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"cannot read the event {event_path}: {exc}")
        return
    overrides = _pairs(env_pairs)
    with _aws(template, emulate_aws, Path(data_dir) if data_dir else None) as (resolver, extra, _):
        if image and source is not None:
            functions = _images(source, bundle, resolver, extra, overrides, concurrency=1)
        else:
            env = function_env(template, function_id, resolver, extra, overrides)
            functions = _functions(template, bundle, {function_id: env}, concurrency=1)
        if function_id not in functions:
            _fail(f"{function_id} has no Python handler in {template.path.name}")
        function = functions[function_id]
        http = "httpMethod" in event and "requestContext" in event

        async def call() -> Any:
            from fnstack_dev.gateway import proxy_response

            result = await function.invoke(event, http=http)
            if isinstance(result, Streamed):
                return await proxy_response(result)
            return result.payload

        try:
            result = asyncio.run(call())
        except FunctionError as exc:
            click.echo(json.dumps(exc.payload))
            sys.exit(1)
        finally:
            function.close()
            kill_children()
    click.echo(json.dumps(result, indent=2))


@click.command()
@click.option("--port", type=int, default=3000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True,
              help="Instances per function where the template sets no "
                   "ReservedConcurrentExecutions.")
@_build_options
def gateway(port: int, host: str, concurrency: int, template_path: str, build_dir: str | None,
            from_source: bool, env_pairs: tuple[str, ...], emulate_aws: bool,
            data_dir: str | None) -> None:
    """Serve the template's REST API locally: each request is a Lambda invocation."""
    try:
        import uvicorn
    except ImportError:
        _fail("the gateway needs uvicorn: pip install 'fnstack[server]'")
        return
    from fnstack_dev.gateway import Gateway
    from fnstack_dev.sandbox import kill_children
    from fnstack_dev.server import RawHeadersH11Protocol

    template, bundle = _bundle_template(template_path, build_dir, from_source)
    source = _image_source(template_path, build_dir, bundle)
    overrides = _pairs(env_pairs)

    # uvicorn re-raises SIGTERM after its graceful shutdown; exiting through SystemExit
    # instead unwinds: the functions stop, emulated AWS saves its data (--data-dir) and
    # stops, and the atexit hook kills any child left.
    def _exit(*_: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    with _aws(template, emulate_aws, Path(data_dir) if data_dir else None) as (
            resolver, extra, aws):
        envs = {name: function_env(template, name, resolver, extra, overrides)
                for name, fn in template.functions.items() if fn.package_type == "Zip"}
        functions = _functions(template, bundle, envs, concurrency)
        routes = template.routes()
        if source is not None:
            # The container-image functions the bundle lacks (sam build needs Docker).
            images = _images(source, bundle, resolver, extra, overrides, concurrency)
            functions.update(images)
            routes += [r for name in images for r in source.function(name).routes]
        missing = sorted({r.function for r in routes} - set(functions))
        if missing:
            click.echo(f"note: no route to {', '.join(missing)} (container image; run the "
                       "built bundle to get its stand-in)", err=True)
        app = Gateway(template, functions, routes=[r for r in routes if r.function in functions])
        if bundle is None:
            try:
                for name in sorted({r.function for r in app.routes}):
                    app.functions[name].load()  # type: ignore[attr-defined]
            except Exception as exc:
                _fail(f"a function failed to start: {type(exc).__name__}: {exc}")
        sqs_sources = _sqs_sources(template, aws.refs) if aws is not None else []
        s3_sources = _s3_sources(template, aws.refs) if aws is not None else []

        async def serve() -> None:
            server = uvicorn.Server(uvicorn.Config(
                app, host=host, port=port, log_level="warning", lifespan="off",
                timeout_keep_alive=60, http=RawHeadersH11Protocol))
            pollers = []
            if sqs_sources:
                pollers.append(asyncio.create_task(app.poll_sqs(aws.client("sqs"), sqs_sources)))
            if s3_sources:
                pollers.append(asyncio.create_task(app.poll_s3(aws.client("s3"), s3_sources)))
            try:
                await server.serve()
            finally:
                for poller in pollers:
                    poller.cancel()

        mode = f"built bundle {bundle.build_dir}" if bundle else "source tree (--from-source)"
        click.echo(f"fnstack gateway on http://{host}:{port}/{app.stage}/v1 (also /v1; "
                   f"{len(app.routes)} routes, {len(envs)} functions, {mode}"
                   f"{', emulated AWS at ' + aws.endpoint if aws else ''})", err=True)
        try:
            asyncio.run(serve())
        finally:
            app.close()
    kill_children()


def _logical(value: Any) -> str | None:
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        att = value["Fn::GetAtt"]
        return str(att[0] if isinstance(att, list) else str(att).split(".")[0])
    if isinstance(value, dict) and "Ref" in value:
        return str(value["Ref"])
    return None


def _sqs_sources(template: Template, refs: dict[str, str]) -> list[tuple[str, str, int]]:
    out = []
    for fn in template.functions.values():
        for event in fn.events.values():
            if event.get("Type") != "SQS":
                continue
            logical = _logical(event.get("Properties", {}).get("Queue"))
            if logical in refs:
                size = int(event.get("Properties", {}).get("BatchSize", 10))
                out.append((fn.logical_id, refs[logical], size))
    return out


def _s3_sources(template: Template, refs: dict[str, str]) -> list[Any]:
    """S3 object-created sources: `Type: S3` events (bucket notifications) and
    `Type: EventBridgeRule` events matching S3's "Object Created" in a bucket."""
    from fnstack_dev.gateway import S3Source

    out = []
    for fn in template.functions.values():
        for event in fn.events.values():
            props = event.get("Properties", {})
            if event.get("Type") == "S3":
                logical = _logical(props.get("Bucket"))
                rules = props.get("Filter", {}).get("S3Key", {}).get("Rules", [])
                named = {str(r.get("Name", "")).lower(): str(r.get("Value", "")) for r in rules}
                if logical in refs:
                    out.append(S3Source(fn.logical_id, refs[logical], named.get("prefix", ""),
                                        named.get("suffix", "")))
            elif event.get("Type") == "EventBridgeRule":
                pattern = props.get("Pattern", {})
                if "aws.s3" not in pattern.get("source", []):
                    continue
                detail = pattern.get("detail", {})
                for bucket in detail.get("bucket", {}).get("name", []):
                    logical = _logical(bucket)
                    keys = detail.get("object", {}).get("key", [{}])
                    prefix = next((k.get("prefix", "") for k in keys if isinstance(k, dict)), "")
                    if logical in refs:
                        out.append(S3Source(fn.logical_id, refs[logical], prefix,
                                            eventbridge=True))
    return out
