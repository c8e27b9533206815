"""Budget check on `sam build` output: layer + largest zip function < 250 MB unzipped.

Lambda refuses a zip function whose code and layers exceed 250 MB unzipped. torch must
never be in the layer (it belongs to the container-image function only).

    python infra/check_layer_size.py [.aws-sam/build]
"""

from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 250 * 1024 * 1024
FORBIDDEN = ("torch", "torchvision", "triton", "nvidia")


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str]) -> int:
    build = Path(argv[0] if argv else ".aws-sam/build")
    layers = [p for p in build.iterdir() if p.is_dir() and (p / "python").is_dir()]
    functions = [p for p in build.iterdir() if p.is_dir() and p not in layers]
    if not layers or not functions:
        print(f"error: no layer or no function in {build}; run sam build first", file=sys.stderr)
        return 1
    failed = False
    for layer in layers:
        found = [name for name in FORBIDDEN if (layer / "python" / name).exists()]
        if found:
            print(f"error: {layer.name} contains {', '.join(found)}; torch belongs to the "
                  "container-image function only", file=sys.stderr)
            failed = True
    layer_bytes = sum(tree_size(layer) for layer in layers)
    largest = max(functions, key=tree_size)
    total = layer_bytes + tree_size(largest)
    mb = 1024 * 1024
    print(f"layers {layer_bytes / mb:.1f} MB + largest function {largest.name} "
          f"{tree_size(largest) / mb:.2f} MB = {total / mb:.1f} MB of {LIMIT / mb:.0f} MB")
    if total >= LIMIT:
        print("error: over Lambda's 250 MB unzipped limit", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
