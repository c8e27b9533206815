"""Vector stores end to end through the official openai SDK, in every execution mode.

Files are uploaded (a markdown file and a PDF the test makes), a store is created with
them, the test polls until ingestion is done (a background job locally, the worker
function behind SQS in the emulated gateway), then searches: vector, keyword and hybrid,
with attribute filters. Deleting a file removes its chunks; another principal sees none
of it. The embedding model is the bundled all-MiniLM-L6-v2.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import LiveApi
from tests.support.documents import make_pdf

MARKDOWN = """# Field notes

## Volcanoes
The caldera of Mount Tamboro collapsed in 1815 and the ash darkened skies for a year.

## Bees
Honeybees communicate the direction of flowers with a waggle dance inside the hive.

## Trains
The Glacier Express crosses 291 bridges between Zermatt and St. Moritz.
"""

PDF_PAGES = [
    "Quarterly report\nRevenue grew eleven percent, driven by the new zinc smelter.",
    "Safety\nThe zinc smelter logged zero incidents after the ventilation upgrade.",
    "Outlook\nThe board approved a copper mine feasibility study for next spring.",
]


def _wait(client: openai.OpenAI, vs_id: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        vs = client.vector_stores.retrieve(vs_id)
        if vs.file_counts.in_progress == 0:
            return vs
        assert time.monotonic() < deadline, f"ingestion did not finish: {vs.file_counts}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def corpus(api: LiveApi) -> Iterator[dict[str, Any]]:
    client = openai.OpenAI(base_url=api.base_url, api_key=api.key, max_retries=0, timeout=120)
    md = client.files.create(file=("notes.md", MARKDOWN.encode(), "text/markdown"),
                             purpose="assistants")
    pdf = client.files.create(file=("report.pdf", make_pdf(PDF_PAGES), "application/pdf"),
                              purpose="assistants")
    vs = client.vector_stores.create(name=f"corpus-{uuid.uuid4().hex[:6]}")
    client.vector_stores.files.create(vs.id, file_id=md.id, attributes={"kind": "notes",
                                                                        "year": 2024})
    client.vector_stores.files.create(vs.id, file_id=pdf.id, attributes={"kind": "report",
                                                                         "year": 2025})
    done = _wait(client, vs.id)
    yield {"client": client, "vs": done, "md": md, "pdf": pdf}
    client.vector_stores.delete(vs.id)


def test_ingestion_completes_with_true_counts(corpus: dict[str, Any]) -> None:
    vs = corpus["vs"]
    assert vs.file_counts.completed == 2 and vs.file_counts.total == 2
    assert vs.file_counts.failed == 0 and vs.status == "completed"
    assert vs.usage_bytes > 0
    files = corpus["client"].vector_stores.files.list(vs.id)
    assert {f.id for f in files} == {corpus["md"].id, corpus["pdf"].id}
    assert all(f.status == "completed" and f.usage_bytes > 0 for f in files)


def test_vector_search_finds_the_chunk_with_the_answer(corpus: dict[str, Any]) -> None:
    client, vs = corpus["client"], corpus["vs"]
    page = client.vector_stores.search(vs.id, query="How do bees tell others where flowers are?")
    top = page.data[0]
    assert "waggle dance" in top.content[0].text
    assert top.filename == "notes.md" and top.file_id == corpus["md"].id
    assert top.attributes == {"kind": "notes", "year": 2024}
    assert 0 < top.score <= 1
    page = client.vector_stores.search(vs.id, query="zinc smelter safety incidents")
    assert "zero incidents" in page.data[0].content[0].text
    assert page.data[0].filename == "report.pdf"


def test_attribute_filters(corpus: dict[str, Any]) -> None:
    client, vs = corpus["client"], corpus["vs"]
    only_report = client.vector_stores.search(
        vs.id, query="bees waggle dance", filters={"type": "eq", "key": "kind", "value": "report"})
    assert only_report.data and all(r.file_id == corpus["pdf"].id for r in only_report.data)
    recent = client.vector_stores.search(
        vs.id, query="anything", filters={"type": "and", "filters": [
            {"type": "gte", "key": "year", "value": 2025},
            {"type": "in", "key": "kind", "value": ["report", "memo"]}]})
    assert all(r.file_id == corpus["pdf"].id for r in recent.data)
    none = client.vector_stores.search(
        vs.id, query="bees", filters={"type": "eq", "key": "kind", "value": "nothing"})
    assert none.data == []


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_keyword_and_hybrid_search(corpus: dict[str, Any], mode: str) -> None:
    client, vs = corpus["client"], corpus["vs"]
    page = client.vector_stores.search(vs.id, query="Glacier Express bridges",
                                       extra_body={"search_mode": mode})
    assert "291 bridges" in page.data[0].content[0].text
    assert page.data[0].score <= 1


def test_max_num_results_and_bad_filters_are_400(corpus: dict[str, Any],
                                                  http: httpx.Client) -> None:
    vs = corpus["vs"]
    for body in ({"query": "x", "max_num_results": 0}, {"query": "x", "max_num_results": 51},
                 {"query": "x", "filters": {"type": "eq", "key": "k", "value": {"a": 1}}},
                 {"query": "x", "filters": {"type": "almost", "key": "k", "value": 1}},
                 {"query": ""}):
        r = http.post(f"/v1/vector_stores/{vs.id}/search", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_file_content_is_its_chunks(corpus: dict[str, Any], http: httpx.Client) -> None:
    vs = corpus["vs"]
    r = http.get(f"/v1/vector_stores/{vs.id}/files/{corpus['md'].id}/content")
    assert r.status_code == 200
    texts = [p["text"] for p in r.json()["data"]]
    assert texts and any("Glacier Express" in t for t in texts)


def test_unknown_ids_are_404(client: openai.OpenAI, corpus: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve("vs_nope")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.files.create(corpus["vs"].id, file_id="file-nope")
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.search("vs_nope", query="x")


def test_bad_files_end_failed_with_last_error(client: openai.OpenAI) -> None:
    corrupt = client.files.create(file=("broken.pdf", b"%PDF-1.4\nthis is not a pdf",
                                        "application/pdf"), purpose="assistants")
    png = client.files.create(file=("image.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
                                    "image/png"), purpose="assistants")
    vs = client.vector_stores.create(file_ids=[corrupt.id, png.id])
    done = _wait(client, vs.id)
    assert done.file_counts.failed == 2 and done.file_counts.completed == 0
    for f in client.vector_stores.files.list(vs.id):
        assert f.status == "failed" and f.last_error is not None
        assert f.last_error.code in ("invalid_file", "unsupported_file")
        assert f.last_error.message
    client.vector_stores.delete(vs.id)


def test_delete_file_removes_its_chunks(client: openai.OpenAI) -> None:
    a = client.files.create(file=("a.txt", b"The lighthouse keeper feeds seven cats.",
                                  "text/plain"), purpose="assistants")
    b = client.files.create(file=("b.txt", b"Sourdough needs a lively starter and time.",
                                  "text/plain"), purpose="assistants")
    vs = client.vector_stores.create(file_ids=[a.id, b.id])
    _wait(client, vs.id)
    hits = client.vector_stores.search(vs.id, query="lighthouse keeper cats")
    assert hits.data[0].file_id == a.id
    client.vector_stores.files.delete(file_id=a.id, vector_store_id=vs.id)
    hits = client.vector_stores.search(vs.id, query="lighthouse keeper cats")
    assert all(h.file_id != a.id for h in hits.data)
    assert client.vector_stores.retrieve(vs.id).file_counts.total == 1
    deleted = client.vector_stores.delete(vs.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        client.vector_stores.retrieve(vs.id)


def test_another_principal_sees_none_of_it(api: LiveApi, corpus: dict[str, Any],
                                           http: httpx.Client) -> None:
    created = http.post("/v1/keys", json={"name": f"eve-{uuid.uuid4().hex[:6]}",
                                          "principal": "eve"})
    assert created.status_code == 200
    eve = openai.OpenAI(base_url=api.base_url, api_key=created.json()["value"], max_retries=0)
    vs, md = corpus["vs"], corpus["md"]
    with pytest.raises(openai.NotFoundError):
        eve.vector_stores.retrieve(vs.id)
    with pytest.raises(openai.NotFoundError):
        eve.vector_stores.search(vs.id, query="bees")
    with pytest.raises(openai.NotFoundError):
        eve.vector_stores.files.list(vs.id)
    with pytest.raises(openai.NotFoundError):
        eve.vector_stores.delete(vs.id)
    assert vs.id not in [v.id for v in eve.vector_stores.list()]
    # Nor can eve attach someone else's file to a store of her own.
    own = eve.vector_stores.create(name="eve's")
    with pytest.raises(openai.NotFoundError):
        eve.vector_stores.files.create(own.id, file_id=md.id)
    eve.vector_stores.delete(own.id)
