"""Sampling (temperature, top-k, top-p) and every generation path on a CUDA device when there is one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni_core import DecodingOptions, OmniConfig, OmniForConditionalGeneration, OmniProcessor

from .conftest import conversation


def _draws(model: OmniForConditionalGeneration, logits: torch.Tensor, options: DecodingOptions) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    return {model._pick(logits.clone(), options, generator) for _ in range(300)}


def test_top_k_and_top_p_restrict_what_is_sampled(model: OmniForConditionalGeneration) -> None:
    logits = torch.tensor([4.0, 3.9, 3.8, 1.0, 0.9, 0.8, 0.7, 0.6])
    assert _draws(model, logits, DecodingOptions(temperature=1.0)) == set(range(8))  # everything, now and then
    assert _draws(model, logits, DecodingOptions(temperature=1.0, top_k=3)) == {0, 1, 2}
    assert _draws(model, logits, DecodingOptions(temperature=1.0, top_k=1)) == {0}
    # the three likeliest hold 93% of the mass: p = 0.8 keeps them (the one crossing p is kept)
    assert _draws(model, logits, DecodingOptions(temperature=1.0, top_p=0.8)) == {0, 1, 2}
    assert _draws(model, logits, DecodingOptions(temperature=1.0, top_p=0.01)) == {0}
    assert _draws(model, logits, DecodingOptions(temperature=0.0, top_k=5)) == {0}
    with pytest.raises(ValueError, match="top_p"):
        DecodingOptions(top_p=0.0)


def test_the_same_seed_samples_the_same_answer(model: OmniForConditionalGeneration) -> None:
    options = DecodingOptions(max_new_tokens=12, temperature=1.0, top_k=20, seed=7, speech=False)
    first = model.eval().generate(torch.tensor([[5, 6, 7]]), options=options).token_ids
    assert first == model.generate(torch.tensor([[5, 6, 7]]), options=options).token_ids
    placeholders = {model.ids[name] for name in ("image_pad", "video_pad", "audio_pad", "audiogen_pad")}
    assert not placeholders & set(first)  # the text head never writes a placeholder


needs_cuda = pytest.mark.gpu


@needs_cuda
def test_generation_runs_on_the_gpu_from_inputs_on_the_cpu(config: OmniConfig, processor: OmniProcessor) -> None:
    torch.manual_seed(0)
    cpu = OmniForConditionalGeneration(config).eval()
    gpu = OmniForConditionalGeneration(config).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda")
    inputs = processor(conversation(config)[:1], add_generation_prompt=True)  # every tensor on the CPU
    options = processor.decoding_options(
        DecodingOptions(max_new_tokens=10, max_audio_frames=4, seed=3, temperature=0.8, top_p=0.9)
    )
    result = gpu.generate(inputs.input_ids, options=options, **inputs.model_kwargs())
    assert result.token_ids and all(codes.device.type == "cuda" for codes in result.audio_codes)
    greedy = DecodingOptions(max_new_tokens=10, speech=False)
    assert (
        gpu.generate(inputs.input_ids, options=greedy, **inputs.model_kwargs()).token_ids
        == cpu.generate(inputs.input_ids, options=greedy, **inputs.model_kwargs()).token_ids
    )
    events = list(processor.stream(gpu, conversation(config)[:1], options=DecodingOptions(max_new_tokens=8, seed=0)))
    assert all(event.audio is None or event.audio.dtype.kind == "f" for event in events)


@needs_cuda
def test_training_forward_and_loading_on_the_gpu(config: OmniConfig, processor: OmniProcessor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    OmniForConditionalGeneration(config).save_pretrained(tmp_path)
    model = OmniForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.bfloat16, device="cuda").train()
    assert all(
        p.device.type == "cuda" and p.dtype == torch.bfloat16 for p in model.parameters() if p.is_floating_point()
    )
    output = model(**processor(conversation(config)).forward_kwargs())
    output.loss.backward()
    assert torch.isfinite(output.loss) and set(output.losses) >= {"text", "audio_head"}
