"""Radiology vocabulary biasing after decoding: misheard terms corrected against a curated lexicon.

Small Whisper models hear "plural effusion" for "pleural effusion" and "speculated" for
"spiculated"; prompting them with the vocabulary makes tiny.en loop and hallucinate (measured in
the speech tests' history). Instead, windows of one to three recognised words are compared, letters
only, with each lexicon term (difflib ratio); a close, non-identical window is replaced. Guards keep
ordinary words: no stop words, no plurals or other inflections of a term (a long shared prefix),
no short words. Every replacement is reported, so a screen can show what was changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "of",
        "in",
        "on",
        "at",
        "to",
        "and",
        "or",
        "with",
        "without",
        "for",
        "from",
        "by",
        "as",
        "no",
        "not",
        "there",
        "this",
        "that",
        "it",
        "its",
        "which",
        "seen",
        "noted",
        "present",
        "left",
        "right",
        "upper",
        "lower",
        "mild",
        "moderate",
        "severe",
        "small",
        "large",
    ]
)
MIN_WORD_LETTERS = 4
SHARED_PREFIX_FRACTION = 0.7


@dataclass(frozen=True)
class Correction:
    heard: str
    corrected: str
    ratio: float


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _shared_prefix(first: str, second: str) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


class LexiconCorrector:
    """Replace near-misses of lexicon terms in a transcript."""

    def __init__(self, terms: tuple[str, ...], *, min_ratio: float = 0.8) -> None:
        if not 0.5 <= min_ratio < 1.0:
            raise ValueError("min_ratio must be in [0.5, 1)")
        self.min_ratio = min_ratio
        self._terms = [(term, _letters(term), len(term.split())) for term in terms if _letters(term)]

    def _best(self, key: str, words: int) -> tuple[str, float] | None:
        best: tuple[str, float] | None = None
        for term, term_key, term_words in self._terms:
            if abs(term_words - words) > 1 or abs(len(key) - len(term_key)) > 0.3 * len(term_key):
                continue
            if key == term_key or key in (term_key + "s", term_key + "es"):
                return None  # already right (or its plural): leave this window alone
            if _shared_prefix(key, term_key) >= SHARED_PREFIX_FRACTION * min(len(key), len(term_key)):
                continue  # an inflection of the term ("mediastinal" / "mediastinum"), not a mishearing
            ratio = SequenceMatcher(None, key, term_key).ratio()
            if ratio >= self.min_ratio and (best is None or ratio > best[1]):
                best = (term, ratio)
        return best

    def correct(self, text: str) -> tuple[str, list[Correction]]:
        tokens = re.findall(r"[A-Za-z][A-Za-z'-]*|[^A-Za-z\s]+|\s+", text)
        word_positions = [i for i, token in enumerate(tokens) if token[0].isalpha()]
        corrections: list[Correction] = []
        done: set[int] = set()
        for size in (1, 2, 3):  # smallest first: never absorb a right neighbour into a correction
            for start in range(len(word_positions) - size + 1):
                window = word_positions[start : start + size]
                if done & set(window):
                    continue
                words = [tokens[i] for i in window]
                if any(w.lower() in STOP_WORDS for w in words) or any(
                    len(_letters(w)) < MIN_WORD_LETTERS and size == 1 for w in words
                ):
                    continue
                if window[-1] - window[0] != 2 * (size - 1):  # only words separated by plain spaces
                    continue
                found = self._best(_letters("".join(words)), size)
                if found is None:
                    continue
                term, ratio = found
                heard = "".join(tokens[window[0] : window[-1] + 1])
                replacement = term if not heard[0].isupper() else term[0].upper() + term[1:]
                tokens[window[0]] = replacement
                for index in range(window[0] + 1, window[-1] + 1):
                    tokens[index] = ""
                done.update(window)
                corrections.append(Correction(heard, term, round(ratio, 3)))
        return "".join(tokens), corrections
