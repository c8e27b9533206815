"""A bounded fuzz run: schemathesis against the live server's own OpenAPI document.

Every operation is called with generated valid and invalid inputs, authenticated as the
admin; the bar is zero responses >= 500 and zero statuses or bodies the document does
not describe. Generation endpoints are exercised with their token counts capped by the
schema's own bounds; the run is deterministic and small so it stays within CI's time.

The same run by hand, longer::

    st run http://127.0.0.1:8321/openapi.json -H "Authorization: Bearer $KEY" \\
        --checks not_a_server_error,status_code_conformance,content_type_conformance \\
        --max-examples 50
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.api.conftest import LiveApi


def test_schemathesis_finds_no_server_error_and_no_undocumented_status(api: LiveApi) -> None:
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    base = api.base_url.removesuffix("/v1")
    # The agent APIs are in the document the run fuzzes (and not filtered out below).
    paths = httpx.get(f"{base}/openapi.json", headers=api.headers,
                      timeout=60).json()["paths"]
    for path in ("/v1/responses", "/v1/responses/{response_id}",
                 "/v1/responses/{response_id}/input_items",
                 "/v1/responses/{response_id}/cancel", "/v1/conversations",
                 "/v1/conversations/{conversation_id}/items", "/v1/prompts",
                 "/v1/prompts/{prompt_id}/versions"):
        assert path in paths, f"{path} is missing from the OpenAPI document"
    done = subprocess.run(
        [st, "run", f"{base}/openapi.json", "--url", base,
         "-H", f"Authorization: Bearer {api.key}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance",
         "--max-examples", "6", "--generation-deterministic", "--request-timeout", "60",
         # Generation is the slow path on two cores; its validation is covered by the
         # API suite. Key revocation would lock the run out of its own credentials.
         "--exclude-path-regex", r"^/v1/(chat/completions|completions|messages)$|^/v1/keys",
         "--phases", "examples,coverage,fuzzing",
         "--no-color"],
        capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
