"""Text out of formats: HTML, Office Open XML (DOCX, XLSX, PPTX), OpenDocument, PDF and legacy
binary Office files; plus the normalisation every extracted text gets.

No XML parser is used on untrusted documents: the text of OOXML/ODF is taken with regular
expressions over tags we know, and only the five predefined and numeric entities are decoded, so
there is no entity expansion or external entity to exploit. Reads from archives go through the
caller's bounded `read` function, which enforces size, ratio and count limits.
"""

from __future__ import annotations

import html
import io
import logging
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings are about structure, and noisy

# Characters that hide or disguise digits: removed (zero-width, soft hyphen) or mapped to ASCII.
_NORMALISE = str.maketrans(
    {**{chr(c): None for c in (0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF, 0x00AD)},
     **{chr(c): "-" for c in (*range(0x2010, 0x2016), 0x2212, 0xFE63, 0xFF0D)},
     **{chr(c): " " for c in (0x00A0, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000)},
     **{chr(0xFF10 + d): str(d) for d in range(10)},
     "\u0130": "I"})  # the one character whose lower() is longer: offsets must not shift


def normalise(text: str) -> str:
    return text.translate(_NORMALISE)


# -- HTML -------------------------------------------------------------------------------------

_BLOCK_TAGS = frozenset(("p", "div", "br", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
                         "ul", "ol", "section", "article", "header", "footer", "blockquote", "pre",
                         "hr", "title", "dt", "dd"))
_CELL_TAGS = frozenset(("td", "th"))
_HIDDEN_TAGS = frozenset(("script", "style", "head"))
_SHOWN_ATTRIBUTES = frozenset(("alt", "title", "value", "placeholder", "aria-label", "label", "content",
                               "summary"))


