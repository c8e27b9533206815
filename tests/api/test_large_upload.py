"""Large files through the Uploads API, with bounded memory.

1 GiB on the local server: its own ``fnstack run`` (no other test shares it); the parts
are generated on the fly and sent with the official openai SDK, the file is read back
streamed and compared by sha256, and the server's resident memory is sampled from /proc
throughout: it must stay within ``RSS_BUDGET`` of what it was before the upload started,
however large the file. ``FNSTACK_TEST_UPLOAD_BYTES`` changes the size (default 1 GiB).

100 MiB through the emulated API Gateway (the aws distribution on moto): parts of
4,000,000 bytes (under Lambda's 6 MB payload once base64-encoded), completed into one S3
object by FilesFunction, read back through the redirect to a presigned S3 URL (more than
a function may answer).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.servers import FnstackServer

SIZE = int(os.environ.get("FNSTACK_TEST_UPLOAD_BYTES", str(1024**3)))
PART = 64 * 1024 * 1024  # the local distribution's files.max_part_bytes
RSS_BUDGET = 400 * 1024 * 1024
DIRECT_LIMIT = 1024 * 1024  # FNSTACK_MAX_FILE_BYTES for this server
DISTRIBUTIONS = Path(__file__).resolve().parents[2] / "fnstack" / "distributions"


def _rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FnstackServer]:
    tmp = tmp_path_factory.mktemp("large-upload")
    # The local distribution serving the files API alone: no model loads, so the RSS
    # figures are the upload path's own.
    config = tmp / "files-only.yaml"
    config.write_text((DISTRIBUTIONS / "local.yaml").read_text() + "apis: [files]\n")
    env = {"FNSTACK_HOME": str(tmp / "home"), "FNSTACK_MAX_FILE_BYTES": str(DIRECT_LIMIT)}
    with FnstackServer(["run", str(config)], env=env, log_path=tmp / "server.log") as srv:
        yield srv


def _parts(size: int, part: int = PART) -> Iterator[bytes]:
    # One random block, made unique per part by its index in the first 8 bytes: cheap
    # to generate, and any reordering or loss of parts changes the hash.
    block = random.Random(7).randbytes(min(part, size))
    for index, start in enumerate(range(0, size, part)):
        n = min(part, size - start)
        yield index.to_bytes(8, "big") + block[8:n] if n > 8 else block[:n]


@pytest.mark.slow
def test_one_gib_in_parts_round_trips_with_bounded_memory(server: FnstackServer) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0,
                           timeout=600)
    client.files.list()  # warm: the files service and its stores are open
    base = _rss(pid)
    sampler = RssSampler(pid)
    sampler.start()
    sent = hashlib.sha256()
    md5 = hashlib.md5()
    t0 = time.monotonic()
    up = client.uploads.create(bytes=SIZE, filename="big.bin",
                               mime_type="application/octet-stream", purpose="user_data")
    part_ids = []
    for data in _parts(SIZE):
        sent.update(data)
        md5.update(data)
        part_ids.append(client.uploads.parts.create(upload_id=up.id, data=data).id)
    t1 = time.monotonic()
    done = client.uploads.complete(upload_id=up.id, part_ids=part_ids, md5=md5.hexdigest())
    t2 = time.monotonic()
    assert done.status == "completed" and done.file is not None
    assert done.file.bytes == SIZE
    got = hashlib.sha256()
    size = 0
    with httpx.stream("GET", f"{server.base_url}/files/{done.file.id}/content",
                      timeout=600) as resp:
        assert resp.status_code == 200
        assert int(resp.headers["content-length"]) == SIZE
        for chunk in resp.iter_bytes(1024 * 1024):
            got.update(chunk)
            size += len(chunk)
    t3 = time.monotonic()
    sampler.stop.set()
    sampler.join()
    peak = max(sampler.peak, _rss(pid))
    mib = SIZE / 1024**2
    print(f"\n{mib:.0f} MiB in {len(part_ids)} parts: parts {t1 - t0:.1f}s "
          f"({mib / (t1 - t0):.0f} MiB/s), complete {t2 - t1:.1f}s, read back {t3 - t2:.1f}s; "
          f"server RSS {base / 1024**2:.0f} MiB before, peak {peak / 1024**2:.0f} MiB "
          f"(+{(peak - base) / 1024**2:.0f} MiB), VmHWM {_rss(pid, 'VmHWM') / 1024**2:.0f} MiB")
    assert size == SIZE
    assert got.hexdigest() == sent.hexdigest()
    assert peak - base < RSS_BUDGET, f"server RSS grew by {(peak - base) / 1024**2:.0f} MiB"
    client.files.delete(done.file.id)


def test_direct_upload_over_the_configured_limit_is_413(server: FnstackServer) -> None:
    client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0)
    ok = client.files.create(file=("edge.bin", b"x" * DIRECT_LIMIT), purpose="user_data")
    assert ok.bytes == DIRECT_LIMIT
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("over.bin", b"x" * (DIRECT_LIMIT + 1)), purpose="user_data")
    assert err.value.status_code == 413
    assert err.value.body["code"] == "payload_too_large"  # type: ignore[index]
    assert str(DIRECT_LIMIT) in err.value.message and "Uploads API" in err.value.message
    # Far over (past the multipart slack): refused from Content-Length, body drained.
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("far.bin", b"x" * (8 * DIRECT_LIMIT)), purpose="user_data")
    assert err.value.status_code == 413



def test_a_large_part_refused_up_front_still_reads_its_answer(server: FnstackServer) -> None:
    # Refused before the body is read (unknown upload; Content-Length past the limit):
    # the server drains the body, so the client gets the error, not a reset connection.
    client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create(upload_id="upload_nope", data=b"x" * (48 * 1024 * 1024))
    up = client.uploads.create(bytes=PART + 1, filename="a", mime_type="text/plain",
                               purpose="user_data")
    with pytest.raises(openai.APIStatusError) as err:
        client.uploads.parts.create(upload_id=up.id, data=b"x" * (PART + 1))
    assert err.value.status_code == 413
    client.uploads.cancel(up.id)

GATEWAY_SIZE = 100 * 1024 * 1024
GATEWAY_PART = 4_000_000  # files.max_part_bytes of the aws distribution


@pytest.mark.slow
def test_hundred_mib_through_the_emulated_gateway(tmp_path: Path) -> None:
    from tests.support.gateway import emulated_gateway

    key = "fns-admin-large-upload-test-key"
    args = ["--env", "FNSTACK_AUTH=api_keys", "--env", f"FNSTACK_ADMIN_KEY={key}"]
    with emulated_gateway(tmp_path, args=args) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
        up = client.uploads.create(bytes=GATEWAY_SIZE, filename="big.bin",
                                   mime_type="application/octet-stream", purpose="user_data")
        sent = hashlib.sha256()
        part_ids = []
        t0 = time.monotonic()
        for data in _parts(GATEWAY_SIZE, GATEWAY_PART):
            sent.update(data)
            part_ids.append(client.uploads.parts.create(upload_id=up.id, data=data).id)
        t1 = time.monotonic()
        done = client.uploads.complete(upload_id=up.id, part_ids=part_ids)
        t2 = time.monotonic()
        assert done.file is not None and done.file.bytes == GATEWAY_SIZE
        got = hashlib.sha256()
        with client.files.with_streaming_response.content(done.file.id) as resp:
            # Served by S3 (the presigned URL the function redirected to), not the function.
            assert resp.http_response.history[0].status_code == 307
            for chunk in resp.iter_bytes(1024 * 1024):
                got.update(chunk)
        t3 = time.monotonic()
        print(f"\n100 MiB in {len(part_ids)} parts through the gateway: parts "
              f"{t1 - t0:.1f}s, complete {t2 - t1:.1f}s, read back {t3 - t2:.1f}s")
        assert got.hexdigest() == sent.hexdigest()
        client.files.delete(done.file.id)
