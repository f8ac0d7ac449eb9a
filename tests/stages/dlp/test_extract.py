"""Content extraction: every place a message can carry text, and the bounds that keep hostile
input (zip bombs, deep nesting, corrupt files) harmless."""

from __future__ import annotations

import base64
import io
import random
import zipfile

import pytest

from gateway.stages.dlp.detectors import scan
from gateway.stages.dlp.documents import (
    _SHARED_STRING,
    _cell_by_cell,
    _row_by_row,
    _shared_strings,
    _sheet_text,
    _xml_text,
    dense_table,
    html_to_text,
    labelled_rows,
    normalise,
)
from gateway.stages.dlp.extract import ExtractLimits, extract
from tests.stages.dlp import builders as b

SSN = "219-45-6789"  # structurally valid, synthetic


def found(raw: bytes, limits: ExtractLimits | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for text in extract(raw, limits).texts:
        for finding in scan(text.text):
            counts[finding.detector] = counts.get(finding.detector, 0) + 1
    return counts


@pytest.mark.parametrize("cte", ["base64", "quoted-printable", "8bit"])
def test_body_is_decoded_from_any_transfer_encoding(cte: str) -> None:
    assert found(b.message(f"Patient SSN {SSN}", cte=cte)) == {"ssn": 1}


@pytest.mark.parametrize("charset", ["utf-16", "iso-8859-1", "shift_jis"])
def test_body_is_decoded_from_its_charset(charset: str) -> None:
    assert found(b.message(f"Patient SSN {SSN}", charset=charset, cte="base64")) == {"ssn": 1}


def test_unknown_charset_still_reads_ascii_digits() -> None:
    raw = (b"Subject: x\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
           b"SSN " + SSN.encode() + b"\r\n")
    assert found(raw) == {"ssn": 1}


def test_encoded_word_subject_is_decoded() -> None:
    word = base64.b64encode(f"Re: SSN {SSN}".encode()).decode()
    raw = f"Subject: =?utf-8?b?{word}?=\r\n\r\nhello\r\n".encode()
    texts = extract(raw).texts
    assert texts[0].source == "subject" and SSN in texts[0].text


def test_html_tags_between_digits_do_not_hide_a_number() -> None:
    html = "<p>SSN <b>219</b><span>-45-</span><i>67</i>89</p>"
    assert found(b.message("see html", html=html)) == {"ssn": 1}


def test_html_entities_are_decoded() -> None:
    html = "<p>SSN &#50;19&#x2d;45&ndash;6789</p>"
    assert found(b.message("see html", html=html)) == {"ssn": 1}


def test_html_table_cells_stay_apart() -> None:
    text = html_to_text("<table><tr><td>219</td><td>45</td></tr></table>")
    assert text.split() == ["219", "45"]


def test_script_and_style_text_is_not_content() -> None:
    assert html_to_text("<style>p {x: 1}</style><script>var a</script>ok") == "ok"


def test_zero_width_and_unicode_dashes_are_normalised() -> None:
    assert normalise("219\u200b\u201145\u20136789\u00a0x") == "219-45-6789 x"


@pytest.mark.parametrize("kind", ["docx", "docx-split", "xlsx", "pptx", "odt", "pdf"])
def test_office_and_pdf_attachments_are_read(kind: str) -> None:
    documents = {
        "docx": lambda: b.docx(["Intake form", f"SSN {SSN}"]),
        "docx-split": lambda: b.docx([f"SSN {SSN}"], split_runs=True),
        "xlsx": lambda: b.xlsx([["Name", "SSN"], ["Jane Roe", SSN]]),
        "pptx": lambda: b.pptx(["Case review", f"SSN {SSN}"]),
        "odt": lambda: b.odt([f"SSN {SSN}"]),
        "pdf": lambda: b.pdf(["Referral", f"SSN {SSN}"]),
    }
    name = f"file.{kind.split('-')[0]}"
    raw = b.message("see attached", attachments=[(name, documents[kind](), "application/octet-stream")])
    assert found(raw) == {"ssn": 1}


def test_spreadsheet_numbers_keep_their_column_header_as_context() -> None:
    raw = b.message("x", attachments=[("l.xlsx", b.xlsx([["Member", "SSN"], ["Jane", "219456789"]]),
                                       "application/octet-stream")])
    assert found(raw) == {"ssn": 1}


def test_nested_message_and_archives_are_walked() -> None:
    inner = b.message(f"forwarded: SSN {SSN}")
    nested_zip = b.archive({"a/notes.txt": f"SSN {SSN}",
                            "deeper.zip": b.archive({"chart.docx": b.docx([f"SSN {SSN}"])})})
    raw = b.message("fyi", attachments=[("fwd.eml", inner, "message/rfc822"),
                                        ("records.zip", nested_zip, "application/zip")])
    assert found(raw) == {"ssn": 3}


def test_attachment_names_are_scanned() -> None:
    raw = b.message("x", attachments=[(f"SSN {SSN}.txt", b"nothing", "text/plain")])
    sources = [t.source for t in extract(raw).texts if SSN in t.text]
    assert sources == ["filename"]


def test_password_protected_files_are_an_encrypted_fact() -> None:
    raw = b.message("x", attachments=[("a.pdf", b.encrypted_pdf([f"SSN {SSN}"]), "application/pdf"),
                                      ("b.zip", b.encrypted_zip_entry("c.txt", b"SSN"), "application/zip")])
    result = extract(raw)
    assert "encrypted_attachment" in result.facts
    assert found(raw) == {}


def test_smime_and_pgp_messages_are_an_encrypted_fact() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; "
           b"smime-type=enveloped-data\r\nContent-Transfer-Encoding: base64\r\n\r\nMIAGCSqGSIb3\r\n")
    assert extract(raw).facts == {"encrypted_attachment"}


