"""A stand-in for a container-image function, where Docker cannot build the image.

`sam build` needs Docker for ``PackageType: Image`` functions, so the built bundle has
none. The emulator runs one from what its Dockerfile puts together: the files it copies
into ``${LAMBDA_TASK_ROOT}`` are gathered into a task folder, and its ENTRYPOINT script
runs there on the development venv's Python (which has what the image installs: torch,
the project, uvicorn), behind the emulated Web Adapter when the template configures one
(``AWS_LWA_*``). Paths under /var/task in its environment point at the task folder.

Less faithful than the zip functions (another Python, no image filesystem), and said so
in docs/serverless.md; the routes, environment, timeout and streaming are the template's.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from pathlib import Path

from fnstack_dev.sandbox import FunctionSpec
from fnstack_dev.template import FunctionDef, Template

__all__ = ["image_spec"]

TASK_ROOT = "/var/task"


def _dockerfile(path: Path) -> tuple[list[tuple[list[str], str]], list[str]]:
    """COPY instructions (sources, destination) and the ENTRYPOINT, continuation lines
    joined. Multi-stage COPY --from=... is not the build context: skipped."""
    text = path.read_text().replace("\\\n", " ")
    copies: list[tuple[list[str], str]] = []
    entrypoint: list[str] = []
    for line in text.splitlines():
        words = line.strip().split(None, 1)
        if len(words) < 2:
            continue
        op, rest = words[0].upper(), words[1]
        if op == "COPY" and "--from" not in rest:
            parts = shlex.split(rest)
            copies.append((parts[:-1], parts[-1]))
        elif op == "ENTRYPOINT":
            entrypoint = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return copies, entrypoint


def image_spec(template: Template, fn: FunctionDef, env: dict[str, str], *, work: Path,
               concurrency: int) -> FunctionSpec | None:
    """The stand-in's spec, or None when the function has no Dockerfile to read."""
    meta = template.resources[fn.logical_id].get("Metadata", {}) or {}
    dockerfile, context = meta.get("Dockerfile"), meta.get("DockerContext", ".")
    if not isinstance(dockerfile, str):
        return None
    root = (template.root / str(context)).resolve()
    copies, entrypoint = _dockerfile(root / dockerfile)
    task = work / fn.logical_id
    shutil.rmtree(task, ignore_errors=True)
    task.mkdir(parents=True)
    script: Path | None = None
    for sources, dest in copies:
        for source in sources:
            if entrypoint and dest == entrypoint[0]:
                script = root / source
            elif dest.startswith("${LAMBDA_TASK_ROOT}/") and dest.endswith("/"):
                src = root / source
                if src.is_file():
                    shutil.copy2(src, task / src.name)
    if script is None:
        return None
    env = {k: (str(task) + v[len(TASK_ROOT):] if v.startswith(TASK_ROOT) else v)
           for k, v in env.items()}
    env["PYTHONPATH"] = ""
    return FunctionSpec(
        name=fn.logical_id, task_root=task, handler=str(script), env=env,
        timeout_s=fn.timeout_s, memory_mb=fn.memory_mb,
        concurrency=fn.reserved_concurrency or concurrency, layers=[],
        adapter=any(k.startswith("AWS_LWA_") for k in env), python=sys.executable,
    )
