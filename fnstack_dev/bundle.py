"""Refresh a built bundle's own code after a source change, as `sam build` would.

`sam build` takes minutes (it reinstalls the layer's dependencies); after a change to
fnstack, providers, functions/ or template.yaml only the project's own part differs.
``refresh_code`` rewrites the built template from template.yaml as `sam build` does
(image functions left out, code folders by logical id), copies each function's source
folder over its build folder and reinstalls the project (no dependencies) into the
layers that hold it, the way layers/Makefile does. A change to a dependency, or a new
function or layer, still needs `sam build`.

    python -m fnstack_dev.bundle [.aws-sam/build]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from fnstack_dev.sandbox import find_python312
from fnstack_dev.template import Template, load_template

__all__ = ["refresh_code"]

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


def refresh_code(root: Path, build_dir: Path, *, python: str | None = None) -> None:
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
            for old in list(layer.iterdir()):
                if old.name in _PROJECT or (old.name.startswith("fnstack-")
                                            and old.name.endswith(".dist-info")):
                    shutil.rmtree(old)
            for new in fresh.iterdir():
                if new.name not in _NOT_SHIPPED:
                    shutil.copytree(new, layer / new.name, dirs_exist_ok=True)


if __name__ == "__main__":
    build = Path(sys.argv[1] if len(sys.argv) > 1 else ".aws-sam/build").resolve()
    refresh_code(Path.cwd(), build)
    print(f"refreshed the project's code in {build}")