def test_corrupt_documents_are_an_unreadable_fact() -> None:
    broken_zip = b"PK\x03\x04" + b"\x00" * 40
    raw = b.message("x", attachments=[("a.pdf", b"%PDF-1.4 garbage", "application/pdf"),
                                      ("b.docx", broken_zip, "application/octet-stream")])
    assert extract(raw).facts == {"unreadable_attachment"}


def test_images_are_unscanned_not_unreadable() -> None:
    raw = b.message("x", attachments=[("logo.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "image/png")])
    assert extract(raw).facts == {"unscanned_attachment"}


def test_zip_bomb_is_not_inflated() -> None:
    raw = b.message(f"SSN {SSN}", attachments=[("bomb.zip", b.zip_bomb(), "application/zip")])
    result = extract(raw)
    assert "scan_incomplete" in result.facts
    assert result.limits_hit & {"ratio", "inflated"}
    assert found(raw) == {"ssn": 1}  # what is readable is still scanned


def test_inflation_budget_stops_many_honest_members() -> None:
    members = {f"f{i}.txt": random.Random(i).randbytes(5000).hex() for i in range(20)}
    raw = b.message("x", attachments=[("a.zip", b.archive(members), "application/zip")])
    result = extract(raw, ExtractLimits(max_inflated=100_000))
    assert "inflated" in result.limits_hit


def test_nesting_deeper_than_the_limit_is_cut() -> None:
    content = b.archive({"x.txt": f"SSN {SSN}"})
    for _ in range(6):
        content = b.archive({"inner.zip": content})
    result = extract(b.message("x", attachments=[("a.zip", content, "application/zip")]))
    assert "depth" in result.limits_hit


def test_text_budget_truncates() -> None:
    result = extract(b.message("x" * 5000), ExtractLimits(max_text=1000))
    assert "text" in result.limits_hit and sum(len(t.text) for t in result.texts) <= 1000


def test_deadline_stops_the_walk() -> None:
    raw = b.message("x", attachments=[(f"f{i}.txt", b"hello", "text/plain") for i in range(5)])
    assert "time" in extract(raw, deadline=0.0).limits_hit


def test_broken_mime_does_not_raise() -> None:
    raw = (b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\n"
           b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@not base64\r\n"
           b"--zz\r\nContent-Type: application/pdf; name*=bogus''%ZZ\r\n\r\n\x00\x01")
    extract(raw)  # no exception: malformed parts are facts at worst


def test_a_sheet_reads_the_same_in_the_usual_cell_form_and_in_any_other() -> None:
    shared = ["Patient", "SSN", "Pat Doe"]
    usual = ('<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" s="2" t="s"><v>1</v></c></row>'
             '<row r="2"><c r="A2" t="s"><v>2</v></c><c r="B2"><f>X</f><v>078-05-1120</v></c></row>')
    other = ('<row r="1"><c t="s" r="A1"><v>0</v></c><c t="s" r="B1" s="2"><v>1</v></c></row>'
             '<row r="2"><c r="A2" t="inlineStr"><is><t>Pat Doe</t></is></c>'
             '<c s="1" r="B2"><v>078-05-1120</v></c></row>')
    assert _sheet_text(usual, shared) == _sheet_text(other, shared) == \
        "Patient SSN\nPatient: Pat Doe; SSN: 078-05-1120"


@pytest.mark.parametrize("xml", [
    '<sst><si><t>a &amp; b</t></si>\n  <si><r><t>x</t></r><r><t>y</t></r></si><si><t/></si></sst>',
    "<sst></sst>",
    "<sst><si><t>one</t></si><x/></si><si><t>two</t></si></sst>",  # a stray end tag: item by item
    '<sst><si><t>a &amp; b &#49;</t></si><si><t xml:space="preserve"> c </t></si><si><t></t></si></sst>',
    '<sst count="3"><si><t>one &amp; two</t></si><si><t></t></si><si><t>three</t></si></sst>',  # split
    '<sst><si><t>one</t></si><si><r><t>x</t></r></si><si><t>three</t></si></sst>',  # a tag inside
    '<sst><si><t>one</t></si><si><t>two</t></si></sst><si><t>late</t></si>',  # an item after the end
    '<sst><si><t>only</t></si></sst>',
])
def test_shared_strings_are_read_item_by_item_or_all_at_once_alike(xml: str) -> None:
    assert _shared_strings(xml) == [_xml_text(item) for item in _SHARED_STRING.findall(xml)]


def sheet(rows: list[list[str]], shared: list[str]) -> str:
    """Sheet XML in the usual form: text cells through `shared`, numbers inline."""
    xml = []
    for number, row in enumerate(rows, 1):
        cells = []
        for column, value in enumerate(row):
            if not value:
                continue
            reference = f"{chr(65 + column)}{number}"
            if value.replace("-", "").isdigit():
                cells.append(f'<c r="{reference}" s="1"><v>{value}</v></c>')
            else:
                shared.append(value)
                cells.append(f'<c r="{reference}" t="s"><v>{len(shared) - 1}</v></c>')
        xml.append(f'<row r="{number}">{"".join(cells)}</row>')
    return "".join(xml)


TABLES = {
    "header": [["Patient", "SSN", "DOB"], ["Pat Doe", "078-05-1120", "01/02/1960"],
               ["Al Roe", "219-45-6789", "x"]],
    "no header": [["row 1", "a"], ["row 2", "b"], ["row 3", "c"]],
    "units": [["Test", "Result", "Units"], ["A1c", "7.9", "%"], ["LDL", "130", "mg/dL"]],
    "gap": [["Patient", "SSN"], ["Pat Doe", ""], ["Al Roe", "219-45-6789"]],
    "one row": [["Patient", "SSN"]],
    "one column": [["SSN"], ["078-05-1120"], ["219-45-6789"]],
}


@pytest.mark.parametrize("name", TABLES)
def test_a_dense_sheet_read_a_column_at_a_time_reads_as_cell_by_cell(name: str) -> None:
    """The column-at-a-time reading of an export gives the text of the general reading, or
    leaves the sheet to it (a gap in a row, a Units column)."""
    shared: list[str] = []
    xml = sheet(TABLES[name], shared)
    assert _sheet_text(xml, shared) == labelled_rows(_cell_by_cell(xml, shared)) == _row_by_row(TABLES[name])


def test_tables_built_a_column_at_a_time_read_as_row_by_row() -> None:
    rng = random.Random(5)
    cells = ["Name", "DOB", "Units", "Result", "row 1", "row 2", " x ", "", "  ", "7.9", "Jane Roe", "a&b",
             "12345"]
    built = 0
    for _ in range(3000):
        width, height = rng.randint(1, 4), rng.randint(1, 5)
        rows = [[rng.choice(cells) for _ in range(width)] for _ in range(height)]
        if rng.random() < 0.5:
            rows[0] = [rng.choice(["Name", "DOB", "Result", "Units", "SSN"]) for _ in range(width)]
        text = dense_table([[row[index] for row in rows] for index in range(width)])
        if text is not None:
            built += 1
            assert text == _row_by_row(rows), rows
    assert built > 300


def test_a_scan_runs_without_the_cyclic_collector_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The collector would walk a large sheet's cells again and again mid-scan: it is paused for
    the scan and back as it was afterwards, also when the scan fails."""
    import gc

    from gateway.stages.dlp import scanner

    seen: list[bool] = []
    real = scanner.extract

    def watched(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scanner, "extract", watched)
    assert gc.isenabled()
    scanner.scan_message(b.message(f"SSN {SSN}"), scanner.ScanRequest())
    assert seen == [False] and gc.isenabled()
    monkeypatch.setattr(scanner, "extract", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        scanner.scan_message(b.message("x"), scanner.ScanRequest())
    assert gc.isenabled()


def zip_with(content: str, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("notes.txt", content)
    return buffer.getvalue()


def changed(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_members_are_inflated_within_bounds_and_checked() -> None:
    """A deflated member is read from the archive's bytes (fast path), a stored one as zipfile
    reads it; a damaged stream or a wrong CRC is unreadable, a size claim smaller than the truth
    stops at the inflation budget."""
    text = f"SSN {SSN} " + "words " * 2000
    good, stored = zip_with(text), zip_with(text, zipfile.ZIP_STORED)
    central = good.find(b"PK\x01\x02")
    start = 30 + len("notes.txt")
    cases = {
        "deflated": (good, ExtractLimits(), {"ssn": 1}, set()),
        "stored": (stored, ExtractLimits(), {"ssn": 1}, set()),
        "bad crc": (changed(good, central + 16, b"\0\0\0\0"), ExtractLimits(), {}, {"unreadable_attachment"}),
        "damaged": (changed(good, start, b"\xff" * 8), ExtractLimits(), {}, {"unreadable_attachment"}),
        "size lie": (changed(good, central + 24, (100).to_bytes(4, "little")),
                     ExtractLimits(max_inflated=1000), {}, {"scan_incomplete"}),
    }
    for name, (archive, limits, counts, facts) in cases.items():
        raw = b.message("x", attachments=[("a.zip", archive, "application/zip")])
        assert found(raw, limits) == counts, name
        assert extract(raw, limits).facts == facts, name


@pytest.mark.parametrize("xml", ["", "<sheetData/>", '<row r="1"></row>',
                                 '<row r="1"><c r="A1" t="s"><v>0</v></c>',  # no end of row
                                 '<row r="1"><c r="A1" t="s"><v>7</v></c></row>'])  # no such string
def test_an_empty_or_broken_sheet_reads_as_what_it_holds(xml: str) -> None:
    assert _sheet_text(xml, ["Patient"]) in ("", "Patient")
