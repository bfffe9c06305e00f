"""De-identify DICOM datasets with the PS3.15 Annex E table, applied by one ``walk`` callback.

- Every attribute of Table E.1-1 gets its action (X remove, Z empty, D dummy, U keyed UID, K keep,
  C clean), recursively into sequences; private attributes are removed unless safe-listed.
- UIDs are remapped with a keyed hash (HMAC-SHA256 with the site secret) into the 2.25 UUID arc, so
  the same input UID maps to the same output UID across a whole dataset and across runs.
- Patient Name and Patient ID become a keyed pseudonym (a dummy value the profile allows), so a
  patient's studies stay linked for training without revealing who they are.
- With the retain-dates option, dates move by a per-patient number of days (keyed too).
- Attributes the table does not name get a safety net by value representation (``_safety_net``):
  names emptied, UIDs remapped, dates shifted or emptied, URLs and free text removed (but for a short
  list of technical attributes), at any depth.
- Text burned into the pixels is found with OCR and masked (``burned_in``); objects whose pixels
  cannot be cleared are quarantined unless their modality is allowed.
- PatientIdentityRemoved, DeidentificationMethod and its code sequence record what was done.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

from medical_data.deid.burned_in import PixelTextError, PixelTextRedactor, RedactionResult
from medical_data.deid.fingerprints import IdentifierFingerprints
from medical_data.deid.profile import (
    BASIC_PROFILE_CODE,
    CLEAN_PIXEL_DATA_CODE,
    OPTION_CODES,
    ConfidentialityProfile,
    ProfileOptions,
    basic_profile,
)
from medical_data.deid.text import KnownIdentifiers, TextScrubber
from medical_data.dicom_io import DEFAULT_LIMITS, DicomLimits, is_sequence, quiet_pydicom, typed_dicom_errors
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
DEFAULT_REDACTOR = PixelTextRedactor()
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})
"""Modalities whose missing BurnedInAnnotation flag is trusted: their pixels are reconstructed, not drawn on."""
FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC"})
DATE_VRS = frozenset({"DA", "DT"})
# Free text outside Table E.1-1 that devices write, not people: kept by the safety net unless it holds
# one of the patient's header identifiers. Everything else in a free-text VR that the table does not
# name (TextValue, DocumentTitle, vendor-defined comments, retired attributes) is removed.
TECHNICAL_TEXT_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "SecondaryCaptureDeviceManufacturer",
    "SecondaryCaptureDeviceManufacturerModelName",
    "SecondaryCaptureDeviceSoftwareVersions",
    "CodeValue",
    "LongCodeValue",
    "CodingSchemeDesignator",
    "CodingSchemeVersion",
    "CodeMeaning",
    "ConvolutionKernel",
    "FilterType",
    "SequenceName",
    "PulseSequenceName",
    "ImagedNucleus",
    "ReceiveCoilName",
    "TransmitCoilName",
    "TransducerData",
    "RescaleType",
    "ModalityLUTType",
    "LUTExplanation",
    "WindowCenterWidthExplanation",
    "PositionReferenceIndicator",
    "DimensionDescriptionLabel",
)
TECHNICAL_TEXT_TAGS = frozenset(int(tag_for_keyword(keyword)) for keyword in TECHNICAL_TEXT_KEYWORDS)
CODE_MEANING = int(tag_for_keyword("CodeMeaning"))
STANDARD_CODING_SCHEMES = frozenset(
    {"DCM", "SCT", "SRT", "LN", "UCUM", "FMA", "RADLEX", "NCIt", "MDC", "ACR", "BI", "UMLS", "I10", "ICD10", "UBERON"}
)
"""Coding schemes whose code meanings are the standard's or a terminology's words. A local scheme's
meaning is a site's own text (it often repeats a procedure description) and is removed."""


class BurnedInAnnotationError(MedicalDataError):
    """The pixels may show identifying text; the object is quarantined, not written."""

    code = "quarantined_burned_in"


