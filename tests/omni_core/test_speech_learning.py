"""The speech path learns: span lengths, frame order, the flow decoder, the tokenizer, the vocoder."""

from __future__ import annotations

import pytest
import torch

from omni_core import DecodingOptions, OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.modeling_audio import AudioTokenizer
from omni_core.modeling_layers import Transformer
from omni_core.modeling_speech_decoder import FlowMatchingDecoder, build_vocoder
from omni_core.processing_omni import Message, OmniCollator, Part

from .conftest import speech_codes

SPAN_LENGTHS = {"a": 2, "b": 5, "c": 8}


def _spoken_answers(config: OmniConfig) -> dict[str, list[Message]]:
    return {
        prompt: [
            Message("user", [Part("text", prompt)]),
            Message("assistant", [Part("text", "ok"), Part("speech", speech_codes(config, frames, seed=index))]),
        ]
        for index, (prompt, frames) in enumerate(SPAN_LENGTHS.items())
    }


def test_a_trained_model_ends_each_speech_span_at_its_trained_length(
    config: OmniConfig, processor: OmniProcessor
) -> None:
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).train()
    conversations = _spoken_answers(config)
    batch = OmniCollator(pad_token_id=0)([processor(messages) for messages in conversations.values()])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(120):
        optimizer.zero_grad()
        output = model(**batch.forward_kwargs(), losses=("text", "audio_head"))
        output.loss.backward()
        optimizer.step()
    model.eval()
    special = config.special_token_ids
    for prompt, frames in SPAN_LENGTHS.items():
        inputs = processor(conversations[prompt][:1], add_generation_prompt=True)
        options = processor.decoding_options(
            DecodingOptions(max_new_tokens=12, max_audio_frames=20), speak_sentences=False
        )
        result = model.generate(inputs.input_ids, options=options)
        assert special["audiogen_start"] in result.token_ids, (prompt, result.token_ids)
        spoken = [codes.shape[0] for codes in result.audio_codes]
        assert len(spoken) == 1 and abs(spoken[0] - frames) <= 1, (prompt, spoken, frames)


def _permutation_changes_more_than_order(module: torch.nn.Module, inputs: torch.Tensor) -> bool:
    """True when permuting the frames of ``inputs`` does not merely permute the output."""
    permutation = torch.randperm(inputs.shape[1], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = module(inputs)
        permuted = module(inputs[:, permutation])
    return not torch.allclose(permuted, out[:, permutation], atol=1e-5)


def test_frame_order_matters_in_every_speech_transformer(config: OmniConfig) -> None:
    torch.manual_seed(0)
    width = 32
    frames = torch.randn(1, 12, width)
    assert _permutation_changes_more_than_order(Transformer(width, 2, 64, 1).eval(), frames)

    flow = FlowMatchingDecoder(config.speech, config.audio).eval()
    mel = torch.randn(1, 12, config.speech.mel_bins)
    t = torch.full((1,), 0.5)
    condition = torch.randn(1, 12, config.speech.mel_bins)
    assert _permutation_changes_more_than_order(lambda x: flow.velocity(x, t, condition[:, : x.shape[1]]), mel)

    # the prenet's conditions: codes in another order are not the same conditions reordered, and the
    # mel frames under one code differ from each other
    codes = speech_codes(config, 6)[None]
    up = flow.upsample
    with torch.no_grad():
        conditions = flow.condition(codes)  # (1, 6 * up, mel)
        swapped = flow.condition(codes[:, [1, 0, 2, 3, 4, 5]])
    reordered = torch.cat([conditions[:, up : 2 * up], conditions[:, :up], conditions[:, 2 * up :]], dim=1)
    assert not torch.allclose(swapped, reordered, atol=1e-5)
    under_one_code = conditions[0, :up]
    assert not torch.allclose(under_one_code[0], under_one_code[1], atol=1e-5)

    decoder = AudioTokenizer(config.audio).decoder.eval()
    quantized = torch.randn(1, 6, config.audio.d_model)
    assert _permutation_changes_more_than_order(decoder.transformer, quantized)


def test_the_flow_loss_trains_the_speech_decoder_on_target_mel(config: OmniConfig) -> None:
    """Codes with a target mel per span: the flow and prenet losses come by name and fall."""
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).train()
    up = model.speech_decoder.flow.upsample
    codes = [speech_codes(config, 3, seed=1), speech_codes(config, 5, seed=2)]
    mels = [torch.randn(3 * up, config.speech.mel_bins), torch.randn(5 * up - 2, config.speech.mel_bins)]
    optimizer = torch.optim.AdamW(model.speech_decoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        output = model(speech_codes=torch.cat(codes), speech_lengths=[3, 5], speech_mel=mels)
        assert set(output.losses) == {"flow", "flow_prenet"}
        output.loss.backward()
        optimizer.step()
        losses.append(output.losses["flow_prenet"].item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(p.grad is None for p in model.llm.parameters())  # a flow-only step never runs the LLM
    with pytest.raises(ValueError, match="mel targets"):
        model(speech_codes=torch.cat(codes), speech_lengths=[3, 5], speech_mel=mels[:1])


def test_the_tokenizer_reconstructs_mel_and_codes_do_not_depend_on_the_batch(config: OmniConfig) -> None:
    torch.manual_seed(0)
    tokenizer = AudioTokenizer(config.audio).train()
    long, short = torch.randn(config.audio.num_mel_bins, 100), torch.randn(config.audio.num_mel_bins, 37)
    batch = torch.stack([long, torch.nn.functional.pad(short, (0, 63), value=5.0)])  # the pad value must not matter
    output = tokenizer(batch, torch.tensor([100, 37]), reconstruct=True)
    assert output.reconstructed_mel.shape == (2, config.audio.num_mel_bins, 100)
    assert torch.isfinite(output.mel_loss) and torch.isfinite(output.commit_loss)
    output.mel_loss.backward()
    assert tokenizer.decoder.to_mel.weight.grad is not None
    tokenizer.eval()
    alone = tokenizer.encode(short[None])[0]
    batched = tokenizer.encode(batch, torch.tensor([100, 37]))[1]
    assert alone.shape == (5, config.audio.num_quantizers)  # 37 mel frames = 5 tokens at 12.5 Hz
    assert torch.equal(batched[:5], alone) and (batched[5:] == -1).all()


def test_the_vocoder_makes_hop_length_samples_per_mel_frame(config: OmniConfig) -> None:
    vocoder = build_vocoder(config.speech).eval()
    with torch.no_grad():
        wave = vocoder(torch.randn(1, 7, config.speech.mel_bins))
    assert wave.reshape(-1).shape[0] == 7 * config.speech.hop_length
    model = OmniForConditionalGeneration(config).eval()
    wave = model.speech_decoder(speech_codes(config, 3)[None])
    samples_per_code = config.speech.sampling_rate / config.audio.frame_rate
    assert wave.shape == (1, int(3 * samples_per_code))
