"""Generate the labelled DLP corpus in this directory: `corpus/NNNN.eml` and `labels.json`.

Synthetic data only: identifiers are random numbers with valid structure and check digits, names
are invented. Each sample places sentences that carry identifiers of one detector (1 to 3 of them)
next to hard negatives (phone numbers, order and tracking numbers, invalid SSNs, numbers failing
their check digit, ICD-shaped tokens outside clinical text, dates that are not birth dates), in
one of the placements the extractor must handle. `labels.json` maps each file to the number of
findings each detector should report. Deterministic: run it again and the files are the same.

    .venv/bin/python -m tests.data.dlp.generate
"""

from __future__ import annotations

import html
import json
import random
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.stages.dlp import checksums
from tests.stages.dlp import builders as b

HERE = Path(__file__).resolve().parent
FIRST = ["Jane", "Omar", "Li", "Maria", "Tomas", "Aisha", "Ken", "Rosa", "Ivan", "Nia"]
LAST = ["Roe", "Haddad", "Chen", "Silva", "Novak", "Bello", "Sato", "Diaz", "Petrov", "Okafor"]
ICD10 = ["E11.9", "I10", "J45.909", "F32.9", "M54.5", "Z00.00", "K21.9", "N39.0", "G43.909", "E78.5",
         "C50.911", "F41.1", "R07.9", "S72.001A", "O09.90"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


# -- identifiers ----------------------------------------------------------------------------

def until(rng: random.Random, make: Callable[[], str], valid: Callable[[str], bool],
          want: bool = True) -> str:
    while True:
        value = make()
        if valid(value) == want:
            return value


def ssn(rng: random.Random) -> str:
    return until(rng, lambda: f"{rng.randint(1, 899):03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}",
                 checksums.ssn)


def npi(rng: random.Random) -> str:
    return until(rng, lambda: f"{rng.choice('12')}{rng.randint(0, 10**9 - 1):09d}", checksums.npi)


def dea(rng: random.Random) -> str:
    return until(rng, lambda: rng.choice("ABFMG") + rng.choice(string.ascii_uppercase)
                 + f"{rng.randint(0, 10**7 - 1):07d}", checksums.dea)


def mbi(rng: random.Random) -> str:
    letters = "ACDEFGHJKMNPQRTUVWXY"
    pick = {"C": "123456789", "A": letters, "N": string.digits, "P": letters + string.digits}
    return "".join(rng.choice(pick[kind]) for kind in "CAPNAPNAANN")


def card(rng: random.Random, valid: bool = True) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16), ("2221", 16)])
    def make() -> str:
        return prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix)))

    return until(rng, make, checksums.payment_card, valid)


def routing(rng: random.Random, valid: bool = True) -> str:
    return until(rng, lambda: f"{rng.choice([1, 2, 3, 11, 21, 26, 31, 61, 67, 71]):02d}"
                 f"{rng.randint(0, 10**7 - 1):07d}", checksums.aba_routing, valid)


def date(rng: random.Random, year: tuple[int, int] = (1930, 2015)) -> str:
    y, m, d = rng.randint(*year), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{MONTHS[m - 1]} {d}, {y}",
                       f"{d} {MONTHS[m - 1][:3]} {y}"])


def name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def spaced_card(rng: random.Random, number: str) -> str:
    if len(number) == 15:
        return rng.choice([number, f"{number[:4]} {number[4:10]} {number[10:]}"])
    sep = rng.choice(["", " ", "-"])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


# -- sentences: (text, {detector: count}) ------------------------------------------------------

