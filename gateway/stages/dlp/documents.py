"""Text out of formats: HTML, Office Open XML (DOCX, XLSX, PPTX), OpenDocument, PDF and legacy
binary Office files; plus the normalisation every extracted text gets.

No XML parser is used on untrusted documents: the text of OOXML/ODF is taken with regular
expressions over tags we know, and only the five predefined and numeric entities are decoded, so
there is no entity expansion or external entity to exploit. Reads from archives go through the
caller's bounded `read` function, which enforces size, ratio and count limits.
"""

from __future__ import annotations

import functools
import html
import io
import itertools
import logging
import operator
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
    return text if text.isascii() else text.translate(_NORMALISE)  # every character mapped is beyond ASCII


# -- HTML -------------------------------------------------------------------------------------

_BLOCK_TAGS = frozenset(("p", "div", "br", "li", "tr", "table", "h1", "h2", "h3", "h4", "h5", "h6",
                         "ul", "ol", "section", "article", "header", "footer", "blockquote", "pre",
                         "hr", "title", "dt", "dd"))
_CELL_TAGS = frozenset(("td", "th"))
_HIDDEN_TAGS = frozenset(("script", "style", "head"))
_SHOWN_ATTRIBUTES = frozenset(("alt", "title", "value", "placeholder", "aria-label", "label", "content",
                               "summary"))


# -- tables -----------------------------------------------------------------------------------

_UNIT_HEADER = re.compile(r"(?i)^\s*units?\s*$")
_MAX_TABLE_CELLS = 200_000  # beyond this a table is read as plain rows


def labelled_rows(rows: list[list[str]]) -> str:
    """A table as text in which each value stands next to its column's header: ``Name: Jane
    Roe; DOB: 06-Aug-1949`` per row, so that a label in the header row is context for every
    value below it (an SSN column, a DOB column). A "Units" column joins the value before it
    ("Result: 7.9 %"). A table without a header row of words stays rows of cells."""
    if rows and len(set(map(len, rows))) == 1:
        dense = dense_table([list(map(operator.itemgetter(index), rows)) for index in range(len(rows[0]))])
        if dense is not None:
            return dense
    return _row_by_row(rows)


def _row_by_row(rows: list[list[str]]) -> str:
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2 or not _is_header(rows[0], rows[1]) or sum(map(len, rows)) > _MAX_TABLE_CELLS:
        return "\n".join(" ".join(cell for cell in row if cell) for row in rows)
    header = [cell.strip() for cell in rows[0]]
    lines = [" ".join(header)]
    for row in rows[1:]:
        pairs: list[list[str]] = []
        for title, value in zip(header, row, strict=False):
            value = value.strip()
            if not value:
                continue
            if _UNIT_HEADER.match(title) and pairs:
                pairs[-1][1] += f" {value}"
            else:
                pairs.append([title or "-", value])
        lines.append("; ".join(f"{title}: {value}" for title, value in pairs))
    return "\n".join(lines)


def dense_table(columns: list[list[str]]) -> str | None:
    """`labelled_rows` of a table given by its columns, of equal length, without an empty cell:
    built a column at a time (a sheet can have a million cells); None for anything else (empty
    cells, a Units column), which `labelled_rows` reads row by row."""
    if not columns or any("" in column or any(map(str.isspace, column)) for column in columns):
        return None
    header = [column[0].strip() for column in columns]
    below = [column[1].strip() for column in columns if len(column) > 1]
    if len(below) < len(header) or not _is_header(header, below) or sum(map(len, columns)) > _MAX_TABLE_CELLS:
        return "\n".join(map(" ".join, zip(*columns, strict=True)))
    if any(_UNIT_HEADER.match(title) for title in header):
        return None
    labelled = [map(f"{title}: ".__add__, map(str.strip, itertools.islice(column, 1, None)))
                for title, column in zip(header, columns, strict=True)]
    return "\n".join((" ".join(header), *map("; ".join, zip(*labelled, strict=True))))


