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

The vocabularies load once per process, on first use (about a second: the CMS file is parsed).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources

from gateway.stages.dlp import checksums
from gateway.stages.dlp.detectors import Finding

NAMES = ("person_name", "diagnosis", "clinical_assertion", "lab_result", "patient_condition",
         "icd10_encounter", "prescriber_id")
PASSAGE = 220  # characters between a name and what is said of them

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
_ASSERTION = re.compile(
    r"(?i)\b(?:diagnosed with|dx\s*[:\-]|diagnosis\s*[:\-]|history of|h/o|hx of|presenting with|"
    r"presents with|treated for|being treated|admitted(?:\s+\w+){0,2}\s+(?:with|for)|suffers from|"
    r"suffering from|positive for|new onset|newly diagnosed|flare of|exacerbation of|relapse of|"
    r"stable on|worsening|prognosis|symptoms of)\b")
_LAB = re.compile(
    r"(?i)\b([a-z][a-z0-9\-]*(?: [a-z][a-z0-9\-]*){0,2})\s*[:=]?\s*(?<![\d.])(\d{1,4}(?:\.\d{1,3})?)\s*"
    r"(mg/dl|mmol/l|miu/l|uiu/ml|µiu/ml|g/dl|g/l|ng/ml|ng/dl|pg/ml|meq/l|u/l|iu/l|iu/ml|"
    r"ml/min(?:/1\.73\s?m2)?|x\s?10\^?\d+/u?l|k/ul|cells/ul|mm\s?hg|mcg/dl|µg/dl|umol/l|µmol/l|%)"
    r"(?![a-z0-9/])")
_PERCENT_ANALYTES = re.compile(r"(?i)(?:a1c|hemoglobin a1c|hba1c|sat|saturation|spo2|hematocrit|hct|"
                               r"ejection fraction|ef|neutrophils|lymphocytes|monocytes)$")
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
    for term in condition_terms():
        automaton.add_word(term, len(term))
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


def condition_terms() -> set[str]:
    """The leading phrase of every ICD-10-CM description of a condition (chapters A-T)
    ("Unspecified atrial fibrillation" ->
    "atrial fibrillation"), lower case; also without a final "mellitus", "disease" or "disorder"
    ("gestational diabetes"). Phrases under 5 characters are left out (too many false hits)."""
    import simple_icd_10_cm as icd

    terms: set[str] = set()
    for code in icd.get_all_codes(True):
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


def _conditions(lowered: str, vocab: Vocabulary) -> Iterator[tuple[int, int]]:
    for end, length in vocab.conditions.iter(lowered):  # type: ignore[attr-defined]
        start = end - length + 1
        if (start == 0 or not lowered[start - 1].isalnum()) and \
                (end + 1 == len(lowered) or not lowered[end + 1].isalnum()):
            yield start, end + 1


def _labs(text: str) -> Iterator[tuple[int, int]]:
    for match in _LAB.finditer(text):
        if match.group(3) == "%" and not _PERCENT_ANALYTES.search(match.group(1)):
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


def _same_passage(text: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    start, end = min(a[0], b[0]), max(a[1], b[1])
    return end - start <= PASSAGE and _BLANK_LINE.search(text, start, end) is None


class ClinicalContext:
    """One detector object that reports the findings of all `NAMES` (see the module doc): they
    share the person and condition passes. Looks at the whole text (digit_run 0)."""

    name = "clinical"
    digit_run = 0

    def can_match(self, lowered: str) -> bool:
        return True

    def find(self, text: str, lowered: str | None = None) -> list[Finding]:
        vocab = vocabulary()
        lowered = lowered if lowered is not None else text.lower()
        persons = list(_persons(text, vocab))
        said = [("diagnosis", span) for span in _conditions(lowered, vocab)]
        said += [("clinical_assertion", match.span()) for match in _ASSERTION.finditer(text)]
        said += [("lab_result", span) for span in _labs(text)]
        found = [Finding("person_name", *span) for span in persons]
        found += [Finding(name, *span) for name, span in said]
        for person in persons:
            about = next((span for _, span in said if _same_passage(text, person, span)), None)
            if about is not None:
                found.append(Finding("patient_condition", min(person[0], about[0]), max(person[1], about[1])))
        found += [Finding("icd10_encounter", *span) for span in _encounter_codes(text)]
        found += [Finding("prescriber_id", *span) for span in _prescriber_numbers(text)]
        return found
