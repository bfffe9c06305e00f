"""Batches of conversations (the collator), audio at its own length, image token budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.modeling_audio import log_mel, silence_level
from omni_core.processing_omni import IGNORE, InputTooLong, Message, ModelInputs, OmniCollator, Part

from .conftest import conversation


def _conversations(config: OmniConfig) -> list[list[Message]]:
    return [
        conversation(config),  # images, audio, speech
        [
            Message("user", [Part("image", torch.rand(1, 1, 28, 56)), Part("text", "Any effusion?")]),
            Message("assistant", [Part("text", "None.")]),
        ],
    ]


def test_the_collator_pads_and_concatenates_in_conversation_order(config: OmniConfig, processor: OmniProcessor) -> None:
    items = [processor(messages) for messages in _conversations(config)]
    batch = OmniCollator(pad_token_id=0)(items)
    longest = max(item.input_ids.shape[1] for item in items)
    short = items[1].input_ids.shape[1]
    assert batch.input_ids.shape == batch.labels.shape == batch.attention_mask.shape == (2, longest)
    assert (batch.input_ids[1, short:] == 0).all() and (batch.labels[1, short:] == IGNORE).all()
    assert batch.attention_mask[1].sum() == short and batch.attention_mask[0].all()
    assert torch.equal(batch.pixel_patches, torch.cat([items[0].pixel_patches, items[1].pixel_patches]))
    assert batch.image_grid_thw.tolist() == items[0].image_grid_thw.tolist() + items[1].image_grid_thw.tolist()
    assert batch.speech_lengths == [4] and len(batch.audio_mel) == 1
    left = OmniCollator(pad_token_id=0, padding_side="left")(items)
    assert (left.input_ids[1, : longest - short] == 0).all() and torch.equal(
        left.input_ids[1, -short:], items[1].input_ids[0]
    )
    with pytest.raises(ValueError, match="empty batch"):
        OmniCollator(pad_token_id=0)([])


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_batch_gives_the_same_losses_as_its_conversations_one_by_one(
    model: OmniForConditionalGeneration, processor: OmniProcessor, side: str
) -> None:
    """Images in both conversations, audio and speech in one: each lands in its own placeholders."""
    model.eval()
    items = [processor(messages) for messages in _conversations(model.config)]
    batch = OmniCollator(pad_token_id=0, padding_side=side)(items)  # type: ignore[arg-type]
    with torch.no_grad():
        together = model(**batch.forward_kwargs(), losses=("text",)).loss
        alone = [model(**item.forward_kwargs(), losses=("text",)).loss for item in items]
        head_together = model(**batch.forward_kwargs(), losses=("audio_head",)).loss
        head_alone = model(**items[0].forward_kwargs(), losses=("audio_head",)).loss
    counts = [int((item.labels[0, 1:] != IGNORE).sum()) for item in items]
    weighted = sum(loss * n for loss, n in zip(alone, counts, strict=True))
    assert torch.allclose(together * sum(counts), weighted, atol=1e-4)
    assert torch.allclose(head_together, head_alone, atol=1e-5)


def test_left_padded_batches_predict_what_each_prompt_predicts_alone(
    model: OmniForConditionalGeneration, processor: OmniProcessor
) -> None:
    """Batched inference: positions follow the attention mask, so padding changes nothing."""
    model.eval()
    prompts = [
        processor([Message("user", [Part("text", text)])], add_generation_prompt=True)
        for text in ("Is the heart enlarged?", "Hi")
    ]
    batch = OmniCollator(pad_token_id=0, padding_side="left")(prompts)
    with torch.no_grad():
        batched = model(batch.input_ids, batch.attention_mask).logits[:, -1]
        alone = [model(item.input_ids, item.attention_mask).logits[0, -1] for item in prompts]
    for row, logits in zip(batched, alone, strict=True):
        assert torch.allclose(row, logits, atol=1e-4)


def test_audio_is_encoded_at_its_own_length(model: OmniForConditionalGeneration) -> None:
    """A 1 s question runs Whisper's layers over 1 s of frames, not over the 4 s window of the preset."""
    seen: list[int] = []
    model.audio_tokenizer.encoder.layers[0].register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].shape[1])
    )
    mel = torch.from_numpy(
        log_mel(np.random.default_rng(0).normal(0, 0.1, 16_000).astype(np.float32), model.config.audio)
    )
    codes = model.audio_codes([mel])
    assert codes.shape[0] == 13  # 100 mel frames = 13 tokens at 12.5 Hz
    assert seen == [13 * model.config.audio.avg_pooler]  # 52 encoder frames, against 200 for the window
    assert seen[0] < model.config.audio.max_source_positions


def test_padding_is_whispers_own_silence() -> None:
    """The tokenizer pads a clip with the value Whisper's feature extractor gives digital silence."""
    audio = OmniConfig.from_preset("demo-cpu").audio
    rng = np.random.default_rng(0)
    for loudness in (0.1, 1e-4):  # a loud clip (level set by its maximum) and a quiet one (the floor)
        samples = np.concatenate([rng.normal(0, loudness, 16_000), np.zeros(8_000)]).astype(np.float32)
        mel = torch.from_numpy(log_mel(samples, audio))
        tail = mel[:, -30:]  # frames of pure silence
        speech = (torch.arange(mel.shape[-1]) < 100)[None]  # the level comes from the clip's own frames
        assert torch.allclose(tail, silence_level(mel[None], speech).expand_as(tail))


def test_series_frames_are_sampled_before_resizing(config: OmniConfig, processor: OmniProcessor, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    resized: list[int] = []
    interpolate = torch.nn.functional.interpolate

    def spy(pixels: torch.Tensor, **kwargs: object) -> torch.Tensor:
        resized.append(pixels.shape[1])  # (C, D, H, W): D frames resized
        return interpolate(pixels, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    series = torch.rand(1, 60, 50, 50)  # 60 slices, sides not multiples of 28
    inputs = processor([Message("user", [Part("image", series)])])
    assert resized == [config.vision.max_frames]
    assert inputs.image_grid_thw.tolist() == [[config.vision.max_frames // 2, 4, 4]]


def test_inputs_beyond_the_backbones_context_are_refused_with_the_numbers(processor: OmniProcessor) -> None:
    config = processor.config
    config.text.max_position_embeddings = 40
    series = torch.rand(1, 4, 112, 112)  # 2 temporal patches x 16 merged patches = 32 tokens
    small = OmniProcessor(config, processor.tokenizer)
    small([Message("user", [Part("image", series[:, :2, :56, :56])])])  # 4 tokens fit
    config.text.max_position_embeddings = 20
    with pytest.raises(InputTooLong, match="needs 32 tokens; the model's context holds 20"):
        OmniProcessor(config, processor.tokenizer)([Message("user", [Part("image", series)])])
    with pytest.raises(InputTooLong, match="conversation needs"):
        OmniProcessor(config, processor.tokenizer)([Message("user", [Part("text", "x" * 30)])])


def test_model_inputs_name_every_forward_argument(config: OmniConfig, processor: OmniProcessor) -> None:
    inputs: ModelInputs = processor(conversation(config))
    import inspect

    accepted = set(inspect.signature(OmniForConditionalGeneration.forward).parameters)
    assert set(inputs.forward_kwargs()) <= accepted