def positive(detector: str, rng: random.Random) -> str:
    who = name(rng)
    if detector == "ssn":
        value = ssn(rng)
        return rng.choice([f"Patient {who}, SSN {value[:3]}-{value[3:5]}-{value[5:]}, called today.",
                           f"Social Security number: {value}",
                           f"{who} SSN# {value[:3]} {value[3:5]} {value[5:]}",
                           f"Their ID is {value[:3]}-{value[3:5]}-{value[5:]} per intake.",
                           f"S.S.N. {value} (verified)", f"ssn:{value}"])
    if detector == "npi":
        return rng.choice([f"Referring provider NPI {npi(rng)}.", f"NPI: {npi(rng)} ({who}, MD)",
                           f"National Provider Identifier {npi(rng)} on the claim."])
    if detector == "dea":
        return rng.choice([f"Prescriber DEA {dea(rng)}.", f"DEA registration: {dea(rng)}"])
    if detector == "medicare_mbi":
        value = mbi(rng)
        return rng.choice([f"Medicare number {value} for {who}.",
                           f"MBI: {value[:4]}-{value[4:7]}-{value[7:]}"])
    if detector == "payment_card":
        return rng.choice([f"Card on file: {spaced_card(rng, card(rng))}, exp 04/29.",
                           f"Please charge {spaced_card(rng, card(rng))} for the copay."])
    if detector == "aba_routing":
        return rng.choice([f"Routing number {routing(rng)} for the refund.",
                           f"ABA {routing(rng)}, checking."])
    if detector == "bank_account":
        return rng.choice([f"Deposit to account number {rng.randint(10**6, 10**12)}.",
                           f"Acct # {rng.randint(10**5, 10**10)} at First Bank."])
    if detector == "icd10":
        return rng.choice([f"Diagnosis: {rng.choice(ICD10)}.", f"Dx {rng.choice(ICD10)} confirmed.",
                           f"Assessment: {rng.choice(ICD10)}, follow up in 2 weeks."])
    if detector == "mrn":
        return rng.choice([f"MRN: {rng.randint(10**6, 10**9)}", f"MRN#{rng.randint(10**6, 10**9)}",
                           f"Medical record number {rng.randint(10**5, 10**8)}.",
                           f"Patient ID: A{rng.randint(10**5, 10**7)}"])
    if detector == "dob":
        return rng.choice([f"DOB: {date(rng)}", f"{who}, date of birth {date(rng)}.", f"Born on {date(rng)}.",
                           f"D.O.B. {rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(30, 99)}"])
    raise ValueError(detector)


def negative(rng: random.Random, clinical: bool) -> str:
    """A hard negative; the ICD-shaped ones only where no clinical words are around."""
    choices: list[Callable[[], str]] = [
        lambda: f"Call me at ({rng.randint(200, 989)}) 555-{rng.randint(1000, 9999)}.",
        lambda: f"Office: {rng.randint(200, 989)}-555-{rng.randint(1000, 9999)}, "
                f"fax {rng.randint(200, 989)}.555.0100.",
        lambda: f"Order #{rng.randint(10**8, 10**9 - 1)} shipped.",
        lambda: f"Invalid test SSN 000-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} from the sample form.",
        lambda: f"Example 666-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} and "
                f"9{rng.randint(10, 99)}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} are not valid.",
        lambda: f"Gift card {spaced_card(rng, card(rng, valid=False))} was declined.",
        lambda: f"Tracking 1Z{rng.randint(10**5, 10**6)}A{rng.randint(10**9, 10**10)}.",
        lambda: f"Appointment on {date(rng, (2024, 2027))} at 10:30.",
        lambda: f"Ship to ZIP {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}.",
        lambda: f"Invoice {rng.randint(2020, 2026)}-{rng.randint(100, 999)}-{rng.randint(10000, 99999)}, "
                f"total ${rng.randint(10, 999)}.{rng.randint(10, 99)}.",
        lambda: f"Transit ref {routing(rng, valid=False)} does not check out.",
        lambda: f"Confirmation {npi(rng)} for your booking.",
        lambda: f"Sample {rng.randint(100, 899)}-00-{rng.randint(1000, 9999)} has a zero group.",
        lambda: f"Date of service {date(rng, (2024, 2026))}.",
        lambda: "Registration "
                f"{until(rng, lambda: 'AB' + str(rng.randint(10**6, 10**7 - 1)), checksums.dea, False)}"
                " is not a prescriber number.",
        lambda: f"License key {rng.randint(1, 9)}SL0-AB{rng.randint(0, 9)}-CD{rng.randint(10, 99)}.",
    ]
    if not clinical:
        choices += [
            lambda: f"The {rng.choice(['A320', 'B737', 'E175'])} leaves from gate "
                    f"{rng.choice('BCD')}{rng.randint(10, 40)}.",
            lambda: f"Take route {rng.choice(['E11', 'N39', 'I10'])} past building K21.",
            lambda: "Part numbers C50 and F41 are out of stock.",
        ]
    return rng.choice(choices)()


# -- placements ----------------------------------------------------------------------------

