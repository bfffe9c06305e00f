"""De-identify DICOM datasets with the PS3.15 Annex E table, applied by one ``walk`` callback.

- Every attribute of Table E.1-1 gets its action (X remove, Z empty, D dummy, U keyed UID, K keep,
  C clean), recursively into sequences; private attributes are removed unless safe-listed.
- UIDs are remapped with a keyed hash (HMAC-SHA256 with the site secret) into the 2.25 UUID arc, so
  the same input UID maps to the same output UID across a whole dataset and across runs.
- Patient Name and Patient ID become a keyed pseudonym (a dummy value the profile allows), so a
  patient's studies stay linked for training without revealing who they are.
- With the retain-dates option, dates move by a per-patient number of days (keyed too).
- PatientIdentityRemoved, DeidentificationMethod and its code sequence record what was done.
- Objects that may carry identity burned into the pixels are quarantined unless allowed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from medical_data.deid.profile import (
    BASIC_PROFILE_CODE,
    OPTION_CODES,
    ConfidentialityProfile,
    ProfileOptions,
    basic_profile,
)
from medical_data.deid.text import KnownIdentifiers, TextScrubber
from medical_data.dicom_io import is_sequence, quiet_pydicom, typed_dicom_errors
from medical_data.errors import MedicalDataError

PATIENT_NAME, PATIENT_ID, TIMEZONE_OFFSET = 0x00100010, 0x00100020, 0x00080201
TIMEZONE_PATTERN = re.compile(r"[+-]\d{4}")
TEXT_VRS = frozenset({"LO", "SH", "LT", "ST", "UT", "UC", "PN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
BYTE_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
DUMMY_BY_VR = {
    "PN": "ANONYMIZED",
    "DA": "19000101",
    "DT": "19000101000000",
    "TM": "000000",
    "AS": "000Y",
    "DS": "0",
    "IS": "0",
    "UR": "",
    "CS": "ANONYMIZED",
    "AE": "ANONYMIZED",
}
DEFAULT_TEXT_DUMMY = "ANONYMIZED"
MAX_DATE_SHIFT_DAYS = 730
DEFAULT_OPTIONS = ProfileOptions()
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
ULTRASOUND_CLASSES = frozenset(
    {"1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.840.10008.5.1.4.1.1.6.2"}
)


class BurnedInAnnotationError(MedicalDataError):
    """The pixels may show identifying text; the object is quarantined, not written."""

    code = "quarantined_burned_in"


def burned_in_risk(dataset: Dataset) -> str | None:
    """Why the pixels may carry identity, or None when the header says they do not."""
    flag = str(dataset.get("BurnedInAnnotation", "")).strip().upper()
    if flag and flag != "NO":
        return f"BurnedInAnnotation is {flag}"
    if flag == "NO":
        return None
    sop_class = str(dataset.get("SOPClassUID", ""))
    if sop_class.startswith(SECONDARY_CAPTURE_PREFIX):
        return "secondary capture without a BurnedInAnnotation flag"
    if sop_class in ULTRASOUND_CLASSES or dataset.get("Modality") == "US":
        return "ultrasound without a BurnedInAnnotation flag"
    return None


@dataclass
class DeidOutcome:
    """Counts by action (never values), and any warning for the report."""

    actions: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)


class DicomDeidentifier:
    """Applies the confidentiality profile with one site secret.

    Args:
        site_secret: key for UIDs, pseudonyms and date shifts; the same key gives the same output.
        options: Annex E options on top of the Basic Profile.
        scrubber: cleans free text when an option keeps descriptions (built on demand if None).
        allow_burned_in: write objects that may show identity in the pixels (with a warning).
        method_label: text for DeidentificationMethod (0012,0063).
    """

    def __init__(
        self,
        *,
        site_secret: bytes,
        options: ProfileOptions = DEFAULT_OPTIONS,
        scrubber: TextScrubber | None = None,
        allow_burned_in: bool = False,
        method_label: str = "omniclinic",
        profile: ConfidentialityProfile | None = None,
    ) -> None:
        if len(site_secret) < 16:
            raise ValueError("the site secret must be at least 16 bytes")
        self._secret = site_secret
        self.options = options
        self.profile = profile or basic_profile()
        self._scrubber = scrubber
        self.allow_burned_in = allow_burned_in
        self.method_label = method_label
        self._safe_private = {(c, g, e) for c, g, e in options.safe_private}
        self._action_for = self.profile.resolved(options)

    # -- keyed identities ------------------------------------------------------------------------
    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def remap_uid(self, uid: str) -> str:
        """The consistent replacement for ``uid`` (well-known DICOM UIDs are kept)."""
        uid = uid.strip().rstrip("\0")
        if not uid or uid in UID_dictionary:
            return uid
        return "2.25." + str(int.from_bytes(self._digest("uid", uid)[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        """A stable, non-reversible patient pseudonym (16 characters, fits LO and PN)."""
        return "P" + self._digest("patient", patient_id.strip()).hex()[:15].upper()

    def date_shift_days(self, patient_key: str) -> int:
        """Days to move this patient's dates back: 1 to MAX_DATE_SHIFT_DAYS, the same for every study."""
        return 1 + int.from_bytes(self._digest("date", patient_key)[:4], "big") % MAX_DATE_SHIFT_DAYS

    # -- the walk ------------------------------------------------------------------------------
    @typed_dicom_errors
    def deidentify(self, dataset: Dataset) -> DeidOutcome:
        """De-identify ``dataset`` in place.

        Raises:
            BurnedInAnnotationError: the pixels may show identity and ``allow_burned_in`` is off.
            DicomRejected: a value in the file is malformed.
        """
        outcome = DeidOutcome()
        risk = burned_in_risk(dataset)
        if risk is not None:
            if not self.allow_burned_in:
                raise BurnedInAnnotationError(f"quarantined: {risk}")
            outcome.warnings.append(f"written although {risk}: burned-in text may remain")
        patient_key = str(dataset.get("PatientID", "") or dataset.get("StudyInstanceUID", ""))
        # Free text is cleaned (not removed) only under these options; its identifiers come from the
        # header before the walk changes it.
        cleans_text = self.options.clean_descriptors or self.options.retain_patient_characteristics
        known = KnownIdentifiers.from_dataset(dataset) if cleans_text else KnownIdentifiers()
        shift = timedelta(days=self.date_shift_days(patient_key))
        transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None

        with quiet_pydicom():
            self._walk(dataset, outcome.actions, known, shift)
            dataset.PatientName = dataset.PatientID = self.pseudonym(patient_key)  # also where they were absent
            dataset.PatientIdentityRemoved = "YES"
            dataset.DeidentificationMethod = self._method_text()
            dataset.DeidentificationMethodCodeSequence = Sequence(self._method_codes())
            if "retain_dates" in self.options.enabled:
                dataset.LongitudinalTemporalInformationModified = "MODIFIED"
            dataset.preamble = b"\0" * 128  # a preamble can hold a whole TIFF header, with identity
            dataset.file_meta = self._file_meta(dataset, transfer_syntax)
        return outcome

    def _walk(self, dataset: Dataset, counts: Counter[str], known: KnownIdentifiers, shift: timedelta) -> None:
        """Apply the table to every element, into every sequence item, without recursion.

        Decisions come from the tag number and the raw VR: an element is converted from its raw bytes
        only when it is changed or holds items to walk into. Removed and kept elements are never
        parsed (most of a typical header: vendor private blocks), and kept ones are written back as
        the bytes they came in.
        """
        stack = [dataset]
        while stack:
            ds = stack.pop()
            for tag in list(ds.keys()):
                number = int(tag)  # plain ints: pydicom's Tag compares in Python, far slower
                group, element = number >> 16, number & 0xFFFF
                if element == 0x0000 or group in (0x0000, 0x0002):
                    # group lengths are retired and would be wrong after edits; command (0000) and file
                    # meta (0002) elements do not belong in a stored dataset body (the meta is rebuilt)
                    del ds[tag]
                elif group & 1:  # private
                    if not self._keeps_private(ds, tag):
                        del ds[tag]
                        counts["private_removed"] += 1
                elif number in (PATIENT_NAME, PATIENT_ID):  # keyed pseudonym of the (nested) patient
                    nested_id = ds.get("PatientID", "")
                    ds[tag].value = self.pseudonym(str(nested_id)) if nested_id else DUMMY_BY_VR["PN"]
                    counts["pseudonym"] += 1
                else:
                    self._apply(ds, tag, number, counts, known, shift)
                    if tag in ds and is_sequence(ds, tag):
                        stack.extend(ds[tag].value)

    def _apply(
        self, ds: Dataset, tag: BaseTag, number: int, counts: Counter[str], known: KnownIdentifiers, shift: timedelta
    ) -> None:
        action = self._action_for(number)
        if action is None or action == "K":
            return
        if action == "X":
            del ds[tag]
        elif action == "Z":
            _empty(ds[tag])
        elif action == "D":
            self._dummy(ds[tag])
        elif action == "U":
            self._remap(ds[tag])
        elif action == "C":
            action = self._clean(ds, ds[tag], known, shift)
        counts[action] += 1

    def _keeps_private(self, ds: Dataset, tag: BaseTag) -> bool:
        if not self._safe_private:
            return False
        if tag.is_private_creator:
            creator_value = str(ds[tag].value)
            return any(c == creator_value and g == tag.group for c, g, _ in self._safe_private)
        creator = ds.get((tag.group, tag.element >> 8))
        return creator is not None and (str(creator.value), tag.group, tag.element & 0xFF) in self._safe_private

    def _dummy(self, element: DataElement) -> None:
        vr = element.VR
        if vr == "UI":
            self._remap(element)
        elif vr == "SQ":
            element.value = Sequence()
        elif vr in NUMBER_VRS:
            element.value = 0
        elif vr in BYTE_VRS:
            element.value = b"\0\0"
        else:
            element.value = DUMMY_BY_VR.get(vr, DEFAULT_TEXT_DUMMY)

    def _remap(self, element: DataElement) -> None:
        if element.VR == "SQ":
            return  # X/Z/U*: keep the items; the walk remaps the UIDs inside them
        if element.VR != "UI":  # a U action on a non-UID element (e.g. UN): a dummy of its VR
            self._dummy(element)
            return
        if element.VM > 1:
            element.value = [self.remap_uid(str(v)) for v in element.value]
        elif element.value:
            element.value = self.remap_uid(str(element.value))

    def _clean(self, ds: Dataset, element: DataElement, known: KnownIdentifiers, shift: timedelta) -> str:
        vr = element.VR
        if vr in ("DA", "DT"):
            element.value = _shift_dates(element.value, shift, vr)
            return "C"
        if element.tag == TIMEZONE_OFFSET:
            element.value = element.value if TIMEZONE_PATTERN.fullmatch(str(element.value or "")) else ""
            return "C"
        if vr in ("TM", "SQ", "AS") or vr in NUMBER_VRS:
            return "K"  # times stay with whole-day shifts; sequences are walked; ages are characteristics
        if vr in TEXT_VRS or vr == "CS":
            scrubber = self._scrubber = self._scrubber or TextScrubber()
            values = element.value if element.VM > 1 else [element.value]
            cleaned = [scrubber.scrub(str(v or ""), known).text for v in values]
            element.value = cleaned if element.VM > 1 else cleaned[0]
            return "C"
        del ds[element.tag]  # nothing to clean in bytes: remove
        return "X"

    def _method_text(self) -> str:
        options = ", ".join(OPTION_CODES[name][1] for name in self.options.enabled)
        text = f"{self.method_label}: PS3.15 E.1.1 Basic Profile" + (f" with {options}" if options else "")
        return text[:64]

    def _method_codes(self) -> list[Dataset]:
        codes = [BASIC_PROFILE_CODE] + [OPTION_CODES[name] for name in self.options.enabled]
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        return items

    @staticmethod
    def _file_meta(dataset: Dataset, transfer_syntax: str | None) -> FileMetaDataset:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        if transfer_syntax:
            meta.TransferSyntaxUID = transfer_syntax
        return meta


def _empty(element: DataElement) -> None:
    if element.VR == "SQ":
        element.value = Sequence()
    elif element.VR in NUMBER_VRS or element.VR in BYTE_VRS:
        element.value = None
    else:
        element.value = ""


def _shift_dates(value: object, shift: timedelta, vr: str) -> object:
    values = list(value) if isinstance(value, list | tuple) or hasattr(value, "append") else [value]
    shifted = [_shift_one(str(v), shift, vr) for v in values]
    return shifted if len(shifted) > 1 else shifted[0]


def _shift_one(text: str, shift: timedelta, vr: str) -> str:
    """Shift a DA (or the date part of a DT, or each end of a DA range); unparseable becomes empty."""
    if "-" in text and vr == "DA":
        return "-".join(_shift_one(part, shift, vr) if part else "" for part in text.split("-", 1))
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:8])) - shift
    except (ValueError, IndexError):
        return ""
    return moved.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")
