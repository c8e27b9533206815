"""Refresh a built bundle's own code after a source change, as `sam build` would.

`sam build` takes minutes (it reinstalls the layer's dependencies); after a change to
fnstack, providers, functions/ or template.yaml only the project's own part differs.
``refresh_code`` rewrites the built template from template.yaml as `sam build` does
(image functions left out, code folders by logical id), copies each function's source
folder over its build folder and reinstalls the project (no dependencies) into the
layers that hold it, the way layers/Makefile does. A change to a dependency, or a new
function or layer, still needs `sam build`.

    python -m fnstack_dev.bundle [.aws-sam/build]

`.ci/serverless.sh` runs it with ``--layer-built`` after `sam build`: the stamp of the
layer's inputs (``layer_stamp``) then tells the tests whether the layer is current.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from fnstack_dev.sandbox import find_python312
from fnstack_dev.template import Template, load_template

__all__ = ["layer_stamp", "refresh_code"]

# What the project installs into a layer (layers/Makefile), and what it must not.
_PROJECT = ("fnstack", "providers")
_NOT_SHIPPED = ("fnstack_dev", "bin")


def _built_template(source: Template, build_dir: Path) -> None:
    data = json.loads(json.dumps(source.data))
    resources = data["Resources"]
    images = [n for n, r in resources.items()
              if r.get("Properties", {}).get("PackageType") == "Image"]
    for name in images:
        del resources[name]
    data["Outputs"] = {k: v for k, v in data.get("Outputs", {}).items()
                       if not any(img in json.dumps(v) for img in images)}
    for name, res in resources.items():
        props = res.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                # A function's folder is a copy of its code (made below); a layer's is
                # built with its dependencies: only `sam build` makes a new one.
                if key == "ContentUri" and not (build_dir / name).is_dir():
                    raise FileNotFoundError(f"layer {name} is not in {build_dir}: run "
                                            "`sam build` (bash .ci/serverless.sh)")
                props[key] = name
    (build_dir / "template.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _stamp(root: Path) -> str:
    """A hash of everything refresh_code copies: nothing changed, nothing to do."""
    digest = hashlib.sha256()
    files = [root / "template.yaml", root / "pyproject.toml"]
    for folder in ("fnstack", "providers", "functions"):
        files += sorted(p for p in (root / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def layer_stamp(root: Path) -> str:
    """A hash of what the layer's third-party part is built from: when it differs from
    the one `.ci/serverless.sh` wrote after its `sam build`, only a new build will do."""
    digest = hashlib.sha256()
    for path in (root / "layers" / "requirements.txt", root / "layers" / "Makefile",
                 root / "infra" / "prebuild_models.py"):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    # An arm64 layer (LAYER_ARCH=arm64, for deploying) is never current for the emulator,
    # which runs x86_64 here: its native wheels would not load.
    if os.environ.get("LAYER_ARCH", "x86_64") != "x86_64":
        digest.update(b"LAYER_ARCH=" + os.environ["LAYER_ARCH"].encode())
    return digest.hexdigest()


def refresh_code(root: Path, build_dir: Path, *, python: str | None = None) -> None:
    stamp_file = build_dir / ".fnstack-code-stamp"
    stamp = _stamp(root)
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    _refresh(root, build_dir, python)
    stamp_file.write_text(stamp)


def _refresh(root: Path, build_dir: Path, python: str | None) -> None:
    source = load_template(root / "template.yaml")
    _built_template(source, build_dir)
    built = load_template(build_dir / "template.yaml")
    for name, fn in built.functions.items():
        if fn.package_type == "Zip" and name in source.functions:
            shutil.copytree(source.functions[name].code_dir, fn.code_dir, dirs_exist_ok=True)
    layers = [build_dir / str(res["Properties"]["ContentUri"]) / "python"
              for res in built.of_type("AWS::Serverless::LayerVersion").values()]
    layers = [p for p in layers if (p / "fnstack").is_dir()]
    if not layers:
        return
    # pip builds in-tree: a stale build/ would ship modules deleted since.
    shutil.rmtree(root / "build", ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [python or find_python312(), "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-compile", "--disable-pip-version-check", "--root-user-action=ignore",
             "--target", tmp, str(root)],
            check=True)
        fresh = Path(tmp)
        for layer in layers:
            # Each package is swapped in by renames: an instance starting meanwhile sees
            # the old or the new one, never half of either.
            for new in fresh.iterdir():
                if new.name in _NOT_SHIPPED:
                    continue
                staged = layer / f".{new.name}.new"
                shutil.rmtree(staged, ignore_errors=True)
                shutil.copytree(new, staged)
                old = layer / f".{new.name}.old"
                shutil.rmtree(old, ignore_errors=True)
                if (layer / new.name).exists():
                    (layer / new.name).rename(old)
                staged.rename(layer / new.name)
                shutil.rmtree(old, ignore_errors=True)
            for stale in layer.glob("fnstack-*.dist-info"):
                if not (fresh / stale.name).exists():
                    shutil.rmtree(stale)
            # As layers/Makefile: bytecode, since /opt is read-only on Lambda.
            subprocess.run(
                [python or find_python312(), "-m", "compileall", "-q", "-j", "0",
                 "--invalidation-mode", "unchecked-hash",
                 *(str(layer / name) for name in _PROJECT if (layer / name).is_dir())],
                check=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    build = Path(args[0] if args else ".aws-sam/build").resolve()
    if "--layer-built" in sys.argv:
        # `.ci/serverless.sh` after its `sam build`: the layer matches these inputs.
        (build / ".fnstack-layer-stamp").write_text(layer_stamp(Path.cwd()))
    refresh_code(Path.cwd(), build)
    print(f"refreshed the project's code in {build}")
