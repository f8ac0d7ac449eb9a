"""Clinical context: who a passage is about and what it says about their health. Where the
pattern detectors find a number by its shape, these find meaning, and report `Finding`s the
same way (positions only, never the words):

- ``person_name``: a person named in the text: after a label (Patient:, Pt, Name:, Re:,
  Member), after an honorific (Mr, Ms ...), or two capitalised words of which the first is a
  first name or the second a surname in the US census name lists (the `names` package). A
  clinician (Dr. ..., ..., MD) is not a person_name: their name says nothing about a patient.
- ``diagnosis``: a condition named in the ICD-10-CM code set (the CMS tabular list shipped by
  `simple-icd-10-cm`, reduced to the leading phrase of each description), found in one
  Aho-Corasick pass (`pyahocorasick`) over the lower-cased text; and ``clinical_assertion``: a
  phrase that asserts a condition of someone ("diagnosed with", "history of", "treated for").
- ``lab_result``: a number with a unit of clinical measurement (mg/dL, mmol/L, ...) after a word.
- ``patient_condition``: a person_name with a diagnosis, clinical_assertion or lab_result in the
  same passage (no blank line between them, at most `PASSAGE` characters apart): a named
  patient's health. This is what makes a message PHI without any identifier number.
- ``icd10_encounter``: an ICD-10 code right after an encounter label (Assessment, Primary Dx,
  Diagnosis code, ICD-10, Impression), unless the code is counted (an aggregate report) or
  explained (teaching text).
- ``prescriber_id``: a valid NPI or DEA number in a prescription, referral or claim, not the
  number of an organisation (a clinic's NPI in a signature).

The condition phrases are derived from the CMS release ahead of time (`write_conditions`, into
``conditions.txt`` beside this module: parsing the 10 MB CMS file takes a second, and every scan
worker would pay it); the vocabularies load once per process, on first use, in a few milliseconds.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gateway.stages.dlp import checksums
from gateway.stages.dlp.detectors import Finding

NAMES = ("person_name", "diagnosis", "clinical_assertion", "lab_result", "patient_condition",
         "icd10_encounter", "prescriber_id")
PASSAGE = 220  # characters between a name and what is said of them
NEAR = 120  # the same for a capitalised pair that is not a known name: it must be closer

_UPPER = "A-ZÀ-ÖØ-Þ"
_LOWER = "a-zß-öø-ÿ"
_TOKEN = rf"[{_UPPER}][{_LOWER}'\u2019\-]+"  # O'Brien (either apostrophe), Smith-Jones
_LABELLED_NAME = re.compile(
    rf"(?i:\b(?:patient(?:\s+name)?|pt|name|member|beneficiary|re|client)\b\.?)\s*[:\-]?\s*"
    rf"({_TOKEN}(?:\s+[A-Z]\.)?(?:\s+{_TOKEN}){{1,2}})")
_HONORIFIC = re.compile(rf"\b(?:Mr|Mrs|Ms|Miss|Mx)\.?\s+({_TOKEN})")
_BIGRAM = re.compile(rf"(?<![\w.])({_TOKEN})\s+(?:[A-Z]\.\s+)?({_TOKEN})(?![\w])")
_CLINICIAN_BEFORE = re.compile(r"(?i)(?:\bdr\.?|\bdoctor|\bnurse|\bprof\.?|\bprovider|\bprescriber)\s*$")
# (Matched at a position: `match` anchors there; "^" would mean the start of the whole text.)
_CLINICIAN_AFTER = re.compile(r"(?i),?\s*(?:md|do|rn|np|pa|phd|lpn|dds|pharmd)\b")
# Capitalised words that start sentences or headings, not names (first token of a pair).
_NOT_NAMES = frozenset((
    "a", "an", "the", "and", "or", "but", "if", "of", "for", "to", "in", "on", "at", "by", "with",
    "from", "as", "is", "are", "was", "were", "be", "been", "this", "that", "these", "those", "it",
    "its", "our", "your", "my", "his", "her", "their", "we", "you", "they", "he", "she", "i", "me", "us",
    "please", "thanks", "thank", "dear", "hi", "hello", "hey", "regards", "re", "fwd", "fw", "fyi",
    "note", "notes", "new", "update", "updated", "follow", "up", "results", "result", "lab", "labs",
    "report", "reports", "patient", "patients", "primary", "secondary", "care", "team", "clinic",
    "hospital", "health", "medical", "center", "family", "medicine", "group", "department", "office",
    "staff", "doctor", "nurse", "today", "tomorrow", "monday", "tuesday", "wednesday", "thursday",
    "friday", "saturday", "sunday", "january", "february", "march", "april", "may", "june", "july",
    "august", "september", "october", "november", "december", "can", "could", "would", "should", "will",
    "shall", "may", "might", "must", "do", "does", "did", "have", "has", "had", "not", "no", "yes",
    "all", "any", "each", "every", "some", "more", "most", "other", "such", "only", "own", "same", "so",
    "than", "too", "very", "just", "also", "now", "then", "there", "here", "when", "where", "why", "how",
    "what", "which", "who", "whom", "see", "call", "send", "sent", "attached", "attachment", "please",
    "kind", "best", "warm", "sincerely", "morning", "afternoon", "evening", "good", "great", "happy",
    "merry", "christmas", "holiday", "meeting", "budget", "parking", "policy", "plan", "assessment",
    "impression", "diagnosis", "dx", "rx", "sig", "prescription", "referral", "claim", "encounter",
    "summary", "quarterly", "top", "coding", "teaching", "reminder", "staff", "education", "flu",
    "diabetes", "asthma", "our", "let", "welcome", "north", "south", "east", "west"))
# Phrases that assert a condition of someone, found in the same automaton pass as the conditions;
# a label (dx, diagnosis ...) counts only with a colon or dash after it.
ASSERTIONS = ("diagnosed with", "history of", "h/o", "hx of", "presenting with", "presents with",
              "treated for", "being treated", "admitted", "suffers from", "suffering from", "positive for",
              "new onset", "newly diagnosed", "flare of", "exacerbation of", "relapse of", "stable on",
              "worsening", "prognosis", "symptoms of")
ASSERTION_LABELS = ("dx", "diagnosis", "diagnoses", "impression", "condition")
_LAB_VALUE = re.compile(
    r"(?<![\d.])(\d{1,4}(?:\.\d{1,3})?)\s*"
    r"(mg/dl|mmol/l|miu/l|uiu/ml|µiu/ml|g/dl|g/l|ng/ml|ng/dl|pg/ml|meq/l|u/l|iu/l|iu/ml|"
    r"ml/min(?:/1\.73\s?m2)?|x\s?10\^?\d+/u?l|k/ul|cells/ul|mm\s?hg|mcg/dl|µg/dl|umol/l|µmol/l|%)"
    r"(?![a-z0-9/])")
_ANALYTE_BEFORE = re.compile(r"[a-z][a-z0-9\-]*\s*[:=]?\s*$")  # a word right before the value
_PERCENT_ANALYTES = re.compile(r"(?:a1c|hba1c|sat|saturation|spo2|hematocrit|hct|ejection fraction|\bef\b|"
                               r"neutrophils|lymphocytes|monocytes)")
_ENCOUNTER_WORDS = ("assessment", "dx", "diagnosis", "diagnoses", "icd", "impression", "problem list",
                    "secondary")
_ENCOUNTER_KINDS = frozenset(("encounter", "label"))
_ICD10 = re.compile(r"(?<![A-Za-z0-9.])[A-TV-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?(?![A-Za-z0-9])")
_ENCOUNTER_LABEL = re.compile(
    r"(?i)(?:assessment|primary dx|secondary dx|admitting dx|discharge dx|\bdx(?: codes?)?|"
    r"diagnosis codes?|diagnoses|diagnosis|icd-?10(?:-cm)?|impression|problem list|secondary)"
    r"\s*[:\-]?\s*(?:[A-TV-Z]\d[0-9A-Z](?:\.[0-9A-Z]{1,4})?\s*[,;/&]\s*)*$")
_COUNTED = re.compile(r"(?i)\s*(?:[-\u2013:(]\s*|;\s*\w+\s*:\s*)?\d[\d,]*\s*(?:visits?|cases?|patients?|"
                      r"encounters?|claims?|members?|\)|%|$|\n)")
_TEACHING = re.compile(r"(?i)\b(?:is the code|code for|codes? start|category for|coding|reminder|"
                       r"teaching|guideline|example|use the more)\b")
_NPI = re.compile(r"(?<![\d\-])[12]\d{9}(?![\d\-])")
_DEA = re.compile(r"(?<![A-Za-z0-9])[A-Za-z][A-Za-z9]\d{7}(?![A-Za-z0-9])")
_PRESCRIBING = re.compile(
    r"(?i)\b(?:rx|prescription|prescriber|prescribed|sig|refills?|dispense|referral|referring|"
    r"ordering provider|rendering provider|attending|claim|cpt|dos|controlled substance|prior auth)\b")
_ORGANISATION = re.compile(r"(?i)(?:group|clinic|organi[sz]ation(?:al)?|practice|billing|facility|"
                           r"hospital|medicine\s*\|)[^\n]{0,12}$")


@dataclass(frozen=True)
class Vocabulary:
    first_names: frozenset[str]
    surnames: frozenset[str]
    conditions: object  # an ahocorasick.Automaton of lower-case condition phrases


@functools.cache
def vocabulary() -> Vocabulary:
    import ahocorasick  # the C extension: imported where it is used

    names = resources.files("names")
    first: set[str] = set()
    for part in ("dist.male.first", "dist.female.first"):
        first |= {line.split()[0].lower() for line in names.joinpath(part).read_text().splitlines()
                  if line.strip()}
    last = {line.split()[0].lower() for line in names.joinpath("dist.all.last").read_text().splitlines()
            if line.strip()}
    automaton = ahocorasick.Automaton()
    for term in condition_phrases():
        automaton.add_word(term, ("diagnosis", len(term)))
    for phrase in ASSERTIONS:
        automaton.add_word(phrase, ("clinical_assertion", len(phrase)))
    for label in ASSERTION_LABELS:
        if not automaton.exists(label):
            automaton.add_word(label, ("label", len(label)))
    for word in _ENCOUNTER_WORDS:  # seen in the same pass: whether to look for ICD-10 codes at all
        if not automaton.exists(word):
            automaton.add_word(word, ("encounter", len(word)))
    automaton.make_automaton()
    return Vocabulary(frozenset(first - _NOT_NAMES), frozenset(last - _NOT_NAMES), automaton)


_QUALIFIERS = frozenset(("unspecified", "other", "specified", "acute", "chronic", "mild", "moderate",
                         "severe", "recurrent", "primary", "secondary", "persistent", "paroxysmal",
                         "essential", "benign", "malignant", "personal", "family", "history", "single",
                         "episode", "initial", "subsequent", "encounter", "idiopathic", "congenital",
                         "unsp", "certain"))
_CUT = re.compile(r",|\(|\[| with | without | due to | in | of | following | complicating | associated | not "
                  r"elsewhere| and | or | affecting | for ")


# A single word counts as a condition when it names a category (a three-character code, such as
# "asthma") or has the shape of a medical term.
_MEDICAL_WORD = re.compile(r"(?:itis|osis|emia|aemia|oma|pathy|plasia|algia|iasis|ism|rrhea|rrhoea|cele|"
                           r"trophy|penia|uria|ectasia|sclerosis|plegia|paresis|spasm|lepsy|mania|phobia)$")
# External causes (V-Y: "garage", "bitten by dog"), factors and status (Z), special purposes (U):
# places and circumstances, not conditions of a person. Chapters are also ranges (e.g. "A00-B99").
_NOT_CONDITIONS = frozenset("UVWXYZ")


CONDITIONS_FILE = "conditions.txt"


def write_conditions(path: Path) -> int:
    """Regenerate the condition vocabulary file from the installed ICD-10-CM release
    (``python -m gateway.stages.dlp.clinical``); a test checks the shipped file is current."""
    terms = sorted(condition_terms())
    header = "# Condition phrases derived from the ICD-10-CM tabular list (simple-icd-10-cm); generated.\n"
    path.write_text(header + "\n".join(terms) + "\n", encoding="utf-8")
    return len(terms)


@functools.cache
def condition_phrases() -> tuple[str, ...]:
    """The shipped condition vocabulary (`CONDITIONS_FILE`)."""
    text = resources.files(__package__).joinpath(CONDITIONS_FILE).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line and not line.startswith("#"))


def condition_terms() -> set[str]:
    """The leading phrase of every ICD-10-CM description of a condition (chapters A-T)
    ("Unspecified atrial fibrillation" ->
    "atrial fibrillation"), lower case; also without a final "mellitus", "disease" or "disorder"
    ("gestational diabetes"). Phrases under 5 characters are left out (too many false hits)."""
    with warnings.catch_warnings():
        # It reads its packaged data with importlib.resources.read_text, deprecated since 3.11.
        warnings.simplefilter("ignore", DeprecationWarning)
        import simple_icd_10_cm as icd

        codes = icd.get_all_codes(True)

    terms: set[str] = set()
    for code in codes:
        if code[:1] in _NOT_CONDITIONS:
            continue
        words = _CUT.split(f" {icd.get_description(code).lower()} ", maxsplit=1)[0].split()
        while words and words[0] in _QUALIFIERS:
            words = words[1:]
        term = " ".join(words)
        if len(term) < 5 or (len(words) == 1 and "." in code and not _MEDICAL_WORD.search(term)):
            continue  # a lone everyday word ("change", "pain") is not a condition on its own
        terms.add(term)
        if len(words) > 2 and words[-1] in ("mellitus", "disease", "disorder", "syndrome"):
            terms.add(" ".join(words[:-1]))
    return terms


def _persons(text: str, vocab: Vocabulary) -> Iterator[tuple[int, int]]:
    for pattern in (_LABELLED_NAME, _HONORIFIC):
        for match in pattern.finditer(text):
            yield match.span(1)
    for match in _BIGRAM.finditer(text):
        first, second = match.group(1).lower(), match.group(2).lower()
        if first in _NOT_NAMES or second in _NOT_NAMES:
            continue
        if first not in vocab.first_names and second not in vocab.surnames:
            continue
        if _CLINICIAN_BEFORE.search(text, max(0, match.start() - 12), match.start()) or \
                _CLINICIAN_AFTER.match(text, match.end(), min(len(text), match.end() + 12)):
            continue
        yield match.span()


def _unlisted_persons(text: str, vocab: Vocabulary,
                      known: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Capitalised pairs that are no known name (a first name or surname from elsewhere: the
    census lists are American), no stop word and no clinician: names only next to a statement
    about someone's health (see `ClinicalContext.find`)."""
    for match in _BIGRAM.finditer(text):
        first, second = match.group(1).lower(), match.group(2).lower()
        if first in _NOT_NAMES or second in _NOT_NAMES or any(s <= match.start() < e for s, e in known):
            continue
        if _CLINICIAN_BEFORE.search(text, max(0, match.start() - 12), match.start()) or \
                _CLINICIAN_AFTER.match(text, match.end(), min(len(text), match.end() + 12)):
            continue
        if vocab.conditions.exists(f"{first} {second}"):  # type: ignore[attr-defined]
            continue  # "Atrial Fibrillation" in a heading
        yield match.span()


