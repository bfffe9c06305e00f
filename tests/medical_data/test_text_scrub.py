from __future__ import annotations

import pytest

from medical_data.deid.text import KnownIdentifiers, TextScrubber, date_spellings

from .conftest import make_ct_slice


@pytest.fixture(scope="module")
def scrubber() -> TextScrubber:
    return TextScrubber()


def _known() -> KnownIdentifiers:
    ds = make_ct_slice()
    ds.PatientName = "Okafor^Adaeze"
    ds.PatientID = "H7781234"
    ds.AccessionNumber = "RAD-55102"
    ds.PatientBirthDate = "19580912"
    return KnownIdentifiers.from_dataset(ds)


def test_header_identifiers_are_removed_in_any_case(scrubber: TextScrubber) -> None:
    text = "ADAEZE OKAFOR (H7781234), accession RAD-55102, born 12/09/1958. Mrs okafor denies pain."
    result = scrubber.scrub(text, _known())
    for secret in ("ADAEZE", "OKAFOR", "okafor", "H7781234", "RAD-55102", "1958"):
        assert secret not in result.text
    assert result.removed["KNOWN_IDENTIFIER"] >= 4


def test_pattern_identifiers_are_removed(scrubber: TextScrubber) -> None:
    text = (
        "Call Dr. Whitfield on 617-555-0199 or j.whitfield@example.org. MRN: 00412345. "
        "Lives at 42 Cedar Lane. Seen on March 3, 2021."
    )
    result = scrubber.scrub(text)
    for secret in ("Whitfield", "617-555-0199", "example.org", "00412345", "42 Cedar Lane", "March 3, 2021"):
        assert secret not in result.text, secret
    assert result.removed["PHONE_NUMBER"] == 1 and result.removed["EMAIL_ADDRESS"] == 1


def test_clinical_content_is_kept(scrubber: TextScrubber) -> None:
    text = "CT chest: 3.2 cm spiculated nodule in the right upper lobe. L4-L5 disc bulge. T2-weighted MRI, 120 kVp."
    assert scrubber.scrub(text).text == text


def test_counts_hold_no_values(scrubber: TextScrubber) -> None:
    result = scrubber.scrub("Patient Okafor seen", _known())
    assert "Okafor" not in repr(result) and "Okafor" not in str(dict(result.removed))


def test_date_spellings() -> None:
    spellings = date_spellings("19580912")
    assert {"1958-09-12", "12/09/1958", "09/12/1958", "September 12, 1958", "12 Sep 1958"} <= spellings
    assert date_spellings("not-a-date") == set()
