"""`sam build` without Docker: the zip functions and the provider layer.

The container-image function needs Docker to build, and `sam build` ignores template
Conditions, so this builds from a copy of template.yaml with the image function (and
what refers to it) left out, code paths made absolute. Run it with the Python that has
aws-sam-cli (``.venv-sam/bin/python infra/sam_build.py``); python3.12 must be on PATH.

With Docker, build everything the usual way: ``sam build`` (then ``sam deploy``).

The architecture: ``--parameter-overrides Architecture=arm64`` (or ``LAYER_ARCH=arm64``)
builds the layer's wheels for arm64 (layers/Makefile reads LAYER_ARCH: sam build tells
make no architecture). A plain ``sam build`` needs ``LAYER_ARCH=arm64`` set by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / ".aws-sam" / "build"
ZIP_TEMPLATE = ROOT / ".aws-sam" / "template.zip-only.json"


def zip_only(template: dict[str, Any], root: Path) -> dict[str, Any]:
    """The template minus image functions, with CodeUri/ContentUri absolute."""
    out = json.loads(json.dumps(template))
    resources = out["Resources"]
    images = [n for n, r in resources.items()
              if r.get("Properties", {}).get("PackageType") == "Image"]
    for name in images:
        del resources[name]
    out["Outputs"] = {k: v for k, v in out.get("Outputs", {}).items()
                      if not any(img in json.dumps(v) for img in images)}
    for r in resources.values():
        props = r.get("Properties", {})
        for key in ("CodeUri", "ContentUri"):
            if isinstance(props.get(key), str):
                props[key] = str((root / props[key]).resolve())
        meta = r.get("Metadata", {})
        if isinstance(meta.get("WorkingDirectory"), str):
            meta["WorkingDirectory"] = str((root / meta["WorkingDirectory"]).resolve())
    return out


def architecture(argv: list[str], env: dict[str, str]) -> str:
    """x86_64 or arm64: the Architecture parameter override, else LAYER_ARCH."""
    found = re.search(r"(?:Architecture=|ParameterKey=Architecture,ParameterValue=)(\w+)",
                      " ".join(argv))
    arch = found.group(1) if found else env.get("LAYER_ARCH") or "x86_64"
    if arch not in ("x86_64", "arm64"):
        raise SystemExit(f"Architecture {arch!r}: use x86_64 or arm64")
    return arch


def main() -> int:
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse((ROOT / "template.yaml").read_text())
    arch = architecture(sys.argv[1:], dict(os.environ))
    os.environ["LAYER_ARCH"] = arch
    bundle = zip_only(template, ROOT)
    for resource in bundle["Resources"].values():
        if resource.get("Metadata", {}).get("BuildMethod") == "makefile":
            resource["Metadata"]["BuildArchitecture"] = arch
    ZIP_TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    ZIP_TEMPLATE.write_text(json.dumps(bundle, indent=2))
    sam = Path(sys.executable).with_name("sam")
    cmd = [str(sam), "build", "--template-file", str(ZIP_TEMPLATE),
           "--build-dir", str(BUILD_DIR), "--parallel", *sys.argv[1:]]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
