"""Clinical text as it should be spoken: units, abbreviations, spine levels, numbers and ranges.

"3.2 cm" becomes "3 point 2 centimeters", "L4-L5" "L 4 to L 5", "T2-weighted MRI" "T 2 weighted
M R I", "-600 HU" "minus 600 Hounsfield units". Digits are left as digits: both Piper and espeak-ng
read cardinal numbers well; what they get wrong is units, letter-digit codes, decimals and ranges.
Pure functions, no model: the same text always speaks the same way.
"""

from __future__ import annotations

import re

UNITS = {
    "mm": "millimeters",
    "cm": "centimeters",
    "m": "meters",
    "mg": "milligrams",
    "g": "grams",
    "kg": "kilograms",
    "ml": "milliliters",
    "mL": "milliliters",
    "cc": "C C",
    "HU": "Hounsfield units",
    "mSv": "millisieverts",
    "mGy": "milligray",
    "kVp": "K V P",
    "mAs": "M A S",
    "s": "seconds",
    "sec": "seconds",
    "min": "minutes",
    "bpm": "beats per minute",
    "mmHg": "millimeters of mercury",
    "%": "percent",
    "T": "tesla",
}
SINGULAR = {
    "millimeters": "millimeter",
    "centimeters": "centimeter",
    "meters": "meter",
    "milligrams": "milligram",
    "grams": "gram",
    "kilograms": "kilogram",
    "milliliters": "milliliter",
    "seconds": "second",
    "minutes": "minute",
    "Hounsfield units": "Hounsfield unit",
    "millisieverts": "millisievert",
}
ABBREVIATIONS = {
    "w/o": "without",
    "w/": "with",
    "s/p": "status post",
    "r/o": "rule out",
    "e.g.": "for example",
    "i.e.": "that is",
    "vs.": "versus",
    "vs": "versus",
    "approx.": "approximately",
    "Dr.": "Doctor",
    "CXR": "chest X-ray",
    "RUL": "right upper lobe",
    "RML": "right middle lobe",
    "RLL": "right lower lobe",
    "LUL": "left upper lobe",
    "LLL": "left lower lobe",
    "US": "ultrasound",
    "DWI": "diffusion weighted imaging",
    "ADC": "A D C",
    "FLAIR": "flair",
    "STIR": "stir",
    "PACS": "packs",
}
SPELLED = frozenset(
    {
        "CT",
        "MRI",
        "MR",
        "PET",
        "AP",
        "PA",
        "IV",
        "CTA",
        "MRA",
        "ICU",
        "ER",
        "ED",
        "GI",
        "CBD",
        "LAD",
        "RCA",
        "DVT",
        "PE",
        "COPD",
        "ECG",
        "EKG",
        "CSF",
        "CNS",
        "SVC",
        "IVC",
        "AAA",
        "TIA",
        "BMI",
    }
)

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_UNIT_ALTERNATION = "|".join(sorted((re.escape(u) for u in UNITS), key=len, reverse=True))
_LEVEL = r"\b([CTLS])(\d{1,2})\b"


def _speak_number(text: str) -> str:
    sign = "minus " if text.startswith("-") else ""
    text = text.lstrip("+-")
    if "." in text:
        whole, fraction = text.split(".", 1)
        return f"{sign}{whole} point {' '.join(fraction) if len(fraction) > 1 else fraction}"
    return sign + text


# A measurement before a noun is an adjective, and singular: "a 3 centimeter nodule".
_NOT_A_NOUN = (
    "in",
    "on",
    "at",
    "and",
    "or",
    "with",
    "from",
    "to",
    "of",
    "by",
    "across",
    "long",
    "wide",
    "thick",
    "deep",
    "away",
    "above",
    "below",
    "beyond",
    "proximal",
    "distal",
    "per",
    "for",
    "ago",
    "later",
)
_ADJECTIVAL = rf"(?=\s+(?!(?:{'|'.join(_NOT_A_NOUN)})\b)[a-z])"


def _unit_words(unit: str, value: str, adjectival: bool = False) -> str:
    words = UNITS[unit]
    return SINGULAR.get(words, words) if adjectival or value.lstrip("+-") == "1" else words


def normalize_for_speech(text: str) -> str:
    """Rewrite clinical text so that a TTS engine says it as a clinician would."""
    spoken = text
    for short, long in sorted(ABBREVIATIONS.items(), key=lambda item: -len(item[0])):
        spoken = re.sub(rf"(?<![\w/]){re.escape(short)}(?![\w/])", long, spoken)
    # spine levels and ranges of them: L4-L5, L4-5, C5/6
    spoken = re.sub(
        r"\b([CTLS])(\d{1,2})\s*[-/]\s*([CTLS])?(\d{1,2})\b",
        lambda m: f"{m[1]} {m[2]} to {m[3] or m[1]} {m[4]}",
        spoken,
    )
    spoken = re.sub(r"\b([CTLS])(\d{1,2})(?=[-\s]*weighted\b)", r"\1 \2", spoken)
    spoken = re.sub(r"(\w)-weighted\b", r"\1 weighted", spoken)
    spoken = re.sub(_LEVEL, r"\1 \2", spoken)
    # dimensions: 1.5 x 2 x 3 cm
    spoken = re.sub(rf"({_NUMBER})\s*[x×]\s*(?={_NUMBER})", r"\1 by ", spoken)
    # ranges with units: 3-5 mm, 3 to 5 mm
    spoken = re.sub(
        rf"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:-|–|to)\s*(\d+(?:\.\d+)?)\s*({_UNIT_ALTERNATION})(?![\w])({_ADJECTIVAL})?",
        lambda m: f"{_speak_number(m[1])} to {_speak_number(m[2])} {_unit_words(m[3], m[2], m[4] is not None)}",
        spoken,
    )
    # a number and its unit
    spoken = re.sub(
        rf"(?<![\w.])({_NUMBER})\s*({_UNIT_ALTERNATION})(?![\w])({_ADJECTIVAL})?",
        lambda m: f"{_speak_number(m[1])} {_unit_words(m[2], m[1], m[3] is not None)}",
        spoken,
    )
    # remaining decimals and negative numbers
    spoken = re.sub(
        rf"(?<![\w.])({_NUMBER})(?![\w.])",
        lambda m: _speak_number(m[1]) if "." in m[1] or m[1].startswith("-") else m[1],
        spoken,
    )
    spoken = re.sub(r"\b[A-Z]{2,5}\b", lambda m: " ".join(m[0]) if m[0] in SPELLED else m[0], spoken)
    spoken = re.sub(r"\s*\+/-\s*", " plus or minus ", spoken)
    spoken = re.sub(r"#\s*(\d)", r"number \1", spoken)
    return re.sub(r"[ \t]+", " ", spoken).strip()


_ABBREVIATION_DOTS = ("Dr.", "e.g.", "i.e.", "vs.", "approx.", "No.", "Mr.", "Mrs.", "Ms.", "St.")


def split_sentences(text: str) -> list[str]:
    """Sentences, keeping decimals ("3.2") and abbreviations ("Dr.", "e.g.") inside them."""
    pieces: list[str] = []
    current = ""
    for token in re.split(r"(?<=[.!?;])\s+", text.strip()):
        current = f"{current} {token}".strip() if current else token
        if current.endswith(_ABBREVIATION_DOTS):
            continue
        pieces.append(current)
        current = ""
    if current:
        pieces.append(current)
    return [piece for piece in pieces if piece.strip()]
