"""``inline::reference`` behind ``fnstack run``: work for a client that left stops.

A buffered ``/v1/completions`` request of many prompts x n is abandoned by its client;
the server (``RequestGuard``) cancels the request, and the engine must free every one
of its sequences at once: the process goes idle within about two seconds instead of
generating minutes of text for nobody. Real model, real sockets.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support.servers import FnstackServer, cpu_seconds

CONFIG = """\
version: 1
apis: [inference, models, inspect]  # only what the test uses: fewer stores to declare
providers:
  inference:
    - provider_id: reference
      provider_type: inline::reference
      config:
        max_seq_len: 512
        max_sequences_per_request: 128
storage:
  backends:
    kv: {{type: kv_sqlite, db_path: {tmp}/kv.db}}
  stores:
    registry: {{backend: kv, namespace: registry}}
    inference: {{backend: kv, namespace: chat_completions}}
cache_dir: {cache}
"""


@pytest.mark.slow
def test_an_abandoned_completions_request_stops_all_its_sequences(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # pytest's cache keeps the cached weights between runs (never the user's ~/.cache).
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("fnstack-weights") if cache is not None else tmp_path / "cache"
    config = tmp_path / "reference.yaml"
    config.write_text(CONFIG.format(tmp=tmp_path, cache=cache_dir))
    log = tmp_path / "server.log"
    with FnstackServer(["run", str(config)], log_path=log) as fn:
        assert fn.proc is not None
        model = httpx.get(f"{fn.base_url}/models", timeout=30).json()["data"][0]["id"]
        # Past the per-request limit: refused before any work, naming the config key.
        refused = httpx.post(f"{fn.base_url}/completions", timeout=30, json={
            "model": model, "prompt": ["Once upon a time"] * 200, "n": 8, "max_tokens": 4})
        assert refused.status_code == 400, refused.text
        assert "max_sequences_per_request" in refused.json()["error"]["message"]
        # 32 prompts x n=4 = 128 sequences of 200 tokens: minutes of CPU decoding.
        prompts = [f"Story {i}: once upon a time, in a land far away," for i in range(32)]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{fn.base_url}/completions", timeout=1.5, json={
                "model": model, "prompt": prompts, "n": 4, "max_tokens": 200,
                "temperature": 1.0})
        time.sleep(2.0)  # the step under way when the client left, and the cancel
        before = cpu_seconds(fn.proc.pid)
        time.sleep(3.0)
        busy = cpu_seconds(fn.proc.pid) - before
        # Still generating, the engine would keep both cores busy (~3-6 CPU s).
        assert busy < 0.5, f"fnstack used {busy:.2f} CPU s after its client had gone"
        ok = httpx.post(f"{fn.base_url}/completions", timeout=60, json={
            "model": model, "prompt": "One, two,", "max_tokens": 3, "temperature": 0})
        assert ok.status_code == 200, ok.text
    text = log.read_text()
    assert "client went away" in text
    # The model load says what it does (a first run caches the weights for a minute).
    assert "loading SmolLM2-135M-Instruct (first run: caching its weights)" in text