def _statements(lowered: str, vocab: Vocabulary) -> tuple[list[tuple[str, tuple[int, int]]], bool]:
    """Conditions and clinical assertions (whole words only), and whether an encounter label
    (Assessment, Dx, ICD ...) occurs: one automaton pass."""
    size = len(lowered)
    said: list[tuple[str, tuple[int, int]]] = []
    encounter = False
    for end, (kind, length) in vocab.conditions.iter(lowered):  # type: ignore[attr-defined]
        start = end - length + 1
        encounter = encounter or kind in _ENCOUNTER_KINDS
        if kind == "encounter" or (start and lowered[start - 1].isalnum()) or \
                (end + 1 < size and lowered[end + 1].isalnum()):
            continue
        if kind == "label":  # "dx: ...", "diagnosis - ...": a label, not the word in a sentence
            after = lowered[end + 1:end + 4].lstrip()
            if after[:1] not in (":", "-"):
                continue
            kind = "clinical_assertion"
        said.append((kind, (start, end + 1)))
    return said, encounter


# The units a lab value ends in, as written (any case) for the prefilter's hints.
LAB_UNITS = ("mg/dl", "mmol/l", "miu/l", "uiu/ml", "g/dl", "g/l", "ng/ml", "ng/dl", "pg/ml", "meq/l", "u/l",
             "iu/l", "iu/ml", "ml/min", "/ul", "mm hg", "mmhg", "mcg/dl", "umol/l", "%")
