"""Stage 1a: the vision encoder pretrained on phantoms' ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medical_data.phantoms import ChestFindings, Lesion, write_cr_chest
from omni_core import OmniConfig
from omni_core.modeling_vision import OmniVisionEncoder
from training.vision_pretrain import TARGETS, ProbeHeads, load_studies, pretrain_vision, study_labels


def _label_names(labels: dict[str, int]) -> dict[str, str]:
    return {name: TARGETS[name][index] for name, index in labels.items()}


def test_labels_come_from_the_ground_truth(tmp_path: Path) -> None:
    findings = ChestFindings(
        lesions=(
            Lesion("left", "upper", 12.0, "solid", (70.0, 0.0, 40.0)),
            Lesion("left", "lower", 35.0, "fat", (80.0, 10.0, -60.0)),
        ),
        effusion="right",
    )
    write_cr_chest(tmp_path, findings, seed=1)
    labels = study_labels(json.loads((tmp_path / "ground_truth.json").read_text()))
    assert _label_names(labels) == {
        "modality": "CR",
        "lesion_count": "2",
        "lesion_right": "no",
        "lesion_left": "yes",
        "effusion": "right",
        "pneumothorax": "none",
        "largest_lesion": "mass",
    }
    write_cr_chest(tmp_path, ChestFindings(), seed=2)
    normal = _label_names(study_labels(json.loads((tmp_path / "ground_truth.json").read_text())))
    assert normal["lesion_count"] == "0" and normal["largest_lesion"] == "none" and normal["effusion"] == "none"


@pytest.fixture(scope="module")
def effusion_studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    split = tmp_path_factory.mktemp("corpus") / "train"
    for index in range(8):  # left and right effusions in turn, a third stored mirrored
        findings = ChestFindings(effusion=("left", "right")[index % 2])
        write_cr_chest(split / "studies" / f"{index:05d}", findings, seed=index, reversed_columns=index % 3 == 0)
    return split


def test_pretraining_teaches_the_encoder_what_the_truth_says(effusion_studies: Path) -> None:
    config = OmniConfig.from_preset("tiny")
    studies = load_studies(effusion_studies, config)
    assert [study.labels["effusion"] for study in studies] == [2, 1] * 4  # left, right
    torch.manual_seed(0)
    vision = OmniVisionEncoder(config.vision, config.text.hidden_size)
    before = [p.detach().clone() for p in vision.tower.blocks.parameters()]

    result = pretrain_vision(vision, studies, studies[:2], steps=60, lr=3e-3, batch_size=8, log=lambda _: None)

    assert result["train_accuracy"]["effusion"] == 1.0  # the side of each effusion, mirrored ones too
    assert set(result["validation_accuracy"]) == set(TARGETS)
    assert any(not torch.equal(a, b) for a, b in zip(before, vision.tower.blocks.parameters(), strict=True))
    assert not vision.training


def test_the_heads_do_not_see_where_a_token_sits() -> None:
    heads = ProbeHeads(16)
    tokens = torch.randn(9, 16)
    shuffled = tokens[torch.randperm(9)]
    for a, b in zip(heads([tokens]), heads([shuffled]), strict=True):  # a side must be carried by the tokens
        assert torch.allclose(a, b, atol=1e-5)


def test_pretraining_refuses_an_empty_split() -> None:
    config = OmniConfig.from_preset("tiny")
    vision = OmniVisionEncoder(config.vision, config.text.hidden_size)
    with pytest.raises(ValueError, match="no training studies"):
        pretrain_vision(vision, [], [], steps=1)
