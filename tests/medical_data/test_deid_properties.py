"""Property and fuzz tests: injected identifiers never survive; mutated files never crash a batch."""

from __future__ import annotations

import io
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medical_data.deid import DicomDeidentifier, ProfileOptions, basic_profile
from medical_data.deid.batch import deidentify_one
from medical_data.dicom_io import read_dicom
from medical_data.discovery import InputFile
from medical_data.errors import MedicalDataError
from medical_data.study import load_image

from .conftest import make_ct_slice, shipped_file

SECRET = b"property-test-site-secret-000000"
SHORT_VRS = {"SH", "CS", "AE"}
TEXT_VRS = {"LO", "LT", "ST", "UT", "UC"}
OPTION_SETS = [
    ProfileOptions(),
    ProfileOptions(retain_dates=True),
    ProfileOptions(clean_descriptors=True),
    ProfileOptions(retain_patient_characteristics=True, clean_descriptors=True, retain_dates=True),
]
# A kept sequence (X/Z/U*: its items are walked) to carry nested identifiers.
CARRIER = "ReferencedImageSequence"


IDENTITY_VRS = {"PN", "UI", "DA", "DT", "UR", "LO", "LT", "SH", "ST", "UT", "UC"}
"""Value representations that can hold a name, an ID, a UID, a date or a URL (codes and numbers cannot)."""


def _dictionary_candidates(options: ProfileOptions) -> list[int]:
    """Every public attribute in pydicom's dictionary with such a VR that this option set does not keep.

    Most are not in Table E.1-1 at all: they reach the output only through the safety net by VR.
    """
    profile = basic_profile()
    tags = []
    for tag, (vr, _vm, _name, _retired, keyword) in DicomDictionary.items():
        if tag >> 16 <= 0x0002 or vr not in IDENTITY_VRS or keyword in ("PatientName", "PatientID"):
            continue
        if profile.action_for(tag, options) == "K":
            continue
        tags.append(tag)
    return sorted(tags)


def _candidates(options: ProfileOptions) -> list[int]:
    """Table attributes and dictionary attributes that this option set does not keep, with a VR we can fill."""
    profile = basic_profile()
    tags = []
    for tag in sorted(profile.exact):
        action = profile.action_for(tag, options)
        if tag >> 16 < 0x0008 or action in (None, "K") or keyword_for_tag(tag) in ("PatientName", "PatientID"):
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr in SHORT_VRS | TEXT_VRS | {"PN", "UI", "DA"}:
            tags.append(tag)
    fillable = [
        tag for tag in _dictionary_candidates(options) if dictionary_VR(tag) in TEXT_VRS | {"SH", "PN", "UI", "DA"}
    ]
    return sorted(set(tags) | set(fillable))


CANDIDATES = {index: _candidates(options) for index, options in enumerate(OPTION_SETS)}
tokens = st.text(alphabet=string.ascii_uppercase, min_size=8, max_size=8).map(lambda t: "QX" + t)


