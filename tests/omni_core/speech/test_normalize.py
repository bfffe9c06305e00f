import pytest

from omni_core.speech.normalize import normalize_for_speech


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("A 3.2 cm nodule.", "A 3 point 2 centimeter nodule."),
        ("It measures 3 cm in diameter.", "It measures 3 centimeters in diameter."),
        ("Lesion of 1 cm.", "Lesion of 1 centimeter."),
        ("Disc bulge at L4-L5 and L5-S1.", "Disc bulge at L 4 to L 5 and L 5 to S 1."),
        ("Stenosis at C5/6.", "Stenosis at C 5 to C 6."),
        ("T2-weighted MRI.", "T 2 weighted M R I."),
        ("Density of -600 HU.", "Density of minus 600 Hounsfield units."),
        ("Several 3-5 mm nodules.", "Several 3 to 5 millimeter nodules."),
        ("Mass of 1.5 x 2 x 3 cm.", "Mass of 1 point 5 by 2 by 3 centimeters."),
        ("Increase of 12%.", "Increase of 12 percent."),
        ("Opacity in the RUL, s/p lobectomy.", "Opacity in the right upper lobe, status post lobectomy."),
        ("Follow-up CT in 3 months.", "Follow-up C T in 3 months."),
        ("No change vs. prior.", "No change versus prior."),
    ],
)
def test_clinical_text_is_spoken_right(written: str, spoken: str) -> None:
    assert normalize_for_speech(written) == spoken
