"""The processor turns what medical_data produces into model inputs the model accepts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from medical_data.study import load_image
from omni_core import OmniConfig, OmniProcessor
from omni_core.processing_omni import IGNORE, Message, Part

from .conftest import ByteTokenizer, conversation


def test_placeholders_match_the_encoders(config: OmniConfig, processor: OmniProcessor) -> None:
    inputs = processor(conversation(config))
    ids = inputs.input_ids[0].tolist()
    special = config.special_token_ids
    grid = inputs.image_grid_thw.tolist()
    # a 2D image; a 5-slice series sampled to the preset's 4 frames = 2 temporal patches
    assert grid == [[1, 4, 6], [2, 2, 4]]
    assert ids.count(special["image_pad"]) == 1 * 4 * 6 // 4
    assert ids.count(special["video_pad"]) == 2 * 2 * 4 // 4
    assert ids.count(special["audio_pad"]) == 13  # 1 s of audio at 12.5 tokens/s, rounded up
    assert ids.count(special["audiogen_pad"]) == inputs.speech_codes.shape[0] == 4
    assert inputs.pixel_patches.shape[0] == sum(t * h * w for t, h, w in grid)


def test_labels_cover_the_assistant_turn_only(config: OmniConfig, processor: OmniProcessor) -> None:
    inputs = processor(conversation(config))
    labels = [t for t in inputs.labels[0].tolist() if t != IGNORE]
    assert ByteTokenizer().decode(labels).startswith("No nodule.")
    special = config.special_token_ids
    span = labels[labels.index(special["audiogen_start"]) :]
    # every frame is a target ("another frame follows"), then the end: a model learns when to stop
    assert span[:6] == [special["audiogen_start"], *[special["audiogen_pad"]] * 4, special["audiogen_end"]]
    assert not {special[name] for name in ("image_pad", "video_pad", "audio_pad")} & set(labels)


def test_a_dicom_image_brings_its_header_facts_and_stays_a_plain_tensor(
    config: OmniConfig, processor: OmniProcessor
) -> None:
    image = load_image(get_testdata_file("CT_small.dcm"), preset="lung")
    inputs = processor([Message("user", [Part("image", image), Part("text", "Findings?")])], add_generation_prompt=True)
    text = ByteTokenizer().decode(inputs.input_ids[0].tolist())
    assert "[CT | lung window]" in text
    assert type(inputs.pixel_patches) is torch.Tensor  # MONAI's metadata stays out of the model
    side = config.vision.merge_factor
    assert all(h * 14 % side == 0 and w * 14 % side == 0 for _, h, w in inputs.image_grid_thw.tolist())


def test_a_tokenizer_beyond_the_backbone_vocabulary_is_refused(config: OmniConfig) -> None:
    class Wide(ByteTokenizer):
        def encode(self, text: str) -> list[int]:
            return [500]

    with pytest.raises(ValueError, match="vocabulary"):
        OmniProcessor(config, Wide())([Message("user", [Part("text", "hi")])])

    class NoChatML(ByteTokenizer):
        def convert_tokens_to_ids(self, token: str) -> int | None:
            return None

    with pytest.raises(ValueError, match="no <\\|im_start\\|> token"):
        OmniProcessor(config, NoChatML())


def test_audio_token_rate_is_12_5_per_second(config: OmniConfig, processor: OmniProcessor) -> None:
    for seconds, tokens in ((0.08, 1), (2.0, 25), (3.0, 38)):
        audio = np.zeros(int(16_000 * seconds), dtype=np.float32)
        ids = processor([Message("user", [Part("audio", audio)])]).input_ids[0].tolist()
        assert ids.count(config.special_token_ids["audio_pad"]) == tokens


def test_audio_longer_than_the_tokenizer_window_is_refused(config: OmniConfig, processor: OmniProcessor) -> None:
    too_long = np.zeros(16_000 * (config.audio.max_audio_seconds + 1), dtype=np.float32)
    with pytest.raises(ValueError, match="split it"):
        processor([Message("user", [Part("audio", too_long)])])


@pytest.mark.parametrize("samples", [np.zeros(0), np.zeros(50), np.full(16_000, np.nan), np.zeros((2, 8_000))])
def test_empty_tiny_or_broken_audio_is_a_clear_error(processor: OmniProcessor, samples: np.ndarray) -> None:
    with pytest.raises(ValueError, match="audio part"):
        processor([Message("user", [Part("audio", samples.astype(np.float32))])])


def test_a_thick_slab_mip_keeps_a_small_finding_that_even_sampling_drops() -> None:
    """A series longer than the encoder takes: ``max`` keeps a one-slice bright spot between the kept
    slices; ``sample`` (the release's way) loses it."""
    import dataclasses

    base = OmniConfig.from_preset("tiny")  # max_frames 4
    volume = torch.zeros(1, 16, 56, 56)
    volume[0, 6, 20:26, 10:16] = 1.0  # slice 6 of 16: between the evenly sampled 0, 5, 10, 15
    seen = {}
    for mode in ("sample", "max"):
        config = dataclasses.replace(base, vision=dataclasses.replace(base.vision, slab_projection=mode))
        processor = OmniProcessor(config, ByteTokenizer())
        patches = [processor([Message("user", [Part("image", v)])]).pixel_patches for v in (volume, 0 * volume)]
        seen[mode] = float((patches[0] - patches[1]).abs().max())  # how far from a blank series
    assert seen["sample"] == 0.0  # every kept frame is blank
    assert seen["max"] > 1.0
