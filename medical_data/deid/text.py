"""Identifiers out of free text: report notes, transcripts, DICOM descriptions.

Two kinds of identifier are removed:
- the ones the study header names (patient name parts, IDs, accession number, birth and study dates
  in the usual spellings, physician names), matched case-insensitively as whole words;
- pattern identifiers: MRN-like numbers, phone numbers, e-mail addresses, dates, street addresses,
  titled names ("Dr. Smith"), US SSNs.

presidio-analyzer's pattern recognizers do the matching, offline (no NLP model: ``NoOpNlpEngine``),
so names that the header does not give and no title introduces are not found: a limitation stated
in the README. presidio's e-mail and URL recognizers are not used because they look up domain lists
over the network on first use.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

KNOWN = "KNOWN_IDENTIFIER"
PATTERN_ENTITIES = ("MRN", "PHONE_NUMBER", "EMAIL_ADDRESS", "DATE_TIME", "STREET_ADDRESS", "TITLED_NAME", "US_SSN")
PLACEHOLDERS = {
    KNOWN: "[REDACTED]",
    "MRN": "[ID]",
    "PHONE_NUMBER": "[PHONE]",
    "EMAIL_ADDRESS": "[EMAIL]",
    "DATE_TIME": "[DATE]",
    "STREET_ADDRESS": "[ADDRESS]",
    "TITLED_NAME": "[NAME]",
    "US_SSN": "[ID]",
}
MIN_KNOWN_LENGTH = 2
MONTH_NAMES = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def date_spellings(value: str) -> set[str]:
    """The ways a DICOM date (YYYYMMDD) is written in notes."""
    try:
        parsed = date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except (ValueError, IndexError):
        return set()
    month = _MONTHS[parsed.month - 1]
    d, m, y = parsed.day, parsed.month, parsed.year
    return {
        value[:8],
        f"{y}-{m:02d}-{d:02d}",
        f"{d:02d}/{m:02d}/{y}",
        f"{m:02d}/{d:02d}/{y}",
        f"{d}/{m}/{y}",
        f"{m}/{d}/{y}",
        f"{d:02d}.{m:02d}.{y}",
        f"{d} {month} {y}",
        f"{month} {d}, {y}",
        f"{d} {month[:3]} {y}",
        f"{month[:3]} {d}, {y}",
    }


@dataclass(frozen=True)
class KnownIdentifiers:
    """Values that identify this patient, taken from a study header (never logged)."""

    values: frozenset[str] = field(default_factory=frozenset, repr=False)

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> KnownIdentifiers:
        values: set[str] = set()
        for keyword in (
            "PatientName",
            "ReferringPhysicianName",
            "PerformingPhysicianName",
            "OperatorsName",
            "NameOfPhysiciansReadingStudy",
            "OtherPatientNames",
            "PatientMotherBirthName",
        ):
            for person in _as_list(dataset.get(keyword)):
                values.update(part for part in re.split(r"[\^=\s,]+", str(person)) if part)
        for keyword in (
            "PatientID",
            "OtherPatientIDs",
            "AccessionNumber",
            "IssuerOfPatientID",
            "StudyID",
            "InstitutionName",
            "PatientAddress",
            "PatientTelephoneNumbers",
            "MedicalRecordLocator",
        ):
            values.update(str(v).strip() for v in _as_list(dataset.get(keyword)) if str(v).strip())
        for keyword in ("PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
            for value in _as_list(dataset.get(keyword)):
                values.update(date_spellings(str(value)))
        return cls(frozenset(v for v in values if len(v) >= MIN_KNOWN_LENGTH))

    def __or__(self, other: KnownIdentifiers) -> KnownIdentifiers:
        return KnownIdentifiers(self.values | other.values)


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]  # strings, PersonName (iterable over characters), numbers


@dataclass(frozen=True)
class ScrubResult:
    text: str = field(repr=False)
    removed: Counter[str]
    """How many spans of each kind were replaced (counts only, never the values)."""


class TextScrubber:
    """Replace identifiers in free text with placeholders such as ``[NAME]`` and ``[DATE]``.

    Building the analyzer imports presidio (and spaCy under it), a few seconds; build one scrubber
    and reuse it.
    """

    @cached_property
    def _analyzer(self) -> AnalyzerEngine:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers import DateRecognizer, PhoneRecognizer, UsSsnRecognizer

        def pattern(entity: str, regex: str, score: float = 0.85) -> PatternRecognizer:
            return PatternRecognizer(supported_entity=entity, patterns=[Pattern(entity, regex, score)])

        recognizers = [
            PhoneRecognizer(supported_regions=("US", "GB", "DE", "FR", "CA", "AU")),
            DateRecognizer(),
            UsSsnRecognizer(),
            pattern(
                "MRN",
                r"(?i)\b(?:MRN|MR#|medical record(?: number| no\.?)?|patient id|hospital no\.?)"
                r"\s*[:#]?\s*[A-Z0-9][A-Z0-9-]{3,}\b",
            ),
            pattern("MRN", r"\b\d{7,}\b", 0.6),
            pattern("DATE_TIME", rf"(?i)\b{MONTH_NAMES}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b"),
            pattern("DATE_TIME", rf"(?i)\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTH_NAMES}\.?,?\s+\d{{4}}\b"),
            pattern("EMAIL_ADDRESS", r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"),
            pattern(
                "STREET_ADDRESS",
                r"\b\d{1,6}\s+(?:[A-Z][a-z]+\s+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|"
                r"Boulevard|Blvd|Lane|Ln|Drive|Court|Ct|Way|Place|Pl|Terrace|Close)\b\.?",
            ),
            pattern("TITLED_NAME", r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?"),
        ]
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
        engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
        return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])

    def scrub(self, text: str, known: KnownIdentifiers = KnownIdentifiers()) -> ScrubResult:
        """Return ``text`` with identifiers replaced, and counts of what was replaced."""
        if not text.strip():
            return ScrubResult(text, Counter())
        ad_hoc = []
        entities = list(PATTERN_ENTITIES)
        if known.values:
            from presidio_analyzer import Pattern, PatternRecognizer

            alternatives = "|".join(re.escape(v) for v in sorted(known.values, key=len, reverse=True))
            ad_hoc.append(
                PatternRecognizer(
                    supported_entity=KNOWN,
                    patterns=[Pattern(KNOWN, rf"(?i)(?<!\w)(?:{alternatives})(?!\w)", 1.0)],
                )
            )
            entities.append(KNOWN)
        results = self._analyzer.analyze(
            text=text, language="en", entities=entities, ad_hoc_recognizers=ad_hoc, score_threshold=0.3
        )
        return _replace_spans(text, ((r.start, r.end, r.entity_type) for r in results))


def _replace_spans(text: str, spans: Iterable[tuple[int, int, str]]) -> ScrubResult:
    """Replace possibly overlapping spans, the longest winning where they overlap."""
    chosen: list[tuple[int, int, str]] = []
    for start, end, entity in sorted(spans, key=lambda s: (s[0], -(s[1] - s[0]))):
        if chosen and start < chosen[-1][1]:
            if end > chosen[-1][1]:  # extend the current span to cover both
                chosen[-1] = (chosen[-1][0], end, chosen[-1][2])
            continue
        chosen.append((start, end, entity))
    pieces, cursor, removed = [], 0, Counter()
    for start, end, entity in chosen:
        pieces.append(text[cursor:start])
        pieces.append(PLACEHOLDERS.get(entity, "[REDACTED]"))
        removed[entity] += 1
        cursor = end
    pieces.append(text[cursor:])
    return ScrubResult("".join(pieces), removed)
