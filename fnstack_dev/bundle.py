"""Refresh a built bundle's own code after a source change, as `sam build` would.

`sam build` takes minutes (it reinstalls the layer's dependencies); after a change to
fnstack, providers or functions/ only the project's own code differs. ``refresh_code``
copies each function's source folder over its build folder and reinstalls the project
(no dependencies) into the layers that hold it, the way layers/Makefile does. A change
to a dependency still needs `sam build`.

    python -m fnstack_dev.bundle [.aws-sam/build]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from fnstack_dev.sandbox import find_python312
from fnstack_dev.template import load_template

__all__ = ["refresh_code"]

# What the project installs into a layer (layers/Makefile), and what it must not.
_PROJECT = ("fnstack", "providers")
_NOT_SHIPPED = ("fnstack_dev", "bin")


def refresh_code(root: Path, build_dir: Path, *, python: str | None = None) -> None:
    source = load_template(root / "template.yaml")
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