def _is_header(row: list[str], below: list[str]) -> bool:
    """Words, not data: every non-empty cell has letters and at most a few digits; a row with
    digits ("ICD-10 code") must not have the shape of the row below it ("row 1" over "row 2")."""
    cells = [cell.strip() for cell in row if cell.strip()]
    if not cells or not all(any(c.isalpha() for c in cell) and sum(c.isdigit() for c in cell) <= 3
                            and len(cell) <= 60 for cell in cells):
        return False
    if not any(c.isdigit() for cell in cells for c in cell):
        return True
    return [_shape(cell) for cell in row] != [_shape(cell) for cell in below[:len(row)]]


_SHAPE = re.compile(r"[^\W\d_]+|\d+")


def _shape(cell: str) -> str:
    """Letters as "a", digits as "0": "row 12" and "row 7" have one shape, "Name" another."""
    return _SHAPE.sub(lambda m: "0" if m.group()[0].isdigit() else "a", cell.strip())


class _HtmlText(HTMLParser):
    """Text of an HTML document. Inline tags vanish without a trace, so ``123<b>-45</b>-6789``
    reads as one number; block and cell boundaries become white space. A table becomes
    `labelled_rows` (its cells' text collected per row until the table ends)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0
        self.tables: list[list[list[str]]] = []  # open tables (nested ones stack), their rows

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
        if tag == "table":
            if opening:
                self.tables.append([])
            elif self.tables:
                self.chunks.append("\n" + labelled_rows(self.tables.pop()) + "\n")
            return
        if self.tables and tag == "tr" and opening:
            self.tables[-1].append([])
            return
        if self.tables and tag in _CELL_TAGS and opening:
            if not self.tables[-1]:
                self.tables[-1].append([])
            self.tables[-1][-1].append("")
            return
        if tag in _HIDDEN_TAGS and tag != "head":
            self.hidden += 1 if opening else -1 if self.hidden else 0
        elif tag in _BLOCK_TAGS:
            self._text("\n")
        elif tag in _CELL_TAGS:
            self._text(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self._text(data)

    def _text(self, data: str) -> None:
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += data  # inside a cell: the table's text comes at its end
        else:
            self.chunks.append(data)

    def close(self) -> None:
        super().close()
        while self.tables:  # a table never closed still counts
            self.chunks.append("\n" + labelled_rows(self.tables.pop()) + "\n")


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
_PLAIN_STRING = re.compile(r'<si><t(?: xml:space="preserve")?>([^<]*)</t></si>')
_SHEET_CELL = re.compile(
    r'<c r="([A-Z]{1,3})\d+"(?: s="\d+")?(?: t="(\w+)")?(?: s="\d+")?>(?:<f>[^<]*</f>)?<v>([^<]*)</v></c>'
    r"|<c\b([^>]*?)(?:/>|>(.*?)</c>)|(</row>)", re.S)
_CELL_TYPE = re.compile(r"\bt=\"(\w+)\"")
_CELL_REF = re.compile(r"\br=\"([A-Z]{1,3})\d+\"")

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
            shared = _shared_strings(_xml(content))
        for member in members:
            content = read(member)
            if content is not None:
                yield _sheet_text(_xml(content), shared)
        return
    for member in members:
        content = read(member)
        if content is not None:
            yield _xml_text(_BREAKS[kind].sub("\n", _xml(content)))


def _shared_strings(xml: str) -> list[str]:
    """The text of each <si> item of a shared-string table, in order (cells refer to them by
    index). Tags are dropped and entities undone for the whole table at once, not per item (a
    table can hold a hundred thousand strings); an item holds no NUL (XML cannot), so NUL
    separates them meanwhile."""
    items = _plain_strings(xml)
    if items is None:
        items = _PLAIN_STRING.findall(xml)
        if len(items) != xml.count("<si"):  # not all in the plain form
            items = None
    if items is not None:
        return html.unescape("\0".join(items)).split("\0") if "&" in xml else items
    pieces = xml.split("</si>")[:-1]
    starts = [piece.find("<si>") for piece in pieces]
    if -1 in starts:  # not the plain form: item by item
        return [_xml_text(item) for item in _SHARED_STRING.findall(xml)]
    joined = "\0".join(piece[start + 4:] for piece, start in zip(pieces, starts, strict=True))
    return _xml_text(joined).split("\0") if pieces else []


def _plain_strings(xml: str) -> list[str] | None:
    """The items of a table written all as ``<si><t>text</t></si>`` one after the other (what
    Excel writes when no string keeps leading or trailing space): one split at the seams, checked
    to hold no other tag; None for any other table."""
    start, end = xml.find("<si><t>"), xml.rfind("</t></si>")
    if start < 0 or end < start or xml.count("<si", 0, start) or xml.count("<si", end):
        return None
    inner = xml[start + 7:end]
    if inner.count("<") != _STRING_SEAM.count("<") * inner.count(_STRING_SEAM):
        return None
    return inner.split(_STRING_SEAM)


_STRING_SEAM = "</t></si><si><t>"


def _sheet_text(sheet: str, shared: list[str]) -> str:
    """The sheet as `labelled_rows`: each value next to its column's header. Cells are placed by
    their reference (B7 is column 2), so empty cells do not shift a row against the header.
    A sheet can have a million cells: one whose rows all fill the same columns (an export) is
    read a column at a time, any other cell by cell."""
    columns = _dense_sheet(sheet, shared)
    text = dense_table(columns) if columns is not None else None
    return text if text is not None else labelled_rows(_cell_by_cell(sheet, shared))


def _cell_by_cell(sheet: str, shared: list[str]) -> list[list[str]]:
    """The rows of any sheet, in one pass: the usual cell, as Excel and most libraries write it
    (a reference, a type, a value), is read whole by one pattern; any other form (inline strings,
    other attribute orders) by the general one."""
    rows: list[list[str]] = []
    cells: dict[int, str] = {}
    for letters, kind, value, attributes, body, row_end in _SHEET_CELL.findall(sheet):
        if row_end:
            if cells:
                rows.append(_row(cells))
                cells = {}
            continue
        if letters:  # the usual form: <c r="B7" t="s"><v>3</v></c>
            column = _column(letters)
        else:
            if not body:
                continue
            reference = _CELL_REF.search(attributes)
            column = _column(reference.group(1)) if reference is not None else len(cells)
            found = _CELL_TYPE.search(attributes) if "t=" in attributes else None
            kind = found.group(1) if found is not None else ""
            if kind == "inlineStr":
                cells[column] = _xml_text(body)
                continue
            start = body.find("<v>")
            end = body.find("</v>", start)
            if start < 0 or end < 0:
                continue
            value = body[start + 3:end]
        if kind == "s":
            index = value.strip()
            cells[column] = shared[int(index)] if index.isdigit() and int(index) < len(shared) else ""
        else:
            cells[column] = html.unescape(value) if "&" in value else value
    if cells:
        rows.append(_row(cells))
    return rows


def _dense_sheet(sheet: str, shared: list[str]) -> list[list[str]] | None:
    """The columns of a sheet whose every row has a value in the same columns, from A on, each
    cell in the usual form; None for any other (read cell by cell). Each cell costs a few C-level
    steps."""
    cells = _DENSE_CELL.findall(sheet)  # a cell in another form is ("", "", ""): not a column letter
    if not cells:
        return None
    width = sheet.count("<c ", 0, sheet.find("</row>"))
    letters = list(map(operator.itemgetter(0), cells))
    if not 0 < width <= len(_LETTERS) or letters != _LETTERS[:width] * sheet.count("</row>"):
        return None
    try:
        values = [shared[int(value)] if 't="s"' in attributes else html.unescape(value) if "&" in value
                  else value for _, attributes, value in cells]
    except (ValueError, IndexError):
        return None
    return [values[index::width] for index in range(width)]


_DENSE_CELL = re.compile(r'<c (?:r="([A-Z])\d+"([^>]*)>(?:<f>[^<]*</f>)?<v>([^<]*)</v></c>|)')
_LETTERS = [chr(ord("A") + index) for index in range(26)]


def _row(cells: dict[int, str]) -> list[str]:
    """The cells of a row by column, empty where a column has none."""
    return [cells.get(column, "") for column in range(max(cells) + 1)]


@functools.lru_cache(maxsize=4096)
def _column(letters: str) -> int:
    number = 0
    for letter in letters[:3]:  # XFD is the last column
        number = number * 26 + ord(letter) - 64
    return number - 1


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


def pdf_text(data: bytes, max_pages: int, deadline: float,
             clock: Callable[[], float] = time.monotonic) -> PdfText:
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
            if number >= max_pages or clock() > deadline:
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
