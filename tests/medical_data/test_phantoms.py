"""Synthetic chest studies: findings where the ground truth puts them, in millimetres and Hounsfield units."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medical_data.phantoms import (
    GROUND_TRUTH,
    LOBES,
    ChestFindings,
    Geometry,
    Lesion,
    chest_hu,
    lobe_of,
    sample_findings,
    write_cr_chest,
    write_ct_chest,
)
from medical_data.study import load_image, load_series

CALCIFIED = Lesion("left", "lower", 30.0, "calcified", (70.0, 10.0, -30.0))


def patient_points(folder: Path, low: float, high: float) -> np.ndarray:
    """Patient coordinates (mm) of the voxels whose HU lies in [low, high], from each slice's own geometry."""
    points = []
    for path in sorted((folder / "series").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        hu = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        rows, columns = np.nonzero((hu >= low) & (hu <= high))
        row_dir, col_dir = np.array(ds.ImageOrientationPatient[:3]), np.array(ds.ImageOrientationPatient[3:])
        spacing_row, spacing_col = map(float, ds.PixelSpacing)
        origin = np.array(ds.ImagePositionPatient, dtype=float)
        points += [
            origin + c * spacing_col * row_dir + r * spacing_row * col_dir for r, c in zip(rows, columns, strict=True)
        ]
    return np.array(points)


@pytest.mark.parametrize("reversed_directions", [False, True])
def test_a_lesion_is_where_and_as_large_as_the_ground_truth_says(tmp_path: Path, reversed_directions: bool) -> None:
    geometry = Geometry(reversed_columns=reversed_directions, reversed_rows=reversed_directions)
    truth = write_ct_chest(tmp_path, ChestFindings((CALCIFIED,)), seed=3, geometry=geometry)

    points = patient_points(tmp_path, 550, 650)  # calcified (600 HU); bone is 700, soft tissue 40

    assert np.allclose(points.mean(axis=0), CALCIFIED.centre_mm, atol=geometry.pixel_mm)
    voxel = geometry.pixel_mm**2 * geometry.slice_mm
    diameter = (6 * len(points) * voxel / np.pi) ** (1 / 3)
    assert diameter == pytest.approx(CALCIFIED.diameter_mm, rel=0.1)
    saved = json.loads((tmp_path / GROUND_TRUTH).read_text())
    assert (
        saved["study_instance_uid"]
        == truth.study_instance_uid
        == pydicom.dcmread(tmp_path / "series" / "0001.dcm").StudyInstanceUID
    )
    assert saved["findings"]["lesions"][0] | {"centre_mm": None} == {
        "side": "left", "lobe": "lower", "diameter_mm": 30.0, "density": "calcified", "kind": "mass", "centre_mm": None
    }  # fmt: skip
    assert saved["reversed_columns"] is reversed_directions and saved["normal"] is False


def test_a_series_stored_reversed_reads_as_the_same_patient(tmp_path: Path) -> None:
    findings = ChestFindings((CALCIFIED,), effusion="right")
    write_ct_chest(tmp_path / "usual", findings, seed=5)
    write_ct_chest(tmp_path / "reversed", findings, seed=5, geometry=Geometry(reversed_columns=True))

    usual = load_series(sorted((tmp_path / "usual" / "series").glob("*.dcm"))).as_tensor().numpy()
    mirrored = load_series(sorted((tmp_path / "reversed" / "series").glob("*.dcm"))).as_tensor().numpy()

    # the same anatomy on the same side (only the lung's noise differs); read naively, the sides swap
    assert (np.abs(usual - mirrored) > 0.3).mean() < 0.001
    assert (np.abs(usual - mirrored[..., ::-1]) > 0.3).mean() > 0.01


def test_effusion_is_dependent_and_pneumothorax_anterior_on_their_side() -> None:
    rng = np.random.default_rng(0)
    findings = ChestFindings(effusion="right", pneumothorax="left")
    posterior_right, posterior_left = np.array([-75.0]), np.array([75.0])
    assert chest_hu(posterior_right, np.array([60.0]), np.array([0.0]), findings, rng)[0] == pytest.approx(5.0)
    assert chest_hu(posterior_left, np.array([60.0]), np.array([0.0]), findings, rng)[0] < -600  # left: lung
    assert chest_hu(np.array([75.0]), np.array([-60.0]), np.array([0.0]), findings, rng)[0] == -1000.0
    assert chest_hu(np.array([-75.0]), np.array([-60.0]), np.array([0.0]), findings, rng)[0] > -950  # right: lung


def test_sampled_findings_are_plausible_and_repeat_with_their_seed() -> None:
    samples = [sample_findings(np.random.default_rng(seed)) for seed in range(300)]
    assert samples[:20] == [sample_findings(np.random.default_rng(seed)) for seed in range(20)]
    normal = sum(s.normal for s in samples) / len(samples)
    assert 0.15 < normal < 0.35
    lesions = [lesion for s in samples for lesion in s.lesions]
    assert {lesion.density for lesion in lesions} == {"solid", "fluid", "fat", "calcified"}
    assert {lesion.kind for lesion in lesions} == {"nodule", "mass"}
    for lesion in lesions:
        assert lesion.lobe == lobe_of(lesion.side, lesion.centre_mm[2]) and lesion.lobe in LOBES[lesion.side]
        assert (lesion.centre_mm[0] > 0) == (lesion.side == "left")  # +x is the patient's left
    assert all(s.effusion != s.pneumothorax for s in samples if s.effusion)


def test_a_radiograph_shows_the_phantom_with_the_patients_left_on_the_right(tmp_path: Path) -> None:
    findings = ChestFindings(effusion="right")
    write_cr_chest(tmp_path / "usual", findings, seed=2)
    write_cr_chest(tmp_path / "mirrored", findings, seed=2, reversed_columns=True)
    usual = load_image(tmp_path / "usual" / "0001.dcm").as_tensor()[0, 0].numpy()
    mirrored = load_image(tmp_path / "mirrored" / "0001.dcm").as_tensor()[0, 0].numpy()
    assert np.array_equal(usual, mirrored)  # PatientOrientation R\\F is read and undone
    write_cr_chest(tmp_path / "clear", ChestFindings(), seed=2)
    difference = (
        usual - load_image(tmp_path / "clear" / "0001.dcm").as_tensor()[0, 0].numpy()
    )  # what the effusion adds, by image half
    assert difference[:, :88].sum() > 5 * abs(difference[:, 88:].sum())  # the patient's right: image left
    header = pydicom.dcmread(tmp_path / "usual" / "0001.dcm")
    assert header.Modality == "CR" and header.ViewPosition == "PA" and list(header.PatientOrientation) == ["L", "F"]


def test_answers_come_from_the_ground_truth_and_held_out_questions_use_other_words() -> None:
    from medical_data.phantoms import (
        HELD_OUT_PHRASINGS,
        TRAINING_PHRASINGS,
        GroundTruth,
        question_answers,
        reference_report,
    )

    def words(phrasing: str) -> set[str]:
        return set(re.findall(r"[a-z{}]+", phrasing.lower()))

    def runs(phrasing: str) -> set[tuple[str, ...]]:  # every four words in a row
        sequence = re.findall(r"[a-z{}]+", phrasing.lower())
        return {tuple(sequence[start : start + 4]) for start in range(len(sequence) - 3)}

    named = ("pleural effusion", "pneumothorax", "nodule", "mass")
    for kind, held_out_phrasings in HELD_OUT_PHRASINGS.items():  # not the same sentence, nor a near-copy
        for trained, held in itertools.product(TRAINING_PHRASINGS[kind], held_out_phrasings):
            assert not runs(trained) & runs(held), (trained, held)  # nor the held-out sentence's words in order
            for asked, held_asked in {(trained.format(finding=f), held.format(finding=f)) for f in named}:
                shared = len(words(asked) & words(held_asked)) / len(words(asked) | words(held_asked))
                assert shared <= 0.6, (asked, held_asked)  # words in common, counted as asked
    findings = ChestFindings((CALCIFIED,), pneumothorax="right")
    truth = GroundTruth("CT", "CHEST", "1.2.3", findings)
    for held_out in (False, True):
        pairs = question_answers(truth, np.random.default_rng(1), held_out=held_out)
        phrasings = HELD_OUT_PHRASINGS if held_out else TRAINING_PHRASINGS
        assert all(any(qa.question == p.format(finding=f) for p in phrasings[qa.kind] for f in (
            "pleural effusion", "pneumothorax", "nodule", "mass")) for qa in pairs)  # fmt: skip
        answers = {(qa.kind, qa.answer) for qa in pairs}
        assert {("presence_lesion", "yes"), ("presence_pneumothorax", "yes"), ("presence_effusion", "no")} <= answers
        assert {("count", "1"), ("size_class", "mass"), ("side", "left"), ("side", "right")} <= answers
    report = reference_report(truth)
    assert report.splitlines() == [
        "Findings: A 30 mm calcified mass in the left lower lobe. Right pneumothorax.",
        "Impression: Left lower lobe mass; right pneumothorax.",
    ]
    normal = question_answers(GroundTruth("CR", "CHEST", "1.2.4", ChestFindings()), np.random.default_rng(2))
    assert {qa.answer for qa in normal if qa.kind.startswith("presence")} == {"no"}
    assert not [qa for qa in normal if qa.kind == "side"]


def test_a_lesion_question_asks_about_nodules_and_masses_alike() -> None:
    """Presence and count answer for every lesion: a question about nodules alone would be answered
    "yes" for a mass, teaching the model a wrong answer."""
    from medical_data.phantoms import HELD_OUT_PHRASINGS, TRAINING_PHRASINGS

    for phrasings in (TRAINING_PHRASINGS, HELD_OUT_PHRASINGS):
        for phrasing in phrasings["presence_lesion"] + phrasings["count"]:
            named = set(re.findall(r"nodule|mass|lesion", phrasing.lower()))
            assert "lesion" in named or {"nodule", "mass"} <= named, phrasing
