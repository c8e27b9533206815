"""The Files and Uploads APIs through the official openai SDK, in every execution mode.

Local: ``fnstack run local`` (SQLite + a folder). Gateway: the emulated API Gateway in
front of FilesFunction on moto's DynamoDB and S3, where multipart bodies and binary
content cross the gateway base64-encoded and every part stays under Lambda's 6 MB.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi

# files.max_part_bytes / max_file_bytes of each distribution (local.yaml, aws.yaml).
PART_LIMIT = {"local": 64 * 1024 * 1024, "gateway": 4_000_000}
FILE_LIMIT = {"local": 512 * 1024 * 1024, "gateway": 4_000_000}


def _ids(page: object) -> list[str]:
    return [f.id for f in page]  # type: ignore[attr-defined]


def test_upload_retrieve_content_list_delete(client: openai.OpenAI, http: httpx.Client) -> None:
    text = "# Notes\n\nThe capital of Atlantis is Poseidonia. é\n".encode()
    f = client.files.create(file=("notes.md", text, "text/markdown"), purpose="assistants")
    assert f.id.startswith("file-") and f.object == "file"
    assert (f.bytes, f.filename, f.purpose, f.status) == (len(text), "notes.md", "assistants",
                                                          "processed")
    assert f.expires_at is None
    assert client.files.retrieve(f.id) == f

    content = client.files.content(f.id)
    assert content.content == text
    assert content.response.headers["content-type"].startswith("text/markdown")
    assert 'filename="notes.md"' in content.response.headers["content-disposition"]

    listed = client.files.list(purpose="assistants")
    assert f.id in _ids(listed)

    deleted = client.files.delete(f.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (f.id, "file", True)
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(f.id)
    assert f.id not in _ids(client.files.list())


def test_binary_content_round_trips(client: openai.OpenAI) -> None:
    blob = os.urandom(300_000) + bytes(range(256))
    f = client.files.create(file=("blob.bin", blob, "application/octet-stream"),
                            purpose="user_data",
                            expires_after={"anchor": "created_at", "seconds": 7200})
    assert f.expires_at == f.created_at + 7200
    got = client.files.content(f.id)
    assert got.content == blob
    assert got.response.headers["content-type"] == "application/octet-stream"
    client.files.delete(f.id)


def test_purposes_filter_and_pagination(client: openai.OpenAI, http: httpx.Client) -> None:
    tag = uuid.uuid4().hex[:8]
    made = {}
    for purpose in ("assistants", "batch", "fine-tune", "vision", "user_data", "evals"):
        f = client.files.create(file=(f"{tag}-{purpose}.jsonl", b'{"a": 1}\n'), purpose=purpose)
        made[f.id] = purpose
    # Each purpose filters to its own.
    for fid, purpose in made.items():
        assert fid in _ids(client.files.list(purpose=purpose))
        others = set(made) - {fid}
        assert not others & set(_ids(client.files.list(purpose=purpose))) - {
            i for i, p in made.items() if p == purpose}
    # Newest first by default; cursors walk the whole list one item at a time.
    mine = [i for i in _ids(client.files.list()) if i in made]
    assert mine == sorted(made, reverse=True)
    walked = [i for i in _ids(client.files.list(limit=1, order="asc")) if i in made]
    assert walked == sorted(made)
    page = http.get("/v1/files", params={"limit": 2, "order": "asc"}).json()
    assert page["object"] == "list" and len(page["data"]) == 2 and page["has_more"] is True
    assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][1]["id"]
    nxt = http.get("/v1/files", params={"limit": 2, "order": "asc",
                                        "after": page["last_id"]}).json()
    assert nxt["data"][0]["id"] > page["last_id"]
    for fid in made:
        client.files.delete(fid)


def test_upload_in_parts_round_trips_sha256(client: openai.OpenAI, api: LiveApi) -> None:
    part_size = 1_500_000
    data = os.urandom(part_size * 2 + 12_345)
    up = client.uploads.create(bytes=len(data), filename="parts.bin",
                               mime_type="application/octet-stream", purpose="batch")
    assert up.status == "pending" and up.id.startswith("upload_") and up.file is None
    assert up.expires_at - up.created_at == 3600
    parts = [client.uploads.parts.create(upload_id=up.id, data=data[i:i + part_size])
             for i in range(0, len(data), part_size)]
    assert len(parts) == 3 and all(p.upload_id == up.id for p in parts)
    done = client.uploads.complete(upload_id=up.id, part_ids=[p.id for p in parts],
                                   md5=hashlib.md5(data).hexdigest())
    assert done.status == "completed" and done.file is not None
    assert (done.file.bytes, done.file.filename, done.file.purpose) == (len(data), "parts.bin",
                                                                        "batch")
    got = client.files.content(done.file.id).content
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert client.files.retrieve(done.file.id).bytes == len(data)
    # Finished: no more parts, no second completion, no cancel.
    with pytest.raises(openai.BadRequestError):
        client.uploads.parts.create(upload_id=up.id, data=b"more")
    with pytest.raises(openai.BadRequestError):
        client.uploads.complete(upload_id=up.id, part_ids=[p.id for p in parts])
    with pytest.raises(openai.BadRequestError):
        client.uploads.cancel(up.id)
    client.files.delete(done.file.id)


def test_cancelled_upload_takes_nothing(client: openai.OpenAI) -> None:
    up = client.uploads.create(bytes=8, filename="c.txt", mime_type="text/plain",
                               purpose="user_data")
    part = client.uploads.parts.create(upload_id=up.id, data=b"abcd")
    assert client.uploads.cancel(up.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as err:
        client.uploads.complete(upload_id=up.id, part_ids=[part.id])
    assert err.value.code == "upload_cancelled"


# --- bad input ---------------------------------------------------------------------------


def _error(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err: dict[str, object] = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_wrong_purpose_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("a.txt", b"x"), purpose="homework")  # type: ignore[arg-type]
    assert err.value.param == "purpose" and "user_data" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.uploads.create(bytes=1, filename="a", mime_type="text/plain",
                              purpose="homework")  # type: ignore[arg-type]


def test_empty_file_and_missing_fields_are_400(client: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("empty.txt", b""), purpose="user_data")
    assert err.value.code == "empty_file"
    err2 = _error(http.post("/v1/files", data={"purpose": "user_data"}), 400)
    assert err2["param"] == "file"
    err2 = _error(http.post("/v1/files", files={"file": ("a.txt", b"x")}), 400)
    assert err2["param"] == "purpose"
    _error(http.post("/v1/files", json={"purpose": "user_data"}), 400)
    err2 = _error(http.post("/v1/files", files={"file": ("a.txt", b"x")},
                            data={"purpose": "user_data", "expires_after[anchor]": "created_at",
                                  "expires_after[seconds]": "10"}), 400)
    assert err2["param"] == "expires_after"


def test_unknown_ids_are_404(client: openai.OpenAI, http: httpx.Client) -> None:
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call("file-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        client.uploads.parts.create(upload_id="upload_nope", data=b"x")
    with pytest.raises(openai.NotFoundError):
        client.uploads.complete(upload_id="upload_nope", part_ids=["part_x"])
    with pytest.raises(openai.NotFoundError):
        client.uploads.cancel("upload_nope")
    up = client.uploads.create(bytes=4, filename="a", mime_type="text/plain", purpose="user_data")
    err = _error(http.post(f"/v1/uploads/{up.id}/complete", json={"part_ids": ["part_nope"]}),
                 400)
    assert err["code"] == "unknown_part"
    client.uploads.cancel(up.id)


def test_oversized_part_and_file_are_413(client: openai.OpenAI, http: httpx.Client,
                                        api: LiveApi) -> None:
    limit = PART_LIMIT[api.mode]
    up = client.uploads.create(bytes=limit + 10, filename="big", mime_type="text/plain",
                               purpose="user_data")
    with pytest.raises(openai.APIStatusError) as err:
        client.uploads.parts.create(upload_id=up.id, data=b"x" * (limit + 1))
    assert err.value.status_code == 413
    assert str(limit) in err.value.message and "max_part_bytes" in err.value.message
    client.uploads.cancel(up.id)
    with pytest.raises(openai.APIStatusError) as err:
        client.uploads.create(bytes=9 * 1024**3, filename="huge", mime_type="text/plain",
                              purpose="user_data")
    assert err.value.status_code == 413
    if api.mode == "gateway":  # the local limit (512 MB) is tested in test_large_upload
        resp = http.post("/v1/files", files={"file": ("big.bin", b"x" * (FILE_LIMIT["gateway"]
                                                                         + 1))},
                         data={"purpose": "user_data"})
        assert "4000000" in str(_error(resp, 413)["message"])


# --- tenancy -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(api: LiveApi) -> Iterator[dict[str, openai.OpenAI]]:
    out = {}
    with httpx.Client(base_url=api.base_url.removesuffix("/v1"), timeout=120,
                      headers=api.headers) as admin:
        for name in ("filer-a", "filer-b"):
            created = admin.post("/v1/keys", json={"name": f"{name}-{uuid.uuid4().hex[:6]}",
                                                   "principal": f"{name}-{uuid.uuid4().hex[:6]}"})
            assert created.status_code == 200, created.text
            out[name] = openai.OpenAI(base_url=api.base_url, api_key=created.json()["value"],
                                      max_retries=0, timeout=120)
    yield out


def test_another_principal_sees_no_file_or_upload(tenants: dict[str, openai.OpenAI],
                                                   client: openai.OpenAI) -> None:
    a, b = tenants["filer-a"], tenants["filer-b"]
    f = a.files.create(file=("secret.txt", b"a's data"), purpose="user_data")
    assert a.files.retrieve(f.id).id == f.id
    for call in (b.files.retrieve, b.files.content, b.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(f.id)
    assert f.id not in _ids(b.files.list())
    assert f.id in _ids(a.files.list())
    up = a.uploads.create(bytes=3, filename="u", mime_type="text/plain", purpose="user_data")
    with pytest.raises(openai.NotFoundError):
        b.uploads.parts.create(upload_id=up.id, data=b"abc")
    part = a.uploads.parts.create(upload_id=up.id, data=b"abc")
    with pytest.raises(openai.NotFoundError):
        b.uploads.complete(upload_id=up.id, part_ids=[part.id])
    with pytest.raises(openai.NotFoundError):
        b.uploads.cancel(up.id)
    done = a.uploads.complete(upload_id=up.id, part_ids=[part.id])
    assert done.file is not None
    with pytest.raises(openai.NotFoundError):
        b.files.content(done.file.id)
    # The admin reads any record (the default policy).
    assert client.files.retrieve(f.id).id == f.id
    a.files.delete(f.id)
    a.files.delete(done.file.id)
