"""Drives llama-stack-client against a live fnstack and prints a JSON report.

Runs in the client virtualenv (.venv-lsc, Python 3.12: llama-stack-client 0.2.13 and
later need it), not in the project's: it imports nothing of fnstack or of the tests.
Every call is one check, ``{"ok": bool, "detail": ...}``; the test asserts on them.

    .venv-lsc/bin/python tests/support/lsc_report.py BASE_URL API_KEY LLM EMBEDDER
"""

from __future__ import annotations

import io
import json
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from llama_stack_client import LlamaStackClient
from llama_stack_client.types.model_retrieve_response import ModelRetrieveResponse


def main(argv: list[str]) -> int:
    base_url, api_key, llm, embedder = argv[:4]
    # The provider serving ``llm`` (the bundled model's, unless the deployment serves it
    # elsewhere: on AWS it has its own function and URL).
    provider = argv[4] if len(argv) > 4 else "reference"
    client = LlamaStackClient(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    report: dict[str, Any] = {}

    def check(name: str, fn: Callable[[], Any]) -> None:
        try:
            report[name] = {"ok": True, "detail": fn()}
        except Exception as exc:
            report[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}",
                            "trace": traceback.format_exc()[-1500:]}

    # --- models -------------------------------------------------------------------------
    def models_list() -> Any:
        return [{"id": m.id, "provider_id": m.provider_id, "model_type": m.model_type,
                 "provider_resource_id": m.provider_resource_id,
                 "custom_metadata": m.custom_metadata} for m in client.models.list()]

    def models_retrieve() -> Any:
        m = client.models.retrieve(llm)
        return {"identifier": m.identifier, "provider_id": m.provider_id,
                "model_type": m.api_model_type,
                "provider_resource_id": m.provider_resource_id}

    registered = f"lsc-{uuid.uuid4().hex[:8]}"

    def models_register() -> Any:
        # 0.7.x has no models.register: the generic call, with Llama Stack's body.
        m = client.post("/v1/models", cast_to=ModelRetrieveResponse, body={
            "model_id": registered, "provider_id": provider,
            "provider_model_id": llm, "model_type": "llm"})
        listed = [x.id for x in client.models.list()]
        return {"identifier": m.identifier, "provider_id": m.provider_id,
                "model_type": m.api_model_type, "listed": registered in listed}

    def models_unregister() -> Any:
        client.delete(f"/v1/models/{registered}", cast_to=object)
        return {"listed": registered in [x.id for x in client.models.list()]}

    check("models.list", models_list)
    check("models.retrieve", models_retrieve)
    check("models.register", models_register)
    check("models.unregister", models_unregister)

    # --- inference ------------------------------------------------------------------------
    question = [{"role": "user", "content": "What is the capital of France?"}]
    created: dict[str, str] = {}

    def chat_plain() -> Any:
        r = client.chat.completions.create(model=llm, messages=question,  # type: ignore[arg-type]
                                           max_tokens=4, temperature=0)
        created["id"] = r.id
        return {"id": r.id, "content": r.choices[0].message.content,
                "finish_reason": r.choices[0].finish_reason}

    def chat_stream() -> Any:
        stream = client.chat.completions.create(model=llm, messages=question,  # type: ignore[arg-type]
                                                max_tokens=4, temperature=0, stream=True)
        parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
        return {"chunks": len(parts), "content": "".join(parts)}

    def completions_list() -> Any:
        page = client.chat.completions.list(limit=1000)
        ours = [c for c in page.data if c.id == created.get("id")]
        return {"count": len(page.data),
                "input_messages": [m.role for m in ours[0].input_messages] if ours else None}

    def completions_retrieve() -> Any:
        c = client.chat.completions.retrieve(created["id"])
        return {"id": c.id, "input_messages": [m.role for m in c.input_messages],
                "content": c.choices[0].message.content}

    def legacy_completion() -> Any:
        r = client.completions.create(model=llm, prompt="The capital of France is",
                                      max_tokens=3, temperature=0)
        return {"text": r.choices[0].text}

    def embeddings() -> Any:
        r = client.embeddings.create(model=embedder, input=["hello world", "bonjour"])
        return {"count": len(r.data), "dimension": len(r.data[0].embedding)}

    check("chat.completions.create", chat_plain)
    check("chat.completions.create(stream)", chat_stream)
    check("chat.completions.list", completions_list)
    check("chat.completions.retrieve", completions_retrieve)
    check("completions.create", legacy_completion)
    check("embeddings.create", embeddings)

    # --- providers, routes, inspect, admin ---------------------------------------------------
    def providers_list() -> Any:
        return [{"provider_id": p.provider_id, "api": p.api, "provider_type": p.provider_type,
                 "health": p.health} for p in client.providers.list()]

    def providers_retrieve() -> Any:
        p = client.providers.retrieve(provider)
        return {"provider_id": p.provider_id, "health": p.health, "api": p.api}

    def routes_list() -> Any:
        return [{"route": r.route, "method": r.method, "provider_types": r.provider_types}
                for r in client.routes.list()]

    check("providers.list", providers_list)
    check("providers.retrieve", providers_retrieve)
    check("routes.list", routes_list)
    check("inspect.health", lambda: client.inspect.health().status)
    check("inspect.version", lambda: client.inspect.version().version)
    admin = client.alpha.admin
    check("alpha.admin.list_providers",
          lambda: [{"provider_id": p.provider_id, "health": p.health}
                   for p in admin.list_providers()])
    check("alpha.admin.inspect_provider",
          lambda: admin.inspect_provider(provider).provider_type)
    check("alpha.admin.list_routes",
          lambda: [{"route": r.route, "provider_types": r.provider_types}
                   for r in admin.list_routes(api_filter="v1")])
    check("alpha.admin.health", lambda: admin.health().status)
    check("alpha.admin.version", lambda: admin.version().version)

    # --- files and vector stores ------------------------------------------------------------
    def files() -> Any:
        f = client.files.create(file=("note.txt", io.BytesIO(b"Paris is in France.")),
                                purpose="assistants")
        got = client.files.retrieve(f.id)
        content = client.files.content(f.id)
        listed = [x.id for x in client.files.list()]
        client.files.delete(f.id)
        text = content if isinstance(content, str) else getattr(content, "text", str(content))
        return {"id": f.id, "bytes": got.bytes, "filename": got.filename,
                "listed": f.id in listed, "content": text}

    def vector_stores() -> Any:
        f = client.files.create(file=("paris.txt", io.BytesIO(b"Paris is the capital of "
                                                               b"France.")),
                                purpose="assistants")
        vs = client.vector_stores.create(name="lsc", file_ids=[f.id])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            vs = client.vector_stores.retrieve(vs.id)
            if vs.file_counts.in_progress == 0:
                break
            time.sleep(0.5)
        hits = client.vector_stores.search(vs.id, query="capital of France")
        listed = [v.id for v in client.vector_stores.list()]
        client.vector_stores.delete(vs.id)
        client.files.delete(f.id)
        return {"id": vs.id, "completed": vs.file_counts.completed, "listed": vs.id in listed,
                "hits": [h.content[0].text for h in hits.data]}

    check("files", files)
    check("vector_stores", vector_stores)

    # --- safety ---------------------------------------------------------------------------
    check("shields.list", lambda: [{"identifier": s.identifier, "provider_id": s.provider_id}
                                   for s in client.shields.list()])

    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
