"""The omni model on the tiny preset: every modality through forward and backward, generation, parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from omni_core import DecodingOptions, OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.modeling_omni import PARTS

from .conftest import conversation, speech_codes


def _forward(model: OmniForConditionalGeneration, processor: OmniProcessor):  # type: ignore[no-untyped-def]
    return model(**processor(conversation(model.config)).forward_kwargs())


def test_every_modality_in_one_batch_forward_and_backward(
    model: OmniForConditionalGeneration, processor: OmniProcessor
) -> None:
    model.train()
    output = _forward(model, processor)
    assert set(output.losses) == {"text", "audio_head", "commitment", "mel_reconstruction"}
    assert all(torch.isfinite(loss) for loss in output.losses.values())
    assert output["loss"] is output.loss  # a transformers ModelOutput: keys and attributes
    output.loss.backward()
    for name in ("vision", "projector", "audio_embedding", "llm", "audio_head"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.part(name)), name


def test_loss_falls_over_a_few_steps_on_a_fixed_batch(
    model: OmniForConditionalGeneration, processor: OmniProcessor
) -> None:
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = _forward(model, processor).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_frozen_parts_get_no_gradient(model: OmniForConditionalGeneration, processor: OmniProcessor) -> None:
    model.set_trainable(
        vision=False, audio_tokenizer=False, llm=False, projector=True, audio_embedding=True, audio_head=True
    )  # stage 1.1-like plus the audio parts
    assert model.trainable_parts()["llm"] is False and model.trainable_parts()["projector"] is True
    model.train()
    _forward(model, processor).loss.backward()
    assert all(p.grad is None for name in ("vision", "audio_tokenizer", "llm") for p in model.part(name))
    assert any(p.grad is not None for p in model.part("projector"))
    with pytest.raises(ValueError, match="unknown parts"):
        model.set_trainable(retina=False)


def _span(config: OmniConfig, start_call: int, frames: int) -> dict[int, int]:
    """A schedule for ``_force_tokens``: open a speech span at ``start_call``, go on for ``frames``
    frames (the head says "another frame" after each), then end it."""
    special = config.special_token_ids
    schedule = {start_call: special["audiogen_start"]}
    schedule |= {start_call + 1 + i: special["audiogen_pad"] for i in range(frames)}
    schedule[start_call + 1 + frames] = special["audiogen_end"]
    return schedule


def _force_tokens(model: OmniForConditionalGeneration, schedule: dict[int, int]) -> None:
    """Make the LM head prefer a given token at given calls (to drive the speech path in tests)."""
    calls = {"n": 0}

    def hook(_module, _inputs, output):  # type: ignore[no-untyped-def]
        token = schedule.get(calls["n"])
        calls["n"] += 1
        if token is not None:
            output = output.clone()
            output[..., token] = output.abs().max() * 10 + 10  # generation projects the last state only
        return output

    model.llm.lm_head.register_forward_hook(hook)


@pytest.mark.parametrize("speech", [False, True])
def test_greedy_generation_with_the_cache_equals_without(config: OmniConfig, speech: bool) -> None:
    results = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        model = OmniForConditionalGeneration(config).eval()
        if speech:  # text, then a 3-frame spoken span, then text
            _force_tokens(model, _span(config, 1, 3))
        options = DecodingOptions(max_new_tokens=8, use_cache=use_cache, max_audio_frames=6)
        results.append(model.generate(torch.tensor([[5, 6, 7, 8]]), options=options))
    cached, uncached = results
    assert cached.token_ids == uncached.token_ids
    assert len(cached.audio_codes) == len(uncached.audio_codes) == (1 if speech else 0)
    for a, b in zip(cached.audio_codes, uncached.audio_codes, strict=True):
        assert torch.equal(a, b) and a.shape == (3, len(config.audio.codebook_sizes))


def test_streaming_gives_text_deltas_and_cross_faded_speech(config: OmniConfig, processor: OmniProcessor) -> None:
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).eval()
    _force_tokens(model, _span(config, 2, 6))
    events = list(
        processor.stream(
            model,
            conversation(config)[:1],
            audio_chunk_frames=3,
            speak_sentences=False,  # only the forced span: this test counts its frames
            options=DecodingOptions(max_new_tokens=6, max_audio_frames=20, seed=0),
        )
    )
    text = "".join(e.text for e in events)
    audio = [e.audio for e in events if e.audio is not None]
    assert text and len(audio) >= 2
    samples_per_frame = config.speech.sampling_rate / config.audio.frame_rate
    fade = int(0.01 * config.speech.sampling_rate)  # chunks overlap by a 10 ms cross-fade
    chunks = 2  # 6 frames in chunks of 3
    assert sum(len(a) for a in audio) == 6 * samples_per_frame - (chunks - 1) * fade  # no frame lost


def test_save_and_load_round_trip_is_bit_exact(model: OmniForConditionalGeneration, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"config.json", "model.safetensors"}
    loaded = OmniForConditionalGeneration.from_pretrained(tmp_path / "saved")
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert original.keys() == reloaded.keys()
    assert all(torch.equal(original[k], reloaded[k]) for k in original)
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model.eval().llm(input_ids=ids).logits, loaded.llm(input_ids=ids).logits)


def test_demo_preset_ties_embeddings_and_still_round_trips(tmp_path: Path) -> None:
    config = OmniConfig.from_preset("tiny")
    config.text.tie_word_embeddings = True
    model = OmniForConditionalGeneration(config)
    model.save_pretrained(tmp_path)
    loaded = OmniForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.get_input_embeddings().weight.data_ptr()
    assert torch.equal(loaded.llm.lm_head.weight, model.llm.lm_head.weight)


def test_decoding_options_are_frozen_and_checked() -> None:
    options = DecodingOptions()
    with pytest.raises(AttributeError):
        options.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        DecodingOptions(max_new_tokens=0)


def test_mismatched_placeholders_are_refused(model: OmniForConditionalGeneration, config: OmniConfig) -> None:
    ids = torch.tensor([[5, config.special_token_ids["audiogen_pad"], 6]])
    with pytest.raises(ValueError, match="audiogen_pad"):
        model(ids, speech_codes=speech_codes(config, 2))
    with pytest.raises(ValueError, match="image placeholders"):
        model(torch.tensor([[config.special_token_ids["image_pad"]]]))


def test_every_named_part_exists(model: OmniForConditionalGeneration) -> None:
    counts = model.parameter_counts()
    assert all(counts[name] > 0 for name in PARTS)
    assert counts["total"] == sum(counts[name] for name in PARTS)


def test_each_sentence_is_spoken_when_it_ends_and_not_at_a_decimal_point(
    config: OmniConfig, processor: OmniProcessor
) -> None:
    """The released demo's scheme: text to the sentence end, then a speech span, then on; the last
    sentence is spoken before the answer stops. "3.2" does not end a sentence."""
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).eval()
    special = config.special_token_ids
    text = processor.tokenizer.encode("It is 3.2 cm. No")
    sentence = len(processor.tokenizer.encode("It is 3.2 cm. "))  # a sentence is known to end at the next word
    # calls: the first sentence; "N" is replaced by a span of 2 frames (3 calls); then "No"; the
    # stop token is replaced by a span of 1 frame (2 calls); then the stop
    schedule = dict(enumerate(text[:sentence]))
    schedule[sentence] = text[sentence]  # "N" (dropped: the span opens instead)
    schedule |= {sentence + 1: special["audiogen_pad"], sentence + 2: special["audiogen_pad"]}
    schedule[sentence + 3] = special["audiogen_end"]
    after = sentence + 4
    schedule |= {after + i: token for i, token in enumerate(text[sentence:])}
    stop = after + len(text[sentence:])
    schedule |= {stop: 2, stop + 1: special["audiogen_pad"], stop + 2: special["audiogen_end"], stop + 3: 2}
    _force_tokens(model, schedule)
    options = processor.decoding_options(DecodingOptions(max_new_tokens=40, max_audio_frames=10))
    result = model.generate(torch.tensor([[5, 6, 7]]), options=options)
    start, end, frame = special["audiogen_start"], special["audiogen_end"], special["audiogen_pad"]
    assert result.token_ids == [*text[:sentence], start, frame, frame, end, *text[sentence:], start, frame, end, 2], (
        processor.tokenizer.decode(result.token_ids)
    )
    assert [codes.shape[0] for codes in result.audio_codes] == [2, 1]


@pytest.mark.parametrize(
    ("written", "next_text", "ends"),
    [
        ("The nodule measures 3.", "2 cm", False),
        ("Seen e.g. ", "in the left lobe", False),
        ("Reviewed by Dr. ", "Smith", False),
        ("No effusion. ", "The heart", True),
        ("Is it normal? ", "Yes", True),
        ("", "The", False),
    ],
)
def test_sentence_ends_are_decided_on_decoded_text(
    processor: OmniProcessor, written: str, next_text: str, ends: bool
) -> None:
    tokenizer = processor.tokenizer
    spoken, following = tokenizer.encode(written), tokenizer.encode(next_text)
    assert processor.sentence_boundary(spoken, following[0]) is ends


def test_an_answer_cut_by_its_budget_still_speaks_what_it_wrote(config: OmniConfig, processor: OmniProcessor) -> None:
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).eval()
    special = config.special_token_ids
    text = processor.tokenizer.encode("No")
    # calls: "N", "o" (the budget is spent), the span opens without a pick, 1 frame, end
    _force_tokens(model, {0: text[0], 1: text[1], 3: special["audiogen_pad"], 4: special["audiogen_end"]})
    options = processor.decoding_options(DecodingOptions(max_new_tokens=2, max_audio_frames=5))
    result = model.generate(torch.tensor([[5, 6, 7]]), options=options)
    assert result.token_ids == [*text, special["audiogen_start"], special["audiogen_pad"], special["audiogen_end"]]


def test_whitespace_left_at_the_end_is_not_spoken(config: OmniConfig, processor: OmniProcessor) -> None:
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).eval()
    space = processor.tokenizer.encode(" ")[0]
    _force_tokens(model, {0: space, 1: 2})  # " ", then the end of the turn
    options = processor.decoding_options(DecodingOptions(max_new_tokens=8, max_audio_frames=5))
    assert model.generate(torch.tensor([[5, 6, 7]]), options=options).token_ids == [space, 2]


def test_the_same_seed_gives_the_same_spoken_audio(config: OmniConfig, processor: OmniProcessor) -> None:
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).eval()
    waves = []
    for _ in range(2):
        model._forward_hooks.clear()
        model.llm.lm_head._forward_hooks.clear()
        _force_tokens(model, _span(config, 1, 3))
        events = processor.stream(
            model, conversation(config)[:1], speak_sentences=False, options=DecodingOptions(max_new_tokens=4, seed=5)
        )
        waves.append(np.concatenate([e.audio for e in events if e.audio is not None]))
    assert len(waves[0]) and np.array_equal(waves[0], waves[1])
