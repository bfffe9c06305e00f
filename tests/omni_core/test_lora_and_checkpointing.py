"""LoRA adapters on every part (saved, loaded, merged) and gradient checkpointing across parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.lora import LoraSettings, add_lora, load_lora, merge_lora, save_lora

from .conftest import conversation

EVERY_PART = ("vision", "audio_tokenizer", "llm", "audio_head", "speech_decoder")


def _outputs(model: OmniForConditionalGeneration, processor: OmniProcessor) -> dict[str, torch.Tensor]:
    """What each adapted part computes: text logits (vision, audio, LLM), head logits, flow velocity."""
    inputs = processor(conversation(model.config))
    with torch.no_grad():
        output = model(**inputs.forward_kwargs(), losses=("text",), return_logits=True)
        codes = inputs.speech_codes[None]
        flow = model.speech_decoder.flow
        condition = flow.condition(codes)
        velocity = flow.velocity(torch.ones_like(condition), torch.full((1,), 0.5), condition)
        head = model.audio_head.logits(output.last_hidden_state[0, :4], inputs.speech_codes[:4])[0]
    return {"logits": output.logits, "velocity": velocity, "head": head}


def _fresh(config: OmniConfig) -> OmniForConditionalGeneration:
    torch.manual_seed(0)
    return OmniForConditionalGeneration(config).eval()


def test_lora_on_every_part_trains_saves_loads_and_merges(
    config: OmniConfig, processor: OmniProcessor, tmp_path: Path
) -> None:
    model = _fresh(config)
    before = _outputs(model, processor)
    settings = add_lora(model, LoraSettings(parts=EVERY_PART, r=4, alpha=8, dropout=0.0))
    assert {name.split(".")[0] for name in settings.modules} == set(EVERY_PART)
    assert any(".attn.q_proj" in name for name in settings.modules if name.startswith("speech_decoder"))
    assert any(name.endswith(".qkv") for name in settings.modules)  # Qwen2-VL's fused projection
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert all(torch.equal(before[k], v) for k, v in _outputs(model, processor).items())  # B starts at zero

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        inputs = processor(conversation(config)).forward_kwargs()
        model(**inputs, losses=("text", "audio_head")).loss.backward()
        flow = model(speech_codes=inputs["speech_codes"], speech_lengths=[4], speech_mel=[torch.randn(32, 16)])
        flow.loss.backward()
        optimizer.step()
    model.eval()
    adapted = _outputs(model, processor)
    assert all(not torch.allclose(before[k], adapted[k]) for k in adapted)

    save_lora(model, settings, tmp_path / "adapter")
    assert sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir()) < 0.2 * sum(
        p.numel() * 4 for p in model.parameters() if not p.requires_grad
    )
    reloaded = _fresh(config)
    load_lora(reloaded, tmp_path / "adapter")
    assert all(torch.allclose(adapted[k], v, atol=1e-6) for k, v in _outputs(reloaded.eval(), processor).items())

    merge_lora(reloaded)
    from peft.tuners.lora import LoraLayer

    assert not any(isinstance(module, LoraLayer) for module in reloaded.modules())
    assert all(torch.allclose(adapted[k], v, atol=1e-4) for k, v in _outputs(reloaded, processor).items())
    reloaded.save_pretrained(tmp_path / "merged")  # a plain model again, for serving
    served = OmniForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert all(torch.allclose(adapted[k], v, atol=1e-4) for k, v in _outputs(served, processor).items())


def test_an_adapter_file_never_writes_a_base_weight_and_a_refused_load_changes_nothing(
    config: OmniConfig, tmp_path: Path
) -> None:
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file, save_file

    model = _fresh(config)
    settings = add_lora(model, LoraSettings(parts=("llm",), r=2))
    save_lora(model, settings, tmp_path)
    adapter = tmp_path / "adapter_model.safetensors"
    weights = load_file(str(adapter))

    def refused(target: OmniForConditionalGeneration, message: str) -> None:
        before = {name: p.clone() for name, p in target.state_dict().items()}
        trainable = {name for name, p in target.named_parameters() if p.requires_grad}
        with pytest.raises(ValueError, match=message):
            load_lora(target, tmp_path)
        assert not any(isinstance(module, LoraLayer) for module in target.modules())
        assert not hasattr(target, "peft_config")
        assert {name for name, p in target.named_parameters() if p.requires_grad} == trainable
        assert all(torch.equal(before[name], value) for name, value in target.state_dict().items())

    save_file(weights | {"llm.model.norm.weight": torch.full((64,), 7.0)}, str(adapter))  # a base weight smuggled in
    refused(_fresh(config), "exactly the adapters")
    save_file({k: v for k, v in weights.items() if "layers.1" not in k}, str(adapter))
    refused(_fresh(config), "exactly the adapters")
    save_file({k: v.repeat(2, 1) if "lora_A" in k else v for k, v in weights.items()}, str(adapter))
    refused(_fresh(config), "wrong shape")
    save_file(weights, str(adapter))
    other = OmniConfig.from_preset("tiny")
    other.text.num_hidden_layers = 3
    refused(OmniForConditionalGeneration(other), "other layers")
    loaded = _fresh(config)
    load_lora(loaded, tmp_path)  # the untouched file still loads
    assert sum(isinstance(module, LoraLayer) for module in loaded.modules()) == len(settings.modules)
    with pytest.raises(ValueError, match="LoRA parts"):
        LoraSettings(parts=("retina",))
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model, LoraSettings())


def test_gradient_checkpointing_recomputes_every_part_and_changes_no_gradient(
    config: OmniConfig, processor: OmniProcessor
) -> None:
    # a linear layer inside the first block of each part: it runs again when the block is recomputed
    layers = {
        "llm": lambda m: m.llm.model.layers[0].mlp.down_proj,
        "vision": lambda m: m.vision.tower.blocks[0].attn.qkv,
        "whisper": lambda m: m.audio_tokenizer.encoder.layers[0].fc1,
        "mel decoder": lambda m: m.audio_tokenizer.decoder.transformer.layers[0].fc1,
        "audio head": lambda m: m.audio_head.transformer.layers[0].fc1,
        "flow": lambda m: m.speech_decoder.flow.estimator.layers[0].fc1,
    }
    gradients, calls = [], []
    for checkpointing in (False, True):
        model = _fresh(config).train()
        model.speech_decoder.flow.speech = type(config.speech)(**{**vars(config.speech), "training_cfg_rate": 0.0})
        if checkpointing:
            model.gradient_checkpointing_enable()
        counts = dict.fromkeys(layers, 0)
        for name, layer in layers.items():
            layer(model).register_forward_pre_hook(
                lambda *_, name=name, seen=counts: seen.__setitem__(name, seen[name] + 1)
            )
        inputs = processor(conversation(config)).forward_kwargs()
        torch.manual_seed(1)
        output = model(**inputs | {"speech_mel": [torch.randn(32, config.speech.mel_bins)]})
        assert {"text", "audio_head", "mel_reconstruction", "flow"} <= set(output.losses)
        output.loss.backward()
        calls.append(counts)
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert all(count == 1 for count in calls[0].values()), calls[0]
    assert all(count == 2 for count in calls[1].values()), calls[1]  # forward, then again in backward
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-5) for n in plain)
