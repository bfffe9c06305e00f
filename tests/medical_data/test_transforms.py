from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.transforms import Compose

from medical_data.study import load_image
from medical_data.transforms import (
    NativeResolutionResized,
    SelectFramesd,
    native_resolution_size,
    persistent_dataset,
)

from .conftest import shipped_file


@pytest.mark.parametrize(("height", "width"), [(512, 512), (2048, 2500), (64, 64), (100, 3000), (3000, 3000)])
def test_native_resolution_sides_are_multiples_of_28_within_budget(height: int, width: int) -> None:
    new_h, new_w = native_resolution_size(height, width, min_pixels=56 * 56, max_pixels=1_000_000)
    assert new_h % 28 == 0 and new_w % 28 == 0
    assert 56 * 56 <= new_h * new_w <= 1_000_000
    assert abs(new_h / new_w - height / width) / (height / width) < 0.25


def test_aspect_ratio_and_sizes_are_validated() -> None:
    with pytest.raises(ValueError):
        native_resolution_size(0, 10)
    with pytest.raises(ValueError):
        native_resolution_size(1, 1000)


def test_series_to_even_frame_sequence_at_native_resolution() -> None:
    pipeline = Compose([SelectFramesd("image", max_frames=7), NativeResolutionResized("image", max_pixels=60_000)])
    out = pipeline({"image": load_image(shipped_file("emri_small.dcm"))})
    assert out["image"].shape == (1, 6, 56, 56)  # 10 frames -> 6 (even), 64 -> 56
    assert out["image"].meta["Modality"] == "MR"


def test_persistent_cache_writes_once_and_serves(tmp_path: Path) -> None:
    records = [{"image": load_image(shipped_file("CT_small.dcm"))}]
    dataset = persistent_dataset(records, NativeResolutionResized("image"), tmp_path / "cache")
    first = dataset[0]["image"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    torch.testing.assert_close(dataset[0]["image"], first)
