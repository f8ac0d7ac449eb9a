"""Build the documents and messages that DLP tests (and the labelled corpus) are made of:
real DOCX/XLSX/PPTX/ODT zips, PDFs (plain and password-protected), archives, zip bombs and
MIME messages in every transfer encoding."""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
from email.message import EmailMessage
from email.utils import make_msgid
from xml.sax.saxutils import escape

_CONTENT_TYPES = ('<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
                  'package/2006/content-types"></Types>')


def _zip(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():  # fixed timestamps: the same input, the same bytes
            archive.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), content,
                             compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def docx(paragraphs: list[str], *, split_runs: bool = False) -> bytes:
    """A Word document; `split_runs` puts each character in its own run, as editing often does."""
    def runs(text: str) -> str:
        pieces = list(text) if split_runs else [text]
        return "".join(f'<w:r><w:t xml:space="preserve">{escape(p)}</w:t></w:r>' for p in pieces)

    body = "".join(f"<w:p>{runs(p)}</w:p>" for p in paragraphs)
    document = ('<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxml'
                f'formats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>')
    return _zip({"[Content_Types].xml": _CONTENT_TYPES, "word/document.xml": document})


def xlsx(rows: list[list[str]]) -> bytes:
    """A workbook with one sheet; text cells go through the shared-string table, numbers inline."""
    shared: list[str] = []
    xml_rows = []
    for r, row in enumerate(rows, 1):
        cells = []
        for c, value in enumerate(row):
            ref = f"{chr(65 + c)}{r}"
            if value.isdigit():
                cells.append(f'<c r="{ref}"><v>{value}</v></c>')
            else:
                shared.append(value)
                cells.append(f'<c r="{ref}" t="s"><v>{len(shared) - 1}</v></c>')
        xml_rows.append(f'<row r="{r}">{"".join(cells)}</row>')
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    sheet = f'<?xml version="1.0"?><worksheet {ns}><sheetData>{"".join(xml_rows)}</sheetData></worksheet>'
    strings = "".join(f"<si><t>{escape(s)}</t></si>" for s in shared)
    return _zip({"[Content_Types].xml": _CONTENT_TYPES, "xl/workbook.xml": f"<workbook {ns}/>",
                 "xl/sharedStrings.xml": f'<sst {ns} count="{len(shared)}">{strings}</sst>',
                 "xl/worksheets/sheet1.xml": sheet})


def pptx(slides: list[str]) -> bytes:
    ns = 'xmlns:a="http://schemas.openxmlformats.org/drawingml/2006/main"'
    files: dict[str, bytes | str] = {"[Content_Types].xml": _CONTENT_TYPES,
                                     "ppt/presentation.xml": "<p:presentation/>"}
    for i, text in enumerate(slides, 1):
        files[f"ppt/slides/slide{i}.xml"] = (f"<p:sld {ns}><p:txBody><a:p><a:r><a:t>{escape(text)}"
                                             "</a:t></a:r></a:p></p:txBody></p:sld>")
    return _zip(files)


def odt(paragraphs: list[str]) -> bytes:
    body = "".join(f"<text:p>{escape(p)}</text:p>" for p in paragraphs)
    return _zip({"mimetype": "application/vnd.oasis.opendocument.text",
                 "content.xml": f"<office:document-content><office:body>{body}</office:body>"
                                "</office:document-content>"})


def pdf(lines: list[str]) -> bytes:
    """A one-page PDF with the lines in Helvetica, with a correct cross-reference table."""
    def literal(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"] + [f"({literal(line)}) Tj T*" for line in lines] + ["ET"]
    stream = "\n".join(ops).encode("latin-1")
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def encrypted_pdf(lines: list[str], password: str = "s3cret") -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf(lines))))
    writer.encrypt(user_password=password, owner_password=password, algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def archive(files: dict[str, bytes | str]) -> bytes:
    return _zip(files)


def encrypted_zip_entry(name: str, content: bytes) -> bytes:
    """A zip whose one member is flagged as encrypted (traditional PKWARE), as a
    password-protected archive from any zip tool would be; its bytes stay unreadable to us."""
    data = bytearray(_zip({name: content}))
    # General purpose flag bit 0 in both the local header (offset 6) and the central directory.
    data[6] |= 0x01
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x01
    return bytes(data)


def zip_bomb(layers: int = 3, width: int = 10, size: int = 50 * 1024 * 1024) -> bytes:
    """Nested zips of highly compressible data: `width`**`layers` members of `size` zero bytes
    each once fully inflated (by default 1000 x 50 MB = 50 GB), a few hundred kilobytes here."""
    zeros = b"\0" * size
    level = _zip({"data.bin": zeros})
    for depth in range(layers - 1):
        level = _zip({f"layer{depth}-{i}.zip": level for i in range(width)})
    return level


def message(body: str = "Hello", *, subject: str = "Hello", html: str | None = None,
            attachments: list[tuple[str, bytes, str]] = (),  # type: ignore[assignment]
            charset: str = "utf-8", cte: str | None = None, sender: str = "clinic@example.com",
            to: str = "patient@example.org", message_id: str | None = None) -> bytes:
    """An RFC 5322 message; `attachments` are (filename, bytes, maintype/subtype)."""
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = message_id or make_msgid(domain="example.com")
    msg.set_content(body, charset=charset, cte=cte)
    if html is not None:
        msg.add_alternative(html, subtype="html", charset=charset, cte=cte)
    for filename, content, mimetype in attachments:
        maintype, subtype = mimetype.split("/")
        if maintype == "message":
            msg.add_attachment(email.message_from_bytes(content, policy=email.policy.default))
        else:
            msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