_UNIT_MARK = re.compile(r"[/%]|hg")  # every unit holds one of these


def _labs(lowered: str) -> Iterator[tuple[int, int]]:
    """Lab values, looked for only around the characters every unit holds (a slash, a percent
    sign, "hg"): found at memchr speed, where a regex over the whole text would try every
    position."""
    seen = -1
    for mark in _UNIT_MARK.finditer(lowered):
        position = mark.start()
        if position < seen:
            continue
        for match in _LAB_VALUE.finditer(lowered, max(0, position - 24), min(len(lowered), position + 24)):
            start = match.start()
            if start < seen or match.end() <= position - 8:
                continue
            seen = match.end()
            if not _ANALYTE_BEFORE.search(lowered, max(0, start - 30), start):
                continue  # a number and a unit, but nothing measured: "20% off"
            if match.group(2) == "%":
                line_start = lowered.rfind("\n", 0, start) + 1
                if not _PERCENT_ANALYTES.search(lowered, max(line_start, start - 60), start):
                    continue
            yield match.span()


def _encounter_codes(text: str) -> Iterator[tuple[int, int]]:
    for match in _ICD10.finditer(text):
        start, end = match.span()
        if not _ENCOUNTER_LABEL.search(text, max(0, start - 40), start):
            continue
        if _COUNTED.match(text, end, min(len(text), end + 30)):
            continue  # "E11.9 - 412 visits", "E11.9 (412)": counted, an aggregate
        sentence_start = max(text.rfind(". ", 0, start), text.rfind("\n", 0, start), 0)
        if _TEACHING.search(text, sentence_start, min(len(text), end + 80)):
            continue
        yield start, end


