import pytest

from omni_core.speech.asr import radiology_vocabulary
from omni_core.speech.lexicon import LexiconCorrector

corrector = LexiconCorrector(radiology_vocabulary())


@pytest.mark.parametrize(
    ("heard", "meant"),
    [
        ("There is a left plural effusion.", "There is a left pleural effusion."),
        ("A speculated nodule.", "A spiculated nodule."),
        ("Diffuse hepatic stitosis.", "Diffuse hepatic steatosis."),
        ("Cylindrical bronchectosys.", "Cylindrical bronchiectasis."),
    ],
)
def test_misheard_terms_are_corrected_and_reported(heard: str, meant: str) -> None:
    text, corrections = corrector.correct(heard)
    assert text == meant
    assert len(corrections) == 1 and corrections[0].heard in heard


@pytest.mark.parametrize(
    "sentence",
    [
        "Mediastinal lymphadenopathy is present.",
        "Several nodules are seen.",
        "The lungs are clear.",
        "Compared with the prior study, the nodule is stable.",
        "Osteopenic bones.",
        "The kidneys are normal.",
    ],
)
def test_right_words_and_their_inflections_are_left_alone(sentence: str) -> None:
    assert corrector.correct(sentence) == (sentence, [])


def test_threshold_is_validated() -> None:
    with pytest.raises(ValueError):
        LexiconCorrector(("nodule",), min_ratio=1.0)


def test_a_correction_never_swallows_a_neighbouring_word() -> None:
    text, corrections = corrector.correct("A 3.2 cm speculated nodule.")
    assert text == "A 3.2 cm spiculated nodule."
    assert [c.heard for c in corrections] == ["speculated"]


def test_split_words_of_one_term_are_joined() -> None:
    assert corrector.correct("A calcified grain loma.")[0] == "A calcified granuloma."