def burned_in_modality(dataset: Dataset) -> str:
    """The modality an ``--allow-burned-in`` list names this object by: SC for secondary captures."""
    if str(dataset.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
        return "SC"
    return str(dataset.get("Modality", "") or "OT").strip().upper()


def burned_in_risk(dataset: Dataset) -> str | None:
    """Why the pixels may carry identifying text, or None when they need no check.

    A missing BurnedInAnnotation flag is trusted only for cross-sectional modalities (CT, MR, PT, NM);
    secondary captures, ultrasound, radiographs and everything else may have text drawn on them.
    """
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        return None
    flag = str(dataset.get("BurnedInAnnotation", "")).strip().upper()
    if flag and flag != "NO":
        return f"BurnedInAnnotation is {flag}"
    if flag == "NO":
        return None
    modality = burned_in_modality(dataset)
    if modality == "SC":
        return "secondary capture without a BurnedInAnnotation flag"
    if modality in CROSS_SECTIONAL_MODALITIES:
        return None
    if modality == "US":
        return "ultrasound without a BurnedInAnnotation flag"
    return f"{modality} image without a BurnedInAnnotation flag"


@dataclass
class DeidOutcome:
    """Counts by action (never values), and any warning for the report."""

    actions: Counter[str] = field(default_factory=Counter)
    warnings: list[str] = field(default_factory=list)
    pixel_text: RedactionResult | None = None
    """What burned-in text redaction did, when it ran."""


class DicomDeidentifier:
    """Applies the confidentiality profile with one site secret.

    Args:
        site_secret: key for UIDs, pseudonyms and date shifts; the same key gives the same output.
        options: Annex E options on top of the Basic Profile.
        scrubber: cleans free text when an option keeps descriptions (built on demand if None).
        allow_burned_in: modalities (``US``, ``SC``, ``CR``, ...) whose objects are written, with a
            warning, even when the pixels may still show identity after redaction.
        method_label: text for DeidentificationMethod (0012,0063).
        redactor: finds and masks text in the pixels (OCR); None to never touch pixels (such objects
            are then quarantined unless their modality is allowed).
        limits: decoding bounds for the pixels redaction reads.
    """

    def __init__(
        self,
        *,
        site_secret: bytes,
        options: ProfileOptions = DEFAULT_OPTIONS,
        scrubber: TextScrubber | None = None,
        allow_burned_in: Iterable[str] = (),
        method_label: str = "omniclinic",
        profile: ConfidentialityProfile | None = None,
        redactor: PixelTextRedactor | None = DEFAULT_REDACTOR,
        limits: DicomLimits = DEFAULT_LIMITS,
    ) -> None:
        if len(site_secret) < 16:
            raise ValueError("the site secret must be at least 16 bytes")
        self._secret = site_secret
        self.options = options
        self.profile = profile or basic_profile()
        self._scrubber = scrubber
        if isinstance(allow_burned_in, str | bool):
            raise TypeError("allow_burned_in takes modality codes, e.g. ('US', 'SC')")
        self.allow_burned_in = frozenset(m.strip().upper() for m in allow_burned_in if m.strip())
        self.method_label = method_label
        self.redactor = redactor
        self.limits = limits
        self._known_pattern: re.Pattern[str] | None = None
        self._safe_private = {(c, g, e) for c, g, e in options.safe_private}
        self._action_for = self.profile.resolved(options)

    def __getstate__(self) -> dict[str, object]:
        """Picklable for worker processes: the table closure and the text scrubber are rebuilt there."""
        state = dict(self.__dict__)
        state["_action_for"] = None
        state["_scrubber"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._action_for = self.profile.resolved(self.options)

    # -- keyed identities ------------------------------------------------------------------------
    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()

    def identifier_fingerprints(self) -> IdentifierFingerprints:
        """An empty fingerprint set keyed by this site's secret (``deid.fingerprints``)."""
        return IdentifierFingerprints.for_site(self._secret)

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
        self._clear_pixels(dataset, outcome)
        patient_key = str(dataset.get("PatientID", "") or dataset.get("StudyInstanceUID", ""))
        # Identifiers named by the header, taken before the walk changes it: free text that the options
        # keep is cleaned of them, and technical text that holds one is removed.
        known = KnownIdentifiers.from_dataset(dataset)
        shift = timedelta(days=self.date_shift_days(patient_key))
        transfer_syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None

        with quiet_pydicom():
            self._known_pattern = None
            self._walk(dataset, outcome.actions, known, shift)
            dataset.PatientName = dataset.PatientID = self.pseudonym(patient_key)  # also where they were absent
            dataset.PatientIdentityRemoved = "YES"
            dataset.DeidentificationMethod = self._method_text()
            dataset.DeidentificationMethodCodeSequence = Sequence(self._method_codes(outcome.pixel_text is not None))
            if "retain_dates" in self.options.enabled:
                dataset.LongitudinalTemporalInformationModified = "MODIFIED"
            dataset.preamble = b"\0" * 128  # a preamble can hold a whole TIFF header, with identity
            dataset.file_meta = self._file_meta(dataset, transfer_syntax)
        return outcome

    def _clear_pixels(self, dataset: Dataset, outcome: DeidOutcome) -> None:
        """Redact text burned into the pixels, or quarantine the object when it cannot be cleared.

        Raises:
            BurnedInAnnotationError: identity may remain in the pixels and the modality is not allowed.
        """
        modality = burned_in_modality(dataset)
        allowed = modality in self.allow_burned_in
        if str(dataset.get("RecognizableVisualFeatures", "")).strip().upper() == "YES":
            reason = "RecognizableVisualFeatures is YES (a face or other feature may be recognisable)"
            if not allowed:
                raise BurnedInAnnotationError(f"quarantined: {reason}")
            outcome.warnings.append(f"written although {reason} (allowed for {modality})")
        risk = burned_in_risk(dataset)
        if risk is None:
            return
        if self.redactor is None:
            reason = f"{risk}; pixel text redaction is off"
        elif not self.redactor.available():
            reason = f"{risk}; OCR (tesseract-ocr) is not installed to redact it"
        else:
            try:
                result = self.redactor.redact(dataset, self.limits)
            except PixelTextError as exc:
                reason = f"{risk}; {exc.reason}"
            else:
                outcome.actions["pixel_text_regions_masked"] += result.regions
                if result.cleared:
                    dataset.BurnedInAnnotation = "NO"
                    outcome.pixel_text = result
                    return
                reason = f"{risk}; text was still found after {result.rounds} rounds of masking"
        if not allowed:
            raise BurnedInAnnotationError(f"quarantined: {reason}")
        dataset.BurnedInAnnotation = "YES"
        outcome.warnings.append(f"written although {reason}: burned-in text may remain (allowed for {modality})")

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
        if action is None:
            self._safety_net(ds, tag, number, counts, known, shift)
            return
        if action == "K":
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

    def _safety_net(
        self, ds: Dataset, tag: BaseTag, number: int, counts: Counter[str], known: KnownIdentifiers, shift: timedelta
    ) -> None:
        """An attribute Table E.1-1 does not name, handled by what its value representation can hold.

        PN emptied; UI remapped (UIDs the standard defines are kept); DA and DT shifted with the
        patient's dates under the retain-dates option, else emptied, and TM kept only under it; UR
        removed; free text removed unless it is technical (``TECHNICAL_TEXT_KEYWORDS``) and holds none
        of the patient's header identifiers. Public attributes no dictionary knows are removed
        whatever their VR, and so is a known attribute written with a VR other than its own (a
        sequence stored as OB would otherwise never be walked).
        """
        try:
            known_vr = dictionary_VR(number)
        except KeyError:  # a public tag no dictionary knows: nothing says what it may hold
            del ds[tag]
            counts["safety_net"] += 1
            return
        vr = _raw_vr(ds, tag, number)
        if " or " not in known_vr and vr != known_vr:  # a known attribute written with another VR
            del ds[tag]
            counts["safety_net"] += 1
            return
        retains_dates = self.options.retain_dates
        if vr == "PN":
            ds[tag].value = ""
        elif vr == "UI":
            self._remap(ds[tag])
        elif vr in DATE_VRS:
            element = ds[tag]
            element.value = _shift_dates(element.value, shift, vr) if retains_dates and element.value else ""
        elif vr == "TM":
            if retains_dates:
                return
            ds[tag].value = ""
        elif vr == "UR" or vr == "UN":
            del ds[tag]
        elif vr in FREE_TEXT_VRS:
            if number in TECHNICAL_TEXT_TAGS and self._technical_text_is_clean(ds, number, ds[tag].value, known):
                return
            del ds[tag]
        else:
            return  # codes, numbers, ages, bytes and sequences (walked) hold no free identity
        counts["safety_net"] += 1

    def _technical_text_is_clean(self, ds: Dataset, number: int, value: object, known: KnownIdentifiers) -> bool:
        """Allow-listed text is kept only when it names none of the patient's header identifiers and
        no pattern identifier (a titled name, a phone, a date, an MRN...), wherever it sits; a code
        meaning only when its coding scheme is a standard one."""
        if number == CODE_MEANING and str(ds.get("CodingSchemeDesignator", "")).strip() not in STANDARD_CODING_SCHEMES:
            return False
        text = str(value or "")
        if not text.strip():
            return True
        if self._holds_identifier(text, known):
            return False
        scrubber = self._scrubber = self._scrubber or TextScrubber()
        return not scrubber.scrub(text).removed

    def _holds_identifier(self, value: object, known: KnownIdentifiers) -> bool:
        if not known.values:
            return False
        if self._known_pattern is None:
            alternatives = "|".join(re.escape(v) for v in sorted(known.values, key=len, reverse=True))
            self._known_pattern = re.compile(rf"(?i)(?<!\w)(?:{alternatives})(?!\w)")
        return self._known_pattern.search(str(value or "")) is not None

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

    def _method_codes(self, pixels_cleaned: bool = False) -> list[Dataset]:
        codes = [BASIC_PROFILE_CODE] + [OPTION_CODES[name] for name in self.options.enabled]
        if pixels_cleaned:
            codes.append(CLEAN_PIXEL_DATA_CODE)
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


def _raw_vr(ds: Dataset, tag: BaseTag, number: int) -> str:
    """The element's VR without converting it; the dictionary's for implicit VR and UN; UN when unknown."""
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if vr in (None, "UN"):
        try:
            return dictionary_VR(number)
        except KeyError:
            return "UN"
    return str(vr)


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


DT_VALUE = r"\d{4,14}(?:\.\d{1,6})?(?:[+-]\d{4})?"
DT_RANGE = re.compile(rf"({DT_VALUE})?-({DT_VALUE})?")


def _dt_range(text: str) -> tuple[str, str] | None:
    """The two ends of a DT range (either may be empty), or None when ``text`` is one DT value."""
    if re.fullmatch(DT_VALUE, text):
        return None
    match = DT_RANGE.fullmatch(text)
    return (match.group(1) or "", match.group(2) or "") if match else None


def _shift_one(text: str, shift: timedelta, vr: str) -> str:
    """Shift a DA or the date part of a DT, or each end of a DA or DT range; unparseable becomes empty.

    In a DT, ``-HHMM`` at the end is a UTC offset; any other ``-`` separates the ends of a range.
    """
    if vr == "DA" and "-" in text:
        return "-".join(_shift_one(part, shift, vr) if part else "" for part in text.split("-", 1))
    if vr == "DT":
        ends = _dt_range(text)
        if ends is not None:
            return "-".join(_shift_one(part, shift, vr) if part else "" for part in ends)
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:8])) - shift
    except (ValueError, IndexError):
        return ""
    return moved.strftime("%Y%m%d") + (text[8:] if vr == "DT" else "")
