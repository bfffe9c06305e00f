"""Keyed fingerprints of the identifiers removed from a dataset, to check text against them later.

``ingest`` collects each study's header identifiers (names and their parts, IDs, accession numbers,
institution, dates in their usual spellings) and writes only their fingerprints, HMAC-SHA256 under
the site secret, to ``deid_fingerprints.json`` in the dataset: no value is stored, and without the
secret no one can test a guessed name against the file. Training's cleaning pass (and anyone holding
the secret) fingerprints every word n-gram of a text the same way and drops texts that match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medical_data.errors import MedicalDataError
from omniclinic_common.files import write_atomically

FINGERPRINTS_NAME = "deid_fingerprints.json"
MAX_WORDS = 6
"""Identifiers longer than this many words are fingerprinted by their first six."""
_WORD = re.compile(r"[^\W_]+")
_CHECK = "omniclinic identifier fingerprints"


class FingerprintKeyMismatch(MedicalDataError):
    code = "fingerprint_key"


def words(text: str) -> list[str]:
    """The normalised words of a text: compatibility forms folded (fullwidth letters), accents and
    invisible format characters (zero-width spaces) dropped, case folded, runs of letters and digits."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    kept = "".join(ch for ch in folded if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
    return _WORD.findall(kept.casefold())


def _spellings(value: str) -> set[str]:
    """The forms of one identifier that are fingerprinted: its words; a hyphenated name's parts (a
    double-barrelled surname is often written in part); an ID's pieces joined ("H-100" as "h100"),
    digits with and without leading zeros ("1234-5678", "12345678", "0012" and "12")."""
    tokens = words(value)[:MAX_WORDS]
    forms = {" ".join(tokens)} if tokens else set()
    if any(t.isdigit() for t in tokens) or any(ch.isdigit() for ch in value):
        joined = "".join(tokens)
        forms.add(joined)
        if joined.isdigit():
            forms.add(joined.lstrip("0") or "0")
    elif "-" in value and len(tokens) > 1:
        forms |= set(tokens)
    return {form for form in forms if len(form.replace(" ", "")) >= 3}


@dataclass
class IdentifierFingerprints:
    """A set of keyed identifier fingerprints; ``key`` is derived from the site secret."""

    key: bytes = field(repr=False)
    fingerprints: set[str] = field(default_factory=set, repr=False)
    longest: int = 1
    """Words in the longest fingerprinted identifier (how long the n-grams checked must be)."""

    @classmethod
    def for_site(cls, site_secret: bytes) -> IdentifierFingerprints:
        return cls(hmac.new(site_secret, b"identifier-fingerprints", hashlib.sha256).digest())

    def _fingerprint(self, normalised: str) -> str:
        return hmac.new(self.key, normalised.encode(), hashlib.sha256).hexdigest()[:32]

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            for form in _spellings(value):
                self.fingerprints.add(self._fingerprint(form))
                self.longest = max(self.longest, form.count(" ") + 1)

    def matches(self, text: str) -> int:
        """How many word n-grams of ``text`` are fingerprinted identifiers (n-grams also joined:
        "1234 5678" finds "12345678", "H-100" finds "H100")."""
        tokens = words(text)
        found = 0
        for size in range(1, min(max(self.longest, MAX_WORDS), len(tokens)) + 1):
            for start in range(len(tokens) - size + 1):
                gram = tokens[start : start + size]
                forms = {" ".join(gram)} if size <= self.longest else set()
                joined = "".join(gram)
                forms.add(joined)
                if joined.isdigit():
                    forms.add(joined.lstrip("0") or "0")
                found += any(self._fingerprint(form) in self.fingerprints for form in forms)
        return found

    def save(self, path: Path) -> None:
        record = {
            "format": 1,
            "algorithm": "hmac-sha256/128 of case-folded word n-grams",
            "key_check": self._fingerprint(_CHECK),
            "longest": self.longest,
            "fingerprints": sorted(self.fingerprints),
        }
        write_atomically(path, json.dumps(record) + "\n")

    def update_from(self, path: Path) -> None:
        """Add the fingerprints of a file made under the same site secret.

        Raises:
            FingerprintKeyMismatch: it was made with another site secret (its fingerprints would never match).
            MedicalDataError: unreadable or malformed.
        """
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            fingerprints, check, longest = set(record["fingerprints"]), record["key_check"], int(record["longest"])
        except (OSError, ValueError, KeyError, TypeError):
            raise MedicalDataError(f"{path.name} is not a readable fingerprint file") from None
        if check != self._fingerprint(_CHECK):
            raise FingerprintKeyMismatch(f"{path.name} was made with another site secret: set the one ingest used")
        self.fingerprints |= fingerprints
        self.longest = max(self.longest, longest)

    @classmethod
    def load(cls, path: Path, site_secret: bytes) -> IdentifierFingerprints:
        """Read a fingerprint file made under ``site_secret`` (errors as ``update_from``)."""
        loaded = cls.for_site(site_secret)
        loaded.update_from(path)
        return loaded
