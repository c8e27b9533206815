"""template.yaml, read the way `sam local` reads it: functions, routes, environment.

The YAML loader understands CloudFormation's short intrinsic tags (``!Ref``, ``!Sub``,
``!GetAtt`` ...) and turns them into their long form (``{"Ref": ...}``), so one small
resolver evaluates both. Resources resolve to *local* values: a table's or bucket's
name, a queue's URL, either from the template or from an emulator that created them.

Routes follow API Gateway REST API matching: static segments beat ``{param}``, which
beats the greedy ``{proxy+}``; a method beats ``ANY``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

__all__ = [
    "FunctionDef",
    "Resolver",
    "Route",
    "Template",
    "TemplateError",
    "load_template",
    "match_route",
]

DEFAULT_TIMEOUT_MS = 29_000  # API Gateway's default integration timeout
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024  # synchronous invocation, request and response


class TemplateError(ValueError):
    """template.yaml lacks something asked for, or says something this tool cannot use."""


# --- YAML with intrinsic tags -----------------------------------------------------------


class _Loader(yaml.SafeLoader):
    pass


def _tag(name: str) -> Any:
    long = "Ref" if name == "Ref" else f"Fn::{name}"

    def construct(loader: _Loader, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
            if name == "GetAtt":
                value = str(value).split(".", 1)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {long: value}

    return construct


for _name in ("Ref", "Sub", "GetAtt", "Join", "If", "Equals", "Not", "And", "Or", "Select",
              "Split", "FindInMap", "ImportValue", "Base64", "GetAZs", "Condition", "Cidr"):
    _Loader.add_constructor(f"!{_name}", _tag(_name))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


# --- the model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One `Type: Api` event: a method (or ANY) on a resource path, to a function."""

    function: str
    method: str
    path: str
    streaming: bool = False
    timeout_ms: int = DEFAULT_TIMEOUT_MS

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.strip("/").split("/") if s]


@dataclass(frozen=True)
class FunctionDef:
    logical_id: str
    handler: str  # "module.attribute": what runs in-process (buffered)
    code_dir: Path
    package_type: str
    runtime: str | None
    timeout_s: float
    memory_mb: int
    environment: dict[str, Any]  # Globals merged, intrinsics unresolved
    routes: list[Route] = field(default_factory=list)
    events: dict[str, Any] = field(default_factory=dict)
    entry: str = ""  # the Handler property as deployed: a Python handler or a script
    layers: list[Any] = field(default_factory=list)  # intrinsics unresolved
    reserved_concurrency: int | None = None