@st.composite
def injected_headers(draw: st.DrawFn) -> tuple[int, Dataset, list[bytes]]:
    option_index = draw(st.sampled_from(sorted(CANDIDATES)))
    family, given_name, patient_id = draw(st.lists(tokens, min_size=3, max_size=3, unique=True))
    ds = make_ct_slice()
    ds.PatientName = f"{family}^{given_name}"
    ds.PatientID = patient_id
    secrets = [family.encode(), given_name.encode(), patient_id.encode()]
    carrier_item = Dataset()
    ds.ReferencedImageSequence = Sequence([carrier_item])
    chosen = draw(st.lists(st.sampled_from(CANDIDATES[option_index]), min_size=5, max_size=40, unique=True))
    for tag in chosen:
        target = carrier_item if draw(st.booleans()) else ds
        vr = dictionary_VR(tag)
        token = draw(st.sampled_from([family, given_name, patient_id]))
        if vr == "UI":
            value = f"1.2.826.0.1.3680043.8.498.{draw(st.integers(10**20, 10**25))}"
            secrets.append(value.encode())
        elif vr == "DA":
            value = f"19{draw(st.integers(10, 99))}{draw(st.integers(1, 12)):02d}{draw(st.integers(10, 28))}"
            secrets.append(value.encode())
        elif vr == "PN":
            value = f"{token}^{draw(st.sampled_from([family, given_name]))}"
        elif vr in SHORT_VRS:
            value = token
        else:
            value = f"Seen by {token} today"
        target.add_new(tag, vr, value)
    return option_index, ds, secrets


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(injected_headers())
def test_injected_identifiers_never_survive_in_the_output_bytes(case: tuple[int, Dataset, list[bytes]]) -> None:
    option_index, dataset, secrets = case
    deidentifier = DicomDeidentifier(site_secret=SECRET, options=OPTION_SETS[option_index])
    deidentifier.deidentify(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    survivors = [secret for secret in secrets if secret in data]
    assert survivors == [], f"identifiers survived under {OPTION_SETS[option_index]}"


def _nested(depth: int) -> tuple[Dataset, list[Dataset]]:
    """A dataset with a chain of kept sequences ``depth`` items deep: (root, the items from the top)."""
    root = make_ct_slice()
    items, parent = [root], root
    for _ in range(depth):
        item = Dataset()
        parent.ReferencedImageSequence = Sequence([item])
        items.append(item)
        parent = item
    return root, items


@pytest.mark.parametrize("option_index", range(len(OPTION_SETS)))
def test_identifiers_in_every_dictionary_attribute_never_survive(option_index: int) -> None:
    """The patient's name and ID (free text, names) or a unique UID, date or URL in every attribute of
    pydicom's dictionary that can hold one, at the top level and three sequences deep."""
    options = OPTION_SETS[option_index]
    family, given_name, patient_id = "QXFAMILYNM", "QXGIVENNM", "QX81726354"
    candidates = _dictionary_candidates(options)
    assert len(candidates) > 900  # the dictionary: over 500 of these are not in Table E.1-1
    dataset, items = _nested(3)
    dataset.PatientName, dataset.PatientID = f"{family}^{given_name}", patient_id
    secrets: dict[bytes, str] = {family.encode(): "name", given_name.encode(): "name", patient_id.encode(): "ID"}
    for index, tag in enumerate(candidates):
        vr, keyword = dictionary_VR(tag), keyword_for_tag(tag)
        target = items[index % len(items)]
        if vr == "UI":
            value = f"1.2.826.0.1.3680043.8.498.{700000 + index}"
            secrets[value.encode()] = keyword
        elif vr in ("DA", "DT"):
            value = f"19{10 + index % 90}{1 + index % 12:02d}{10 + index % 19}" + ("101500" if vr == "DT" else "")
            secrets[value.encode()] = keyword
        elif vr == "UR":
            value = f"https://pacs.example.org/patient/{900000 + index}"
            secrets[value.encode()] = keyword
        elif vr == "PN":
            value = f"{family}^{given_name}"
        elif vr == "SH":
            value = patient_id
        else:
            value = f"Seen by {given_name} {family} ({patient_id})"
        target.add_new(tag, vr, value)
    DicomDeidentifier(site_secret=SECRET, options=options, redactor=None).deidentify(dataset)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    survivors = sorted({where for secret, where in secrets.items() if secret in data})
    assert survivors == [], f"identifiers survived under {options}"


FUZZ_SEEDS = [
    "CT_small.dcm",
    "MR_small_jp2klossless.dcm",
    "emri_small_RLE.dcm",
    "JPEG-LL.dcm",
    "rtplan.dcm",
    "SC_rgb_jpeg_gdcm.dcm",
]
SEED_BYTES = {name: shipped_file(name).read_bytes() for name in FUZZ_SEEDS}


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED_BYTES[draw(st.sampled_from(FUZZ_SEEDS))])
    for _ in range(draw(st.integers(1, 12))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutated_files())
def test_mutated_files_get_typed_errors_and_never_half_written_outputs(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "input.dcm"
        source.write_bytes(data)
        try:
            load_image(source)  # read, render, geometry and header facts: the model's load path
        except MedicalDataError as exc:
            assert exc.reason
        out = Path(folder) / "out"
        outcome = deidentify_one(
            InputFile(source, "input.dcm"),
            out,
            DicomDeidentifier(site_secret=SECRET),
            read_dicom.__kwdefaults__["limits"],
            set(),
        )
        assert outcome.code != "unexpected_error", outcome.reason
        written = list(out.rglob("*")) if out.exists() else []
        files = [p for p in written if p.is_file()]
        if outcome.status == "written":
            assert [str(p) for p in files] == [outcome.output]
            read_dicom(files[0], stop_before_pixels=True)  # what was written reads back
        else:
            assert files == []