def _prescriber_numbers(text: str) -> Iterator[tuple[int, int]]:
    for pattern, valid in ((_NPI, checksums.npi), (_DEA, checksums.dea)):
        for match in pattern.finditer(text):
            start, end = match.span()
            if not valid(match.group()):
                continue
            if _ORGANISATION.search(text, max(0, start - 40), start):
                continue
            if _PRESCRIBING.search(text, max(0, start - 120), min(len(text), end + 120)):
                yield start, end


_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")


def _same_passage(text: str, a: tuple[int, int], b: tuple[int, int], limit: int = PASSAGE) -> bool:
    start, end = min(a[0], b[0]), max(a[1], b[1])
    return end - start <= limit and _BLANK_LINE.search(text, start, end) is None


class ClinicalContext:
    """Who the text is about and what it says of their health: ``diagnosis``,
    ``clinical_assertion``, ``lab_result``, and where anything is said, ``person_name`` and
    ``patient_condition``; also ``icd10_encounter``. Looks at the whole text (digit_run 0), but
    looks for names only where something clinical is said: most mail says nothing of the kind."""

    name = "clinical"
    digit_run = 0
    caseless = True
    hints_plain_only = False
    hints_alone = False

    @property
    def hints(self) -> tuple[str, ...]:
        """For the prefilter: every phrase the pass looks for, and the units of lab values."""
        phrases = [*condition_phrases(), *ASSERTIONS, *ASSERTION_LABELS, *_ENCOUNTER_WORDS, *LAB_UNITS]
        return tuple(re.escape(phrase) for phrase in dict.fromkeys(phrases))

    def can_match(self, lowered: str) -> bool:
        return True

    def find(self, text: str, lowered: str | None = None) -> list[Finding]:
        vocab = vocabulary()
        lowered = lowered if lowered is not None else text.lower()
        said, encounter = _statements(lowered, vocab)
        said += [("lab_result", span) for span in _labs(lowered)]
        found = [Finding(name, *span) for name, span in said]
        if encounter:
            found += [Finding("icd10_encounter", *span) for span in _encounter_codes(text)]
        if not said:
            return found
        persons = list(_persons(text, vocab))
        found += [Finding("person_name", *span) for span in persons]
        spans = [span for _, span in said]
        for person in persons:
            about = next((span for span in spans if _same_passage(text, person, span)), None)
            if about is not None:
                found.append(Finding("patient_condition", min(person[0], about[0]), max(person[1], about[1])))
        if not any(f.detector == "patient_condition" for f in found):
            for person in _unlisted_persons(text, vocab, persons):
                about = next((span for span in spans if _same_passage(text, person, span, NEAR)), None)
                if about is not None:
                    found.append(Finding("patient_condition", min(person[0], about[0]),
                                         max(person[1], about[1])))
                    break
        return found


class PrescriberNumbers:
    """``prescriber_id``: run only near numbers of seven digits or more (a DEA number's run)."""

    name = "prescriber_id"
    digit_run = 7
    hints = (r"[12]\d{9}", r"[A-Za-z][A-Za-z9]\d{7}")
    caseless = False
    hints_plain_only = False
    hints_alone = False

    def can_match(self, lowered: str) -> bool:
        return True

    def find(self, text: str, lowered: str | None = None) -> list[Finding]:
        return [Finding("prescriber_id", *span) for span in _prescriber_numbers(text)]



if __name__ == "__main__":
    target = Path(__file__).with_name(CONDITIONS_FILE)
    print(f"{target}: {write_conditions(target)} condition phrases")