class Resolver:
    """Evaluates intrinsic functions against local values.

    ``refs`` maps a logical id to what ``Ref`` returns (a name, a queue URL); ``attrs``
    maps ``(logical id, attribute)`` to what ``Fn::GetAtt`` returns. Resources not
    given resolve from the template: their name property, else ``<stack>-<id>``.
    """

    def __init__(
        self,
        template: Template,
        *,
        refs: Mapping[str, str] | None = None,
        attrs: Mapping[tuple[str, str], str] | None = None,
        region: str = "us-east-1",
        account_id: str = "123456789012",
        stack_name: str = "fnstack",
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        self.template = template
        self.refs = dict(refs or {})
        self.attrs = dict(attrs or {})
        self.pseudo = {
            "AWS::Region": region,
            "AWS::AccountId": account_id,
            "AWS::StackName": stack_name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        self.parameters = {
            name: str(spec.get("Default", ""))
            for name, spec in template.data.get("Parameters", {}).items()
        }
        self.parameters.update(parameters or {})

    _NO_VALUE = object()

    def resolve(self, node: Any) -> Any:
        """``node`` with every intrinsic evaluated (AWS::NoValue entries dropped)."""
        out = self._eval(node)
        return None if out is self._NO_VALUE else out

    def condition(self, name: str) -> bool:
        spec = self.template.data.get("Conditions", {}).get(name)
        if spec is None:
            raise TemplateError(f"condition {name!r} is not defined under Conditions")
        return bool(self._eval(spec))

    def physical_name(self, logical_id: str) -> str:
        """A resource's name: its name property, else one derived from the stack."""
        res = self.template.resources.get(logical_id)
        if res is None:
            raise TemplateError(f"no resource {logical_id!r} in {self.template.path}")
        props = res.get("Properties", {})
        for key in ("TableName", "BucketName", "QueueName", "FunctionName"):
            if key in props:
                return str(self.resolve(props[key]))
        base = f"{self.pseudo['AWS::StackName']}-{logical_id}"
        return base.lower() if res.get("Type") == "AWS::S3::Bucket" else base

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name == "AWS::NoValue":
            return self._NO_VALUE
        if name in self.parameters:
            return self.parameters[name]
        if name in self.refs:
            return self.refs[name]
        res = self.template.resources.get(name)
        if res is None:
            raise TemplateError(f"!Ref {name}: no such parameter or resource")
        physical = self.physical_name(name)
        if res.get("Type") == "AWS::SQS::Queue":
            region, account = self.pseudo["AWS::Region"], self.pseudo["AWS::AccountId"]
            return f"https://sqs.{region}.amazonaws.com/{account}/{physical}"
        return physical

    def get_att(self, name: str, attr: str) -> Any:
        if (name, attr) in self.attrs:
            return self.attrs[(name, attr)]
        res = self.template.resources.get(name)
        if res is None:
            raise TemplateError(f"!GetAtt {name}.{attr}: no such resource")
        physical = self.physical_name(name)
        region, account = self.pseudo["AWS::Region"], self.pseudo["AWS::AccountId"]
        kind = res.get("Type")
        if kind == "AWS::SQS::Queue":
            return {"Arn": f"arn:aws:sqs:{region}:{account}:{physical}",
                    "QueueName": physical, "QueueUrl": self.ref(name)}.get(attr)
        if kind == "AWS::S3::Bucket":
            return {"Arn": f"arn:aws:s3:::{physical}", "DomainName": f"{physical}.s3.amazonaws.com"
                    }.get(attr)
        if kind == "AWS::DynamoDB::Table" and attr == "Arn":
            return f"arn:aws:dynamodb:{region}:{account}:table/{physical}"
        return f"{physical}.{attr}"

    def _eval(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self._eval(v) for v in node]
            return [v for v in items if v is not self._NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, arg), = node.items()
            fn = _INTRINSICS.get(key)
            if fn is not None:
                return fn(self, arg)
        out = {k: self._eval(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not self._NO_VALUE}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        values = {k: self._eval(v) for k, v in variables.items()}

        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                return str(values[name])
            if "." in name and name not in self.pseudo:
                res, attr = name.split(".", 1)
                return str(self.get_att(res, attr))
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", repl, str(text))


_INTRINSICS: dict[str, Any] = {
    "Ref": lambda r, a: r.ref(a),
    "Fn::GetAtt": lambda r, a: r.get_att(*(a.split(".", 1) if isinstance(a, str) else a)),
    "Fn::Sub": lambda r, a: r._sub(a),
    "Fn::Join": lambda r, a: str(a[0]).join(str(v) for v in r._eval(a[1])),
    "Fn::Select": lambda r, a: r._eval(a[1])[int(r._eval(a[0]))],
    "Fn::Split": lambda r, a: str(r._eval(a[1])).split(a[0]),
    "Fn::If": lambda r, a: r._eval(a[1] if r.condition(a[0]) else a[2]),
    "Fn::Equals": lambda r, a: str(r._eval(a[0])) == str(r._eval(a[1])),
    "Fn::Not": lambda r, a: not r._eval(a[0]),
    "Fn::And": lambda r, a: all(r._eval(v) for v in a),
    "Fn::Or": lambda r, a: any(r._eval(v) for v in a),
    "Condition": lambda r, a: r.condition(a),
    "Fn::Base64": lambda r, a: r._eval(a),
}


class Template:
    """A parsed template.yaml (SAM): its functions and their API routes."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.root = self.path.parent
        try:
            data = _yaml_load(self.path.read_text())
        except OSError as exc:
            raise TemplateError(f"cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise TemplateError(f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
            raise TemplateError(f"{path} has no Resources section")
        self.data: dict[str, Any] = data
        self.resources: dict[str, Any] = data["Resources"]
        self.functions = {
            name: self._function(name, res)
            for name, res in self.resources.items()
            if res.get("Type") == "AWS::Serverless::Function"
        }

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {n: r for n, r in self.resources.items() if r.get("Type") == kind}

    def function(self, logical_id: str) -> FunctionDef:
        fn = self.functions.get(logical_id)
        if fn is None:
            known = ", ".join(sorted(self.functions)) or "none"
            raise TemplateError(
                f"{self.path.name} defines no function {logical_id!r}; functions: {known}"
            )
        return fn

    def routes(self) -> list[Route]:
        return [r for fn in self.functions.values() for r in fn.routes]

    def api_resource(self) -> dict[str, Any]:
        apis = self.of_type("AWS::Serverless::Api")
        props: dict[str, Any] = next(iter(apis.values()), {}).get("Properties", {})
        return props

    def environment(self, logical_id: str, resolver: Resolver) -> dict[str, str]:
        """The function's environment variables, resolved, as strings."""
        values = resolver.resolve(self.function(logical_id).environment) or {}
        return {k: _env_str(v) for k, v in values.items()}

    def _function(self, name: str, res: dict[str, Any]) -> FunctionDef:
        glob = self.data.get("Globals", {}).get("Function", {})
        props = {**glob, **res.get("Properties", {})}
        env = {
            **glob.get("Environment", {}).get("Variables", {}),
            **res.get("Properties", {}).get("Environment", {}).get("Variables", {}),
        }
        meta = res.get("Metadata", {}) or {}
        handler = str(meta.get("FnstackBufferedHandler") or props.get("Handler") or "")
        code_uri = props.get("CodeUri")
        routes = []
        events = props.get("Events", {}) or {}
        for event in events.values():
            if event.get("Type") != "Api":
                continue
            ep = event.get("Properties", {})
            routes.append(Route(
                function=name,
                method=str(ep.get("Method", "ANY")).upper(),
                path=str(ep["Path"]),
                streaming=ep.get("ResponseTransferMode") == "RESPONSE_STREAM",
                timeout_ms=int(ep.get("TimeoutInMillis", DEFAULT_TIMEOUT_MS)),
            ))
        return FunctionDef(
            logical_id=name,
            handler=handler,
            code_dir=self.root / code_uri if isinstance(code_uri, str) else self.root,
            package_type=str(props.get("PackageType", "Zip")),
            runtime=props.get("Runtime"),
            timeout_s=float(props.get("Timeout", 3)),
            memory_mb=int(props.get("MemorySize", 128)),
            environment=env,
            routes=routes,
            events=events,
            entry=str(props.get("Handler") or ""),
            layers=list(props.get("Layers") or []),
            reserved_concurrency=(int(props["ReservedConcurrentExecutions"])
                                  if "ReservedConcurrentExecutions" in props else None),
        )


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


def load_template(path: str | Path = "template.yaml") -> Template:
    return Template(Path(path))


# --- routing -----------------------------------------------------------------------------


def _match_path(route: Route, path: str) -> dict[str, str] | None:
    # ``path`` as sent (percent-encoded): each parameter is decoded exactly once.
    parts = [s for s in path.split("/") if s]
    params: dict[str, str] = {}
    segs = route.segments
    for i, seg in enumerate(segs):
        if seg.startswith("{") and seg.endswith("+}"):
            rest = parts[i:]
            if not rest:
                return None
            params[seg[1:-2]] = unquote("/".join(rest))
            return params
        if i >= len(parts):
            return None
        if seg.startswith("{") and seg.endswith("}"):
            params[seg[1:-1]] = unquote(parts[i])
        elif seg != unquote(parts[i]):
            return None
    return params if len(parts) == len(segs) else None


def match_route(
    routes: list[Route], method: str, path: str
) -> tuple[Route, dict[str, str]] | tuple[None, bool]:
    """The route API Gateway would pick, with its path parameters.

    No match: ``(None, True)`` when some route has this path but not this method (API
    Gateway answers that with an error too), else ``(None, False)``.
    """
    found: list[tuple[Route, dict[str, str]]] = []
    for route in routes:
        params = _match_path(route, path)
        if params is not None:
            found.append((route, params))
    if not found:
        return None, False
    # The most specific resource wins, then its method (or ANY).
    best_key = min(_resource_key(r) for r, _ in found)
    same = [(r, p) for r, p in found if _resource_key(r) == best_key]
    for want in (method.upper(), "ANY"):
        for r, p in same:
            if r.method == want:
                return r, p
    return None, True


def _resource_key(route: Route) -> tuple[int, ...]:
    # Segment by segment: static (0) before {param} (1) before {proxy+} (2); at equal
    # prefixes a longer resource is more specific.
    kinds = [2 if s.endswith("+}") else 1 if s.startswith("{") else 0 for s in route.segments]
    return (*kinds, -1)
