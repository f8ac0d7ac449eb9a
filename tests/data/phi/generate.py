"""A labelled corpus of healthcare email, generated: each *message* is labelled with whether it
carries PHI that needs protection and which categories, since the gateway decides per message.

Written to be varied rather than to fit the detectors: names from Faker in several locales
(not the census list the detectors use), many phrasings per category, every placement the
extractor reads, and hard negatives for each category (clinic footers, aggregate and teaching
texts, invalid check digits, order and confirmation numbers, phone numbers, dates that are not
birth dates, names without health information, health information without a person).

Two parts: "tuning" and "held-out". They share no phrasing: each category's templates are split
between them, and the held-out part draws names from other locales. Rules were tuned on the
tuning part only; the held-out figures are the ones reported. Deterministic for a seed.

    .venv/bin/python -m tests.data.phi.generate     # prints the composition
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from faker import Faker

from tests.data.dlp.generate import card, dea, mbi, npi, ssn, until
from tests.stages.dlp import builders as b

CATEGORIES = ("ssn", "mrn", "dob", "diagnosis", "labs", "icd10", "prescriber", "card", "mbi")
PLACEMENTS = ("subject", "text", "html", "alternative", "base64", "qp", "utf8", "att_txt", "att_csv",
              "att_docx", "att_xlsx", "att_pdf", "nested", "zip", "big", "html_table")
TABLE_PLACEMENTS = ("att_csv", "att_xlsx", "html_table")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]


@dataclass(frozen=True)
class Sample:
    name: str
    raw: bytes
    phi: bool
    categories: tuple[str, ...]  # what makes it PHI (empty for a negative)
    placement: str
    part: str  # "tuning" or "heldout"


class Maker:
    """Random parts for one corpus part: half the phrasing of each kind belongs to each part."""

    def __init__(self, rng: random.Random, part: str) -> None:
        self.rng = rng
        self.part = part
        locales = ["en_US", "en_GB"] if part == "tuning" else ["es_MX", "fr_FR", "en_IN", "de_DE", "en_US"]
        self.fakers = [Faker(locale) for locale in locales]
        for faker in self.fakers:
            faker.seed_instance(rng.randint(0, 10**9))

    def pick(self, options: list[str]) -> str:
        """One of `options`: the even ones for tuning, the odd ones for the held-out part."""
        mine = options[0::2] if self.part == "tuning" else options[1::2]
        return self.rng.choice(mine or options)

    def person(self) -> str:
        faker = self.rng.choice(self.fakers)
        return f"{faker.first_name()} {faker.last_name()}"

    def date(self, years: tuple[int, int]) -> str:
        rng = self.rng
        y, m, d = rng.randint(*years), rng.randint(1, 12), rng.randint(1, 28)
        return self.pick([f"{m:02d}/{d:02d}/{y}", f"{d:02d}-{MONTHS[m - 1][:3]}-{y}", f"{y}-{m:02d}-{d:02d}",
                          f"{MONTHS[m - 1]} {d}, {y}", f"{m}/{d}/{y % 100:02d}", f"{d} {MONTHS[m - 1]} {y}",
                          f"{m:02d}.{d:02d}.{y}", f"{MONTHS[m - 1][:3]}. {d}, {y}"])

    def mrn(self) -> str:
        rng = self.rng
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(6, 9)))
        return self.pick([digits, f"{digits[:3]}-{digits[3:]}", f"H{digits}", f"MR-{rng.randint(2015, 2026)}-{digits[:5]}",
                          f"{rng.choice('ABCKMP')}{digits}", f"{digits[:2]}-{digits[2:5]}-{digits[5:]}"])


# -- positives: a category and its sentences (or table rows) ----------------------------------

Snippet = tuple[list[str], list[list[str]]]  # sentences, and a table (header row first) or []


def positive(category: str, m: Maker) -> Snippet:
    rng, who = m.rng, m.person()
    if category == "ssn":
        number = ssn(rng)
        shown = m.pick([f"{number[:3]}-{number[3:5]}-{number[5:]}", number, f"{number[:3]} {number[3:5]} {number[5:]}"])
        label = m.pick(["SSN", "Soc. Sec. #", "Social Security Number", "SS#", "Social Security no.", "SSN#",
                        "social security", "Soc Sec No"])
        text = m.pick([f"{who}, {label} {shown}, needs the form signed.",
                       f"Please update the file: {label}: {shown} ({who}).",
                       f"{label} on file for {who} is {shown}.",
                       f"Member {who} - {label} {shown} - eligibility confirmed."])
        return [text], [["Name", label, "Status"], [who, shown, "active"]]
    if category == "mrn":
        value = m.mrn()
        label = m.pick(["MRN", "MR#", "Med Rec No.", "Medical Record Number", "Medical Record #", "MRN:",
                        "Med. Rec. #", "Medical record no."])
        text = m.pick([f"{label} {value} - {who} checked in for the 2pm slot.",
                       f"Chart for {who} ({label} {value}) is ready for review.",
                       f"Please pull {label}: {value} before the consult.",
                       f"Re: {who}, {label} {value}, discharge paperwork."])
        return [text], [["Patient", label, "Unit"], [who, value, "4 West"]]
    if category == "dob":
        born = m.date((1925, 2010))
        label = m.pick(["DOB", "D.O.B.", "Date of birth", "Birthdate", "born", "DOB:", "Date of Birth", "b."])
        text = m.pick([f"{who} ({label} {born}) is scheduled for Tuesday.",
                       f"Patient: {who}, {label}: {born}.",
                       f"Verify identity of {who} - {label} {born} - before release.",
                       f"{who}, {label} {born}, called about her refill."])
        return [text], [["Patient name", label, "Clinic"], [who, born, "Cardiology"]]
    if category == "diagnosis":
        condition = m.pick(["atrial fibrillation", "gestational diabetes", "generalized anxiety disorder",
                            "congestive heart failure", "major depressive disorder", "type 2 diabetes mellitus",
                            "chronic kidney disease", "rheumatoid arthritis", "bipolar disorder",
                            "essential hypertension", "multiple sclerosis", "asthma",
                            "obstructive sleep apnea", "breast cancer", "hepatitis C", "COPD",
                            "hypothyroidism", "alcohol use disorder", "Crohn's disease", "epilepsy"])
        text = m.pick([f"{who} was diagnosed with {condition} last month and starts treatment on Monday.",
                       f"Follow-up for {who}: {condition}, stable on current medication.",
                       f"{who} has a history of {condition}; please review before surgery.",
                       f"Update on {who} - presenting with worsening {condition}.",
                       f"Mr. {who.split()[-1]} is being treated for {condition} and missed his visit.",
                       f"Our patient {who} (dx: {condition}) asked about the trial.",
                       f"Ms. {who.split()[-1]} was admitted overnight with {condition}.",
                       f"Can you see {who} next week? New onset {condition}."])
        return [text], [["Patient", "Diagnosis"], [who, condition]]
    if category == "labs":
        analytes = [("HbA1c", f"{rng.uniform(5.5, 11):.1f}", "%"), ("Glucose", str(rng.randint(70, 320)), "mg/dL"),
                    ("LDL cholesterol", str(rng.randint(60, 220)), "mg/dL"), ("TSH", f"{rng.uniform(0.2, 9):.2f}", "mIU/L"),
                    ("Creatinine", f"{rng.uniform(0.5, 3.5):.2f}", "mg/dL"), ("Hemoglobin", f"{rng.uniform(7, 17):.1f}", "g/dL"),
                    ("Potassium", f"{rng.uniform(2.8, 6.2):.1f}", "mmol/L"), ("PSA", f"{rng.uniform(0.3, 12):.1f}", "ng/mL"),
                    ("eGFR", str(rng.randint(15, 110)), "mL/min/1.73m2"), ("WBC", f"{rng.uniform(2, 18):.1f}", "x10^3/uL"),
                    ("Vitamin D", str(rng.randint(8, 70)), "ng/mL"), ("Ferritin", str(rng.randint(5, 400)), "ng/mL"),
                    ("Sodium", str(rng.randint(125, 150)), "mEq/L"), ("ALT", str(rng.randint(8, 190)), "U/L")]
        picked = rng.sample(analytes, rng.randint(1, 3))
        values = ", ".join(f"{a} {v} {u}" for a, v, u in picked)
        text = m.pick([f"Results for {who}: {values}.",
                       f"{who} - labs back today. {values}. Please call her.",
                       f"Lab report, patient {who}: {values}",
                       f"FYI {who}'s {values} - repeat in 3 months."])
        return [text], [["Patient", "Test", "Result", "Units"]] + [[who, a, v, u] for a, v, u in picked]
    if category == "icd10":
        codes = rng.sample(["E11.65", "I48.91", "F41.1", "O24.419", "J45.40", "N18.3", "C50.911", "F32.1",
                            "M05.79", "G40.909", "K50.90", "E03.9", "I50.9", "Z79.4", "F10.20"], rng.randint(1, 2))
        joined = ", ".join(codes)
        text = m.pick([f"Assessment: {joined}. Plan: continue current regimen, recheck in 6 weeks.",
                       f"Primary Dx: {codes[0]}. Secondary: none.",
                       f"Diagnosis code {joined} for the visit on Thursday - please resubmit.",
                       f"Encounter summary. ICD-10: {joined}. Follow up PRN.",
                       f"Dx {joined} - prior auth needed for this encounter.",
                       f"Impression: {joined}; refer to specialist."])
        return [text], [["Encounter", "Dx code", "Provider"], [f"ENC{rng.randint(10000, 99999)}", codes[0], "Dr. Lee"]]
    if category == "prescriber":
        prescriber = f"Dr. {m.person()}"
        number = npi(rng)
        dea_number = dea(rng)
        drug = rng.choice(["oxycodone 5 mg", "sertraline 50 mg", "metformin 500 mg", "alprazolam 0.5 mg",
                           "atorvastatin 20 mg", "lisinopril 10 mg", "adderall 20 mg"])
        text = m.pick([f"Rx for {who}: {drug}, Sig: 1 tab PO BID, Refills: 2. Prescriber {prescriber}, NPI {number}, DEA {dea_number}.",
                       f"Referral for {who} from {prescriber} (NPI {number}) to orthopedics.",
                       f"Claim: patient {who}, rendering provider NPI {number}, CPT 99214, DOS 03/14/2026.",
                       f"Prescription - {drug} for {who}. Prescriber DEA {dea_number}.",
                       f"Controlled substance refill for {who}, {drug}; prescriber {prescriber}, DEA# {dea_number}.",
                       f"Ordering provider {prescriber} NPI {number} for {who}'s MRI."])
        return [text], [["Patient", "Drug", "Prescriber NPI", "DEA"], [who, drug, number, dea_number]]
    if category == "card":
        number = card(rng)
        text = m.pick([f"Please charge the copay to card {number} for {who}.",
                       f"Card on file ({who}): {number}, exp 04/28.",
                       f"{who} paid with {number} - receipt attached.",
                       f"Billing: VISA {number} for the balance."])
        return [text], [["Patient", "Card", "Amount"], [who, number, "45.00"]]
    value = mbi(rng)
    text = m.pick([f"Medicare ID {value} for {who} - verify eligibility.",
                   f"{who}, MBI {value}, enrolled in Part B.",
                   f"New Medicare number for {who}: {value}.",
                   f"Medicare Beneficiary Identifier {value} ({who})."])
    return [text], [["Beneficiary", "MBI"], [who, value]]


# -- hard negatives ---------------------------------------------------------------------------

def negative(kind: str, m: Maker) -> Snippet:
    rng, who = m.rng, m.person()
    if kind == "footer":
        number = npi(rng)
        text = m.pick([f"--\nRiverside Family Medicine | NPI {number} | Tel (555) 014-{rng.randint(1000, 9999)}",
                       f"Lakeview Cardiology Group, 12 Main St. Group NPI: {number}. Fax 555-013-2290.",
                       f"Regards,\nDr. {who}\nNorthside Clinic (clinic NPI {number})",
                       f"Sent from the billing office of Westfield Health, organization NPI {number}."])
        return [text], [["Clinic", "NPI", "Phone"], ["Riverside Family Medicine", number, "555-0140"]]
    if kind == "aggregate":
        rows = [[code, str(rng.randint(20, 900))] for code in rng.sample(["E11.9", "I10", "J45.909", "F32.9", "M54.5",
                                                                        "E78.5", "F41.1", "N39.0"], 3)]
        text = m.pick(["Quarterly volume by diagnosis code: " + "; ".join(f"{c} - {n} visits" for c, n in rows) + ".",
                       "Top diagnoses this month (all clinics): " + ", ".join(f"{c} ({n})" for c, n in rows),
                       "Coding reminder: " + rows[0][0] + " is the code for the unspecified form; use the more "
                       "specific code when the documentation supports it.",
                       "Teaching file: the ICD-10 category for essential hypertension is I10; diabetes codes start with E11."])
        return [text], [["Dx code", "Visits"], *rows]
    if kind == "numbers":
        order = str(rng.randint(10**8, 10**9 - 1))
        text = m.pick([f"Order #{order} has shipped; tracking 1Z{rng.randint(10**9, 10**10 - 1)}.",
                       f"Your confirmation number is {order}. Call (555) 013-{rng.randint(1000, 9999)} to change it.",
                       f"Invoice {order} for the supplies, due 2026-09-30.",
                       f"Ticket {order} closed. Reference no. {rng.randint(10**8, 10**9 - 1)}."])
        return [text], [["Order", "Status"], [order, "shipped"]]
    if kind == "invalid":
        bad_ssn = f"{rng.choice(['000', '666', '912'])}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)}"
        bad_npi = until(rng, lambda: f"1{rng.randint(0, 10**9 - 1):09d}", lambda v: v[-1] == "0")
        bad_card = card(rng, valid=False)
        text = m.pick([f"Test record only: SSN {bad_ssn} (not a real number).",
                       f"Sample NPI {bad_npi} fails validation in the demo.",
                       f"The form rejected card {bad_card} as invalid.",
                       f"Placeholder SSN {bad_ssn} used in training slides."])
        return [text], [["Field", "Example"], ["SSN", bad_ssn]]
    if kind == "dates":
        when = m.date((2024, 2027))
        text = m.pick([f"Your appointment is confirmed for {when} at 10:30.",
                       f"The policy takes effect on {when}.",
                       f"Staff meeting moved to {when}; please update your calendars.",
                       f"Invoice date {when}, payable within 30 days."])
        return [text], [["Event", "Date"], ["Staff meeting", when]]
    if kind == "name_only":
        text = m.pick([f"Meeting with {who} about the parking budget on Friday.",
                       f"Please welcome {who}, who joins the front desk team.",
                       f"{who} will cover the phones during lunch.",
                       f"Thanks to {who} for organizing the holiday party."])
        return [text], [["Name", "Team"], [who, "Front desk"]]
    text = m.pick(["Diabetes awareness month: free glucose screening in the lobby on Saturday.",
                   "Staff education: atrial fibrillation and anticoagulation, Thursday noon in room 2.",
                   "New guideline summary on hypertension management is on the intranet.",
                   "Flu shots are available for all employees this week.",
                   "Our asthma support group meets monthly; share the flyer with families.",
                   "Reminder: depression screening is part of every annual wellness visit."])
    return [text], [["Topic", "When"], ["Education", "Thursday"]]


NEGATIVE_KINDS = ("footer", "aggregate", "numbers", "invalid", "dates", "name_only", "health_only")
FILLER = ("Please let me know if you have any questions.", "Thanks for your help with this.",
          "The parking garage will be closed for maintenance next week.",
          "See the attached schedule for the coming month.")


# -- placements -------------------------------------------------------------------------------

def _mail(m: Maker, subject: str, body: str | None = None, html: str | None = None, cte: str | None = None,
          attachments: list[tuple[str, bytes, str]] | None = None, charset: str = "utf-8") -> bytes:
    msg = EmailMessage()
    msg["From"] = "nurse.line@hospital.example"
    msg["To"] = "care.team@clinic.example"
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="hospital.example")
    if body is not None:
        msg.set_content(body, charset=charset, cte=cte)
        if html is not None:
            msg.add_alternative(html, subtype="html", charset=charset, cte=cte)
    elif html is not None:
        msg.set_content(html, subtype="html", charset=charset, cte=cte)
    for filename, content, mimetype in attachments or []:
        maintype, subtype = mimetype.split("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{cell}</th>" for cell in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows[1:])
    return f"<table border=1><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def place(placement: str, m: Maker, sentences: list[str], table: list[list[str]]) -> bytes:
    rng = m.rng
    lines = [*rng.sample(FILLER, 2), *sentences]
    rng.shuffle(lines)
    text = "\n\n".join(lines)
    subject = rng.choice(["Quick question", "Follow up", "FYI", "Update", "Re: this week", "Schedule"])
    if placement == "subject":
        return _mail(m, sentences[0].replace("\n", " ")[:180], "See subject.")
    if placement == "text":
        return _mail(m, subject, text)
    if placement == "html":
        return _mail(m, subject, html="<html><body>" + "".join(f"<p>{line}</p>" for line in lines) + "</body></html>")
    if placement == "alternative":
        return _mail(m, subject, "This message is best viewed in HTML.",
                     html="<div>" + "<br>".join(lines) + "</div>")
    if placement in ("base64", "qp"):
        return _mail(m, subject, text, cte="base64" if placement == "base64" else "quoted-printable")
    if placement == "utf8":
        return _mail(m, subject + " - überprüft ✓", "Grüße — " + text, cte="8bit")
    if placement == "att_txt":
        return _mail(m, subject, "Notes attached.", attachments=[("notes.txt", text.encode(), "text/plain")])
    if placement == "att_csv":
        return _mail(m, subject, "Export attached.", attachments=[("export.csv", _csv(table), "text/csv")])
    if placement == "att_docx":
        return _mail(m, subject, "Letter attached.", attachments=[
            ("letter.docx", b.docx(lines), "application/vnd.openxmlformats-officedocument.wordprocessingml.document")])
    if placement == "att_xlsx":
        return _mail(m, subject, "Spreadsheet attached.", attachments=[
            ("list.xlsx", b.xlsx(table), "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")])
    if placement == "att_pdf":
        return _mail(m, subject, "Report attached.", attachments=[("report.pdf", b.pdf(lines), "application/pdf")])
    if placement == "nested":
        inner = _mail(m, "Fwd: " + subject, text)
        return _mail(m, "Fwd: " + subject, "Forwarding below.", attachments=[("forward.eml", inner, "message/rfc822")])
    if placement == "zip":
        return _mail(m, subject, "Files attached.", attachments=[
            ("files.zip", b.archive({"notes.txt": text, "export.csv": _csv(table)}), "application/zip")])
    if placement == "html_table":
        return _mail(m, subject, html=f"<html><body><p>{FILLER[0]}</p>{_html_table(table)}</body></html>")
    # big: 1-2 MB of ordinary text, the sentences deep inside
    filler = ("Routine administrative text about scheduling, parking and supplies. " * 14 + "\n") * 1
    size = rng.randint(1_000_000, 2_000_000)
    chunks = [filler] * (size // len(filler))
    chunks.insert(rng.randint(len(chunks) // 2, len(chunks) - 1), "\n" + text + "\n")
    return _mail(m, subject, "".join(chunks))


def corpus(count: int = 1200, seed: int = 20261130, big_every: int = 60) -> list[Sample]:
    """`count` samples, two thirds of them carrying PHI; a third of each kind is held out."""
    rng = random.Random(seed)
    makers = {part: Maker(random.Random(rng.randint(0, 10**9)), part) for part in ("tuning", "heldout")}
    samples = []
    positives = {"tuning": 0, "heldout": 0}
    for n in range(count):
        part = "heldout" if n % 3 == 2 else "tuning"
        m = makers[part]
        placement = "big" if n % big_every == 7 else m.rng.choice([p for p in PLACEMENTS if p != "big"])
        carries = m.rng.random() < 0.6
        sentences: list[str] = []
        table: list[list[str]] = []
        categories: tuple[str, ...] = ()
        if carries:
            category = CATEGORIES[positives[part] % len(CATEGORIES)]  # every category in each part
            positives[part] += 1
            sentences, table = positive(category, m)
            categories = (category,)
        for kind in m.rng.sample(NEGATIVE_KINDS, m.rng.randint(1, 2)):
            extra, extra_table = negative(kind, m)
            sentences += extra
            table = table or extra_table
        if placement == "subject":
            sentences = sentences[:1]
        samples.append(Sample(f"{n:04d}-{placement}", place(placement, m, sentences, table), carries,
                              categories, placement, part))
    return samples


def main() -> None:
    from collections import Counter

    made = corpus()
    print(len(made), "messages;", Counter(s.part for s in made))
    print("PHI:", Counter(c for s in made for c in s.categories))
    print("placements:", Counter(s.placement for s in made))


if __name__ == "__main__":
    main()