def _obfuscate_html(text: str, rng: random.Random) -> str:
    out = []
    for char in text:
        piece = html.escape(char)
        if char.isdigit() and rng.random() < 0.3:
            piece = rng.choice([f"&#{ord(char)};", f"<b>{char}</b>", f"<span>{char}</span>"])
        out.append(piece)
    return "<html><body><p>" + "".join(out).replace("\n", "</p><p>") + "</p></body></html>"


def message(rng: random.Random, body: str, **fields: Any) -> bytes:
    """`builders.message` with a Message-ID drawn from `rng`, so the corpus is reproducible."""
    return b.message(body, message_id=f"<{rng.randrange(10**12)}@corpus.example>", **fields)


def place(placement: str, lines: list[str], rng: random.Random) -> bytes:
    text = "\n".join(lines)
    if placement == "subject":
        return message(rng, "See subject.", subject=" ".join(lines))
    if placement in ("7bit", "base64", "quoted-printable"):
        return message(rng, text, cte=None if placement == "7bit" else placement)
    if placement == "utf-16":
        return message(rng, text, charset="utf-16", cte="base64")
    if placement == "html":
        return message(rng, "This message has an HTML part.", html=_obfuscate_html(text, rng))
    documents = {
        "docx": lambda: ("notes.docx", b.docx(lines)),
        "docx-runs": lambda: ("notes.docx", b.docx(lines, split_runs=True)),
        "xlsx": lambda: ("list.xlsx", b.xlsx([[line] for line in lines])),
        "pptx": lambda: ("review.pptx", b.pptx(lines)),
        "odt": lambda: ("letter.odt", b.odt(lines)),
        "pdf": lambda: ("referral.pdf", b.pdf(lines)),
        "zip": lambda: ("records.zip", b.archive({"notes.txt": text})),
        "nested-zip": lambda: ("export.zip",
                               b.archive({"inner.zip": b.archive({"chart.docx": b.docx(lines)})})),
        "csv": lambda: ("list.csv", text.encode()),
    }
    if placement in documents:
        filename, content = documents[placement]()
        return message(rng, "Please see the attached file.", subject="Documents",
                       attachments=[(filename, content, "application/octet-stream")])
    if placement == "rfc822":
        inner = message(rng, text, subject="Fwd: chart")
        return message(rng, "Forwarding the message below.",
                       attachments=[("fwd.eml", inner, "message/rfc822")])
    raise ValueError(placement)


PLACEMENTS = ["subject", "7bit", "base64", "quoted-printable", "utf-16", "html", "docx", "docx-runs",
              "xlsx", "pptx", "odt", "pdf", "zip", "nested-zip", "csv", "rfc822"]
DETECTORS = ["ssn", "npi", "dea", "medicare_mbi", "payment_card", "aba_routing", "bank_account", "icd10",
             "mrn", "dob"]
_CLINICAL = {"icd10"}


def samples(rng: random.Random) -> list[tuple[str, bytes, dict[str, int]]]:
    made = []
    for detector in DETECTORS:
        for placement in PLACEMENTS:
            count = 1 if placement == "subject" else rng.randint(1, 3)
            lines = [positive(detector, rng) for _ in range(count)]
            if placement != "subject":
                lines += [negative(rng, clinical=detector in _CLINICAL) for _ in range(rng.randint(1, 3))]
                rng.shuffle(lines)
            made.append((f"{detector}-{placement}", place(placement, lines, rng), {detector: count}))
    for i in range(len(PLACEMENTS) * 4):  # negatives only
        placement = PLACEMENTS[i % len(PLACEMENTS)]
        count = 1 if placement == "subject" else rng.randint(2, 5)
        lines = [negative(rng, clinical=False) for _ in range(count)]
        made.append((f"negative-{placement}-{i}", place(placement, lines, rng), {}))
    return made


def main() -> None:
    rng = random.Random(20261130)
    random.seed(20261130)  # the email package draws MIME boundaries from the global generator
    corpus = HERE / "corpus"
    corpus.mkdir(exist_ok=True)
    for old in corpus.glob("*.eml"):
        old.unlink()
    labels = {}
    for number, (label, raw, expected) in enumerate(samples(rng)):
        filename = f"{number:04d}-{label}.eml"
        (corpus / filename).write_bytes(raw)
        labels[filename] = expected
    (HERE / "labels.json").write_text(json.dumps(labels, indent=1, sort_keys=True) + "\n")
    print(f"{len(labels)} samples in {corpus}")


if __name__ == "__main__":
    main()
