"""Property and fuzz tests: injected identifiers never survive; mutated files never crash a batch."""

from __future__ import annotations

import io
import string
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, keyword_for_tag
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


def _candidates(options: ProfileOptions) -> list[int]:
    """Table attributes that this option set does not keep, with a VR we can fill."""
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
    return tags


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