class _HtmlText(HTMLParser):
    """Text of an HTML document. Inline tags vanish without a trace, so ``123<b>-45</b>-6789``
    reads as one number; block and cell boundaries become white space."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._boundary(tag, opening=True)
        # Text a reader's client can show without it being element content: alt and title
        # (tooltips), form values and placeholders, labels, a meta description.
        self.chunks.extend(f" {value} " for name, value in attrs if name in _SHOWN_ATTRIBUTES and value)

    def handle_comment(self, data: str) -> None:
        # Not rendered, but in the message's source for anyone who views it: scanned too.
        self.chunks.append(f" {data} ")

    def handle_endtag(self, tag: str) -> None:
        self._boundary(tag, opening=False)

    def _boundary(self, tag: str, *, opening: bool) -> None:
        if tag in _HIDDEN_TAGS and tag != "head":
            self.hidden += 1 if opening else -1 if self.hidden else 0
        elif tag in _BLOCK_TAGS:
            self.chunks.append("\n")
        elif tag in _CELL_TAGS:
            self.chunks.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data)


def html_to_text(markup: str) -> str:
    parser = _HtmlText()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):  # HTMLParser gives up on some malformed declarations
        return re.sub(r"<[^>]*>", "", markup)
    return "".join(parser.chunks)


# -- Office Open XML and OpenDocument ----------------------------------------------------------

_OFFICE_MARKERS = (("word/document.xml", "docx"), ("xl/workbook.xml", "xlsx"),
                   ("ppt/presentation.xml", "pptx"), ("content.xml", "odf"))
_OFFICE_PARTS = {
    "docx": re.compile(r"word/(document|header\d*|footer\d*|footnotes|endnotes|comments)\.xml"),
    "pptx": re.compile(r"ppt/(slides/slide|notesSlides/notesSlide)\d+\.xml"),
    "xlsx": re.compile(r"xl/worksheets/sheet\d+\.xml"),
    "odf": re.compile(r"content\.xml"),
}
# Where a line or cell ends, per format: replaced by white space before the tags are dropped.
_BREAKS = {
    "docx": re.compile(r"</w:p>|<w:br\b[^>]*/>|<w:tab\b[^>]*/>|<w:cr\b[^>]*/>|</w:tc>"),
    "pptx": re.compile(r"</a:p>|<a:br\b[^>]*/>|</a:tc>"),
    "odf": re.compile(r"</text:p>|</text:h>|<text:line-break\b[^>]*/>|<text:tab\b[^>]*/>"
                      r"|</table:table-cell>|<text:s\b[^>]*/>"),
}
_TAG = re.compile(r"<[^>]*>")
_SHARED_STRING = re.compile(r"<si>(.*?)</si>", re.S)
_SHEET_TOKEN = re.compile(r"<c\b([^>]*?)(?:/>|>(.*?)</c>)|</row>", re.S)
_CELL_TYPE = re.compile(r"\bt=\"(\w+)\"")

Reader = Callable[[zipfile.ZipInfo], "bytes | None"]


def office_kind(archive: zipfile.ZipFile) -> str | None:
    """"docx", "xlsx", "pptx" or "odf" if the zip is an office document, else None."""
    names = set(archive.namelist())
    for marker, kind in _OFFICE_MARKERS:
        if marker in names:
            return kind
    return None


def office_text(archive: zipfile.ZipFile, kind: str, read: Reader) -> Iterator[str]:
    """The text of each part of an office document, read through `read` (bounded)."""
    members = sorted((m for m in archive.infolist() if _OFFICE_PARTS[kind].fullmatch(m.filename)),
                     key=lambda m: _natural(m.filename))
    if kind == "xlsx":
        shared: list[str] = []
        table = next((m for m in archive.infolist() if m.filename == "xl/sharedStrings.xml"), None)
        content = read(table) if table is not None else None
        if content is not None:
            shared = [_xml_text(s) for s in _SHARED_STRING.findall(_xml(content))]
        for member in members:
            content = read(member)
            if content is not None:
                yield _sheet_text(_xml(content), shared)
        return
    for member in members:
        content = read(member)
        if content is not None:
            yield _xml_text(_BREAKS[kind].sub("\n", _xml(content)))


def _sheet_text(sheet: str, shared: list[str]) -> str:
    """Rows as lines, cells separated by spaces: a header cell "SSN" stays near its column.
    One pass over the sheet (a sheet can have a million cells)."""
    lines = []
    cells: list[str] = []
    for token in _SHEET_TOKEN.finditer(sheet):
        attributes, body = token.group(1), token.group(2)
        if attributes is None:  # </row>
            if cells:
                lines.append(" ".join(cells))
                cells = []
            continue
        if not body:
            continue
        kind = _CELL_TYPE.search(attributes) if "t=" in attributes else None
        if kind is not None and kind.group(1) == "inlineStr":
            cells.append(_xml_text(body))
            continue
        start = body.find("<v>")
        end = body.find("</v>", start)
        if start < 0 or end < 0:
            continue
        value = body[start + 3:end]
        if kind is not None and kind.group(1) == "s":
            index = value.strip()
            cells.append(shared[int(index)] if index.isdigit() and int(index) < len(shared) else "")
        else:
            cells.append(html.unescape(value) if "&" in value else value)
    if cells:
        lines.append(" ".join(cells))
    return "\n".join(lines)


def _xml(content: bytes) -> str:
    if content.startswith((b"\xff\xfe", b"\xfe\xff")):
        return content.decode("utf-16", errors="replace")
    return content.decode("utf-8", errors="replace")


def _xml_text(xml: str) -> str:
    return html.unescape(_TAG.sub("", xml))


def _natural(name: str) -> list[object]:
    return [int(piece) if piece.isdigit() else piece for piece in re.split(r"(\d+)", name)]


# -- PDF --------------------------------------------------------------------------------------

@dataclass
class PdfText:
    pages: list[str] = field(default_factory=list)
    encrypted: bool = False
    unreadable: bool = False
    truncated: bool = False  # stopped at the page limit or the deadline


def pdf_text(data: bytes, max_pages: int, deadline: float) -> PdfText:
    """Text per page, with pypdf. A PDF that opens with the empty password (owner-password only,
    common for "protected" forms) is read; one that needs a password is `encrypted`."""
    from pypdf import PdfReader  # imported here: only scan workers pay for it

    outcome = PdfText()
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = bool(reader.decrypt(""))
            except Exception:  # unsupported encryption is as unreadable to us as a password
                opened = False
            if not opened:
                outcome.encrypted = True
                return outcome
        for number, page in enumerate(reader.pages):
            if number >= max_pages or time.monotonic() > deadline:
                outcome.truncated = True
                break
            outcome.pages.append(page.extract_text())
    except Exception:  # pypdf raises many types on corrupt input; all mean "cannot read it"
        outcome.unreadable = True
    return outcome


# -- legacy binary Office files ----------------------------------------------------------------

_ASCII_RUN = re.compile(rb"[\x20-\x7e\t]{4,}")
_UTF16_RUN = re.compile(rb"(?:[\x20-\x7e]\x00){4,}")


def binary_strings(data: bytes) -> str:
    """Printable runs, ASCII and UTF-16LE, as `strings` would show them: .doc and .xls keep their
    text that way."""
    runs = [run.decode("ascii") for run in _ASCII_RUN.findall(data)]
    runs += [run.decode("utf-16-le") for run in _UTF16_RUN.findall(data)]
    return "\n".join(runs)
