"""fnstack.ingest: parsing real files made here (PDF by reportlab, DOCX by python-docx,
encrypted by pypdf) and chunking with the real all-MiniLM-L6-v2 tokenizer."""

from __future__ import annotations

import io
import itertools
import json
import random
import subprocess
import sys
import zipfile
from collections.abc import Sequence

import pytest

from fnstack.ingest import (
    AUTO_MAX_TOKENS,
    AUTO_OVERLAP_TOKENS,
    HFTokenizer,
    IngestError,
    TextChunk,
    check_chunking,
    chunk,
    chunk_document,
    detect_kind,
    hf_tokenizer,
    parse,
    whitespace_tokenizer,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(64)


# --------------------------------------------------------------------- file makers


def make_pdf(pages: Sequence[Sequence[str]]) -> bytes:
    """A PDF with one page per entry, each line drawn as text."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=letter)
    for lines in pages:
        y = 740.0
        for line in lines:
            pdf.drawString(50, y, line)
            y -= 14
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew in the northern region.")
    table = document.add_table(rows=3, cols=3)
    for r, row in enumerate([["Region", "Q1", "Q2"], ["North", "10", "12"], ["South", "7", "9"]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    merged = document.add_table(rows=1, cols=3)
    merged.cell(0, 0).merge(merged.cell(0, 1)).text = "Merged cell"
    merged.cell(0, 2).text = "Alone"
    document.add_paragraph("Closing remarks after the tables.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


def make_zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, content in names.items():
            archive.writestr(name, content)
    return buf.getvalue()


def expect_error(code: str, data: bytes, filename: str, content_type: str | None = None) -> str:
    with pytest.raises(IngestError) as info:
        parse(data, filename=filename, content_type=content_type)
    assert info.value.code == code, info.value.message
    assert filename in info.value.message
    assert info.value.as_last_error() == {"code": code, "message": info.value.message}
    return info.value.message


# --------------------------------------------------------------------------- PDF


def test_pdf_pages_in_order_with_offsets() -> None:
    data = make_pdf([
        ["Alpha page talks about apples.", "A second line on page one."],
        ["Bravo page talks about bananas."],
        ["Charlie page talks about cherries."],
    ])
    for content_type in ("application/pdf", None, "text/plain"):  # the bytes win over text
        name = "fruit.pdf" if content_type else "blob"
        doc = parse(data, filename=name, content_type=content_type)
        assert doc.kind == "pdf"
        assert len(doc.pages) == 3
        assert "apples" in doc.pages[0] and "A second line" in doc.pages[0]
        assert "bananas" in doc.pages[1] and "cherries" in doc.pages[2]
        assert "bananas" not in doc.pages[0]
        for page, start in zip(doc.pages, doc.page_starts, strict=True):
            assert doc.text[start : start + len(page)] == page


def test_pdf_corrupt_truncated_and_garbage() -> None:
    good = make_pdf([["Some text."]])
    message = expect_error("invalid_file", good[: len(good) // 2], "broken.pdf", "application/pdf")
    assert "corrupt" in message
    expect_error("invalid_file", b"%PDF-1.4\n" + bytes(range(256)) * 8, "garbage.pdf", None)
    message = expect_error("invalid_file", b"just some text", "fake.pdf", "application/pdf")
    assert "%PDF-" in message


def test_pdf_with_password_is_refused_owner_only_is_read() -> None:
    data = make_pdf([["Confidential numbers inside."]])
    message = expect_error("invalid_file", encrypt_pdf(data, "secret"), "locked.pdf")
    assert "password" in message
    doc = parse(encrypt_pdf(data, ""), filename="restricted.pdf", content_type=None)
    assert "Confidential numbers" in doc.text
    assert any("encrypted" in note for note in doc.notes)


def test_pdf_without_text_is_empty_with_ocr_hint() -> None:
    message = expect_error("empty_file", make_pdf([[], []]), "scan.pdf", "application/pdf")
    assert "OCR" in message and "2 page" in message


# -------------------------------------------------------------------------- DOCX


def test_docx_paragraphs_and_tables_in_order() -> None:
    doc = parse(make_docx(), filename="report.docx", content_type=None)
    assert doc.kind == "docx"
    text = doc.text
    order = ["Quarterly report", "Revenue grew", "Region | Q1 | Q2", "North | 10 | 12",
             "Merged cell | Alone", "Closing remarks"]
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions)
    assert text.count("Merged cell") == 1  # a merged cell is read once


def test_zip_that_is_not_a_docx() -> None:
    archive = make_zip({"notes.txt": b"hello"})
    message = expect_error("invalid_file", archive, "report.docx", None)
    assert "ZIP archive" in message and "word/document.xml" in message
    message = expect_error("unsupported_file", archive, "bundle.zip", "application/zip")
    assert "ZIP archive" in message
    workbook = make_zip({"xl/workbook.xml": b"<x/>", "[Content_Types].xml": b"<x/>"})
    assert "Excel" in expect_error("unsupported_file", workbook, "sheet.xlsx", None)
    message = expect_error("invalid_file", b"plain words", "renamed.docx", None)
    assert "not a valid DOCX" in message


# ------------------------------------------------------------------ HTML, JSON, CSV


def test_html_drops_script_and_style_and_breaks_blocks() -> None:
    html = b"""<!doctype html><html><head><title>Guide</title>
    <style>body { color: red }</style><script>var secret = "do not index";</script></head>
    <body><h1>Install</h1><p>Run the <b>installer</b> first.</p>
    <ul><li>step one</li><li>step two</li></ul><div>Done.</div>
    <!-- a comment --></body></html>"""
    doc = parse(html, filename="guide.html", content_type="text/html; charset=utf-8")
    assert doc.kind == "html"
    lines = doc.text.splitlines()
    assert "do not index" not in doc.text and "color" not in doc.text and "comment" not in doc.text
    assert "Guide" in lines and "Install" in lines
    assert "Run the installer first." in lines
    assert "step one" in lines and "step two" in lines and "Done." in lines


def test_html_in_a_declared_legacy_charset() -> None:
    html = '<html><head><meta charset="iso-8859-1"></head><body><p>Café crème</p></body></html>'
    doc = parse(html.encode("latin-1"), filename="menu.htm", content_type=None)
    assert "Café crème" in doc.text


def test_json_keys_kept_as_name_value_lines() -> None:
    data = {"name": "Alice", "address": {"city": "Paris", "zip": "75001"},
            "tags": ["admin", "ops"], "active": True, "manager": None}
    doc = parse(json.dumps(data).encode(), filename="user.json", content_type="application/json")
    assert doc.kind == "json"
    lines = doc.text.splitlines()
    assert "name: Alice" in lines
    assert "address:" in lines and "  city: Paris" in lines
    assert "  - admin" in lines and "active: true" in lines and "manager: null" in lines


def test_json_records_and_json_lines_are_blocks() -> None:
    records = [{"id": 1, "title": "first"}, {"id": 2, "title": "second"}]
    doc = parse(json.dumps(records).encode(), filename="r.json", content_type=None)
    assert doc.text == "id: 1\ntitle: first\n\nid: 2\ntitle: second"
    lines = b"\n".join(json.dumps(r).encode() for r in records)
    for name in ("r.jsonl", "r.json"):  # a .json holding JSON Lines reads too
        assert parse(lines, filename=name, content_type=None).text == doc.text


def test_invalid_json_names_the_position() -> None:
    message = expect_error("invalid_file", b'{"a": 1,\n "b": }', "bad.json", "application/json")
    assert "line 2 column 7" in message
    records = b'{"a": 1}\n\n{"a": 2}\n{"a": }\n'
    assert "line 4 column 7" in expect_error("invalid_file", records, "bad.jsonl")


def test_csv_rows_as_header_value_lines() -> None:
    data = b"name,city,age\nAlice,Paris,30\nBob,,41\n"
    doc = parse(data, filename="people.csv", content_type="text/csv")
    assert doc.kind == "csv"
    assert doc.text == "name: Alice\ncity: Paris\nage: 30\n\nname: Bob\nage: 41"
    semicolons = parse(b"name;city\nAlice;Paris\n", filename="p.csv", content_type=None)
    assert semicolons.text == "name: Alice\ncity: Paris"
    tabs = parse(b"name\tcity\nAlice\tParis, France\n", filename="p.tsv", content_type=None)
    assert tabs.text == "name: Alice\ncity: Paris, France"
    expect_error("empty_file", b"name,city\n", "header_only.csv", "text/csv")


# ------------------------------------------------------------ text, empty, unsupported


def test_text_bom_newlines_and_bad_bytes() -> None:
    doc = parse(b"\xef\xbb\xbfHello\r\nworld   \r\n\r\n\r\n\r\nEnd", filename="a.txt",
                content_type=None)
    assert doc.kind == "txt" and doc.text == "Hello\nworld\n\nEnd" and not doc.notes
    mixed = parse("héllo wörld ".encode() + b"\xff\xfe bad", filename="m.md", content_type=None)
    assert mixed.kind == "md" and "héllo wörld" in mixed.text and "\ufffd" in mixed.text
    assert "invalid UTF-8" in mixed.notes[0]
    legacy = parse("café crème".encode("cp1252"), filename="l.txt", content_type="text/plain")
    assert legacy.text == "café crème" and "Windows-1252" in legacy.notes[0]
    utf16 = parse("naïve text".encode("utf-16"), filename="u.txt", content_type=None)
    assert utf16.text == "naïve text"


def test_empty_and_whitespace_only() -> None:
    assert "0 bytes" in expect_error("empty_file", b"", "empty.txt", "text/plain")
    expect_error("empty_file", b"  \n\t\n ", "blank.md", None)
    expect_error("empty_file", b"<html><body><script>x()</script></body></html>", "s.html", None)


def test_unsupported_types_are_named() -> None:
    message = expect_error("unsupported_file", PNG, "photo.png", "image/png")
    assert "PNG image" in message and "pdf" in message
    expect_error("unsupported_file", PNG, "photo.txt", "text/plain")  # the bytes win
    assert "PNG image" in expect_error("invalid_file", PNG, "scan.pdf", "application/pdf")
    message = expect_error("unsupported_file", b"\x00\x01\x02binary", "blob.bin", None)
    assert "binary data" in message
    expect_error("invalid_file", b"text\x00with nul", "nul.txt", "text/plain")


def test_detection_order() -> None:
    assert detect_kind(b"# Title", filename="a.md", content_type="text/plain") == "md"
    generic = "application/octet-stream"
    assert detect_kind(b"a,b\n1,2", filename="a.csv", content_type=generic) == "csv"
    assert detect_kind(b"{}", filename="x", content_type="application/vnd.api+json") == "json"
    assert detect_kind(b"print(1)", filename="x.py", content_type="text/x-python") == "txt"
    assert detect_kind(b"plain", filename="noext", content_type=None) == "txt"
    assert detect_kind(b"<p>x</p>", filename="page", content_type="text/html") == "html"
    quoting = b"# PDF notes\nA PDF starts with %PDF-1.7 and ends with %%EOF."
    assert detect_kind(quoting, filename="notes.md", content_type=None) == "md"
    assert detect_kind(b"junk\n%PDF-1.4 ...", filename="blob", content_type=None) == "pdf"


def test_import_is_light() -> None:
    code = (
        "import sys, fnstack.ingest\n"
        "heavy = ('pypdf', 'docx', 'lxml', 'html_text', 'tokenizers')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------- chunking


@pytest.fixture(scope="module")
def minilm() -> HFTokenizer:
    from providers.inference.onnx_embeddings import bundled_model_dir

    return hf_tokenizer(bundled_model_dir())


WORDS = [
    "system", "data", "index", "vector", "search", "query", "model", "token", "chunk", "page",
    "file", "store", "retrieval", "answer", "document", "section", "paragraph", "sentence",
]


def prose(paragraphs: int, seed: int = 7, sentences: tuple[int, int] = (3, 8)) -> str:
    rng = random.Random(seed)
    out = []
    for p in range(paragraphs):
        sents = []
        for s in range(rng.randint(*sentences)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
            sents.append(f"Paragraph {p} sentence {s} " + " ".join(words) + ".")
        out.append(" ".join(sents))
    return "\n\n".join(out)


def token_index(tok: HFTokenizer, text: str) -> dict[int, int]:
    return {span[0]: k for k, (_, span) in enumerate(tok.encode(text))}


def check_chunks(chunks: list[TextChunk], text: str, max_tokens: int, tok: HFTokenizer) -> None:
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == text[c.start_char : c.end_char] and c.text.strip() == c.text
        assert 0 < c.token_count <= max_tokens
        # As the embedding model counts it: cuts fall between words, so it is the same.
        assert len(tok.encode(c.text)) == c.token_count
    assert chunks[0].start_char == 0 and chunks[-1].end_char == len(text.rstrip())


@pytest.mark.parametrize(("max_tokens", "overlap"), [(AUTO_MAX_TOKENS, AUTO_OVERLAP_TOKENS),
                                                     (200, 40), (100, 0)])
def test_chunks_bounded_overlapping_and_exact_slices(
    minilm: HFTokenizer, max_tokens: int, overlap: int
) -> None:
    text = prose(120)
    chunks = chunk(text, tokenizer=minilm, max_tokens=max_tokens, overlap=overlap)
    assert len(chunks) > 5
    check_chunks(chunks, text, max_tokens, minilm)
    starts = token_index(minilm, text)
    for prev, nxt in itertools.pairwise(chunks):
        prev_end = starts[prev.start_char] + prev.token_count
        shared = prev_end - starts[nxt.start_char]
        # overlap tokens, less at most overlap/8 to start the next chunk on a word
        assert overlap - overlap // 8 <= shared <= overlap
        # ends within the last 15% of the window, never shorter
        assert prev.token_count >= max_tokens - int(max_tokens * 0.15)


def test_chunks_end_on_sentences_and_paragraphs(minilm: HFTokenizer) -> None:
    text = prose(60, seed=3)
    chunks = chunk(text, tokenizer=minilm, max_tokens=200, overlap=50)
    for c in chunks[:-1]:
        assert c.text.endswith("."), c.text[-40:]
    # Short paragraphs: one is always inside the last 15%, so every chunk ends on one.
    short = prose(200, seed=5, sentences=(1, 1))
    for c in chunk(short, tokenizer=minilm, max_tokens=300, overlap=0)[:-1]:
        assert short[c.end_char : c.end_char + 2] == "\n\n"


def test_long_word_is_split(minilm: HFTokenizer) -> None:
    rng = random.Random(1)
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(30000))
    text = f"Before the blob. {blob} After the blob."
    chunks = chunk(text, tokenizer=minilm, max_tokens=100, overlap=10)
    assert len(chunks) > 10
    for c in chunks:
        assert c.text == text[c.start_char : c.end_char] and 0 < c.token_count <= 100
        assert len(c.text) < 2000
    covered = [(c.start_char, c.end_char) for c in chunks]
    assert all(b[0] <= a[1] for a, b in itertools.pairwise(covered))
    approx = chunk("x" * 50000, tokenizer=whitespace_tokenizer(), max_tokens=100, overlap=0)
    assert len(approx) == 63 and all(c.token_count <= 100 for c in approx)  # 6250 tokens


def test_pdf_chunks_carry_their_page(minilm: HFTokenizer) -> None:
    pages = [[f"Page {p} line {i} is about {WORDS[(p + i) % len(WORDS)]}." for i in range(20)]
             for p in range(1, 6)]
    doc = parse(make_pdf(pages), filename="book.pdf", content_type="application/pdf")
    chunks = chunk_document(doc, tokenizer=minilm, max_tokens=100, overlap=20)
    check_chunks(chunks, doc.text, 100, minilm)
    assert chunks[0].page == 1 and chunks[-1].page == 5
    assert [c.page for c in chunks] == sorted(c.page or 0 for c in chunks)
    bounds = [*doc.page_starts, len(doc.text)]
    for c in chunks:
        assert c.page is not None
        assert bounds[c.page - 1] <= c.start_char < bounds[c.page]
        # the line the chunk starts in names its page
        line_start = doc.text.rfind("\n", 0, c.start_char) + 1
        assert doc.text[line_start:].startswith(f"Page {c.page} line ")
    text_doc = parse(b"plain text here", filename="a.txt", content_type=None)
    assert chunk_document(text_doc, tokenizer=minilm)[0].page is None


def test_hf_tokenizer_counts_everything_without_touching_the_callers() -> None:
    from tokenizers import Tokenizer

    from providers.inference.onnx_embeddings import bundled_model_dir

    raw = Tokenizer.from_file(str(bundled_model_dir() / "tokenizer.json"))
    assert raw.truncation is not None  # the shipped file truncates at 128
    tok = hf_tokenizer(raw)
    text = " ".join(["word"] * 1000)
    assert len(tok.encode(text)) == 1000
    assert raw.truncation is not None
    # segments are cut between words: the same tokens as one pass
    long_text = prose(400)
    raw.no_truncation()
    whole = raw.encode(long_text, add_special_tokens=False)
    assert len(long_text) > 3 * HFTokenizer.SEGMENT_CHARS
    assert [t for t, _ in tok.encode(long_text)] == whole.ids


def test_whitespace_tokenizer_is_approximate_but_sane() -> None:
    tok = whitespace_tokenizer()
    assert len(tok.encode("Hello, world! Retrieval")) == 6  # "Retriev" "al": 8 letters a token
    assert len(tok.encode("検索拡張生成")) == 6  # a token per CJK character
    text = prose(40)
    chunks = chunk(text, tokenizer=tok, max_tokens=120, overlap=30)
    for c in chunks:
        assert c.text == text[c.start_char : c.end_char] and c.token_count <= 120


def test_chunking_bounds_and_empty_text(minilm: HFTokenizer) -> None:
    check_chunking(100, 50)
    check_chunking(4096, 2048)
    for max_tokens, overlap in ((99, 0), (4097, 0), (800, 401), (800, -1)):
        with pytest.raises(ValueError, match="chunk"):
            check_chunking(max_tokens, overlap)
    assert chunk("   \n ", tokenizer=minilm) == []
    one = chunk("A short text.", tokenizer=minilm)
    assert [(c.text, c.token_count) for c in one] == [("A short text.", 4)]
