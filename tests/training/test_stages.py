"""Each stage runs a few steps on the tiny preset: frozen parameters stay bit-identical, trained ones
change, losses are finite, and the run folder holds metrics, a loss curve and a loadable model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from omni_core import OmniForConditionalGeneration
from training.config import load_recipe_config, recipe_configs
from training.recipes.omni import OmniRecipe

from .conftest import metrics

OMNI_CONFIGS = [path for path in recipe_configs() if load_recipe_config(path).recipe == "omni"]


def _config(path: Path, data: Path, out: Path, **more: object):  # type: ignore[no-untyped-def]
    overrides = {
        "data.train": [{"path": str(data)}],
        "optim.max_steps": 2,
        "optim.warmup_steps": 0,
        "data.max_tokens": 512,
        "data.batch_size": 1,
        "optim.gradient_accumulation_steps": 1,
        "run.output_dir": str(out),
        "run.eval_every": 0,
        "run.save_every": 0,
        **more,
    }
    return load_recipe_config(path, overrides)


@pytest.mark.parametrize("config_path", OMNI_CONFIGS, ids=lambda p: p.stem)
def test_a_stage_trains_exactly_its_trainable_parts(
    config_path: Path, conversations_file: Path, tmp_path: Path
) -> None:
    cfg = _config(config_path, conversations_file, tmp_path / "run")
    recipe = OmniRecipe(cfg)
    recipe.setup()
    before = {name: p.detach().clone() for name, p in recipe.model.named_parameters()}
    trained = {name for name, p in recipe.model.named_parameters() if p.requires_grad}
    recipe.train()
    final = recipe.save_final()
    recipe.cleanup()
    assert trained, "a stage that trains nothing"
    for name, parameter in recipe.model.named_parameters():
        if name in trained:
            assert not torch.equal(parameter, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(parameter, before[name]), f"{name} is frozen in {cfg.stage} but changed"
    for part, trains in cfg.trainable.items():  # the YAML's word is what happened
        if cfg.lora is None and part not in ("speech_decoder",):
            assert any(n in trained for n, _ in _named(recipe.model, part)) == trains, part
    records = metrics(tmp_path / "run")
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert set(train[0]["losses"]) == set(cfg.losses)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = OmniForConditionalGeneration.from_pretrained(final)
    for name, tensor in loaded.state_dict().items():
        if "lora_" not in name and name in dict(recipe.model.named_parameters()) and cfg.lora is None:
            assert torch.equal(tensor, dict(recipe.model.named_parameters())[name].detach()), name


def _named(model: OmniForConditionalGeneration, part: str) -> list[tuple[str, torch.nn.Parameter]]:
    ids = {id(p) for p in model.part(part)}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def test_the_vocoder_recipe_trains_the_vocoder_alone_and_its_mel_loss_falls(
    conversations_file: Path, tmp_path: Path
) -> None:
    from training.config import CONFIG_DIR
    from training.recipes.vocoder import VocoderRecipe

    cfg = load_recipe_config(
        CONFIG_DIR / "vocoder.yaml",
        {
            "data.train": [{"path": str(conversations_file)}],
            "data.batch_size": 2,
            "optim.max_steps": 30,
            "optim.lr": 2.0e-3,
            "vocoder.discriminator_width": 2,
            "vocoder.segment_seconds": 0.2,
            "run.output_dir": str(tmp_path / "run"),
        },
    )
    recipe = VocoderRecipe(cfg)
    recipe.setup()
    before = {n: p.detach().clone() for n, p in recipe.model.named_parameters()}
    recipe.train()
    final = recipe.save_final()
    recipe.cleanup()
    for name, parameter in recipe.model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == name.startswith("speech_decoder.vocoder."), name
    mel = [r["losses"]["mel"] for r in metrics(tmp_path / "run")]
    assert sorted(mel[-5:])[2] < 0.8 * mel[0], mel
    loaded = OmniForConditionalGeneration.from_pretrained(final)
    vocoder = dict(recipe.model.speech_decoder.vocoder.named_parameters())
    for name, tensor in loaded.speech_decoder.vocoder.named_parameters():
        assert torch.equal(tensor, vocoder[name].detach())


def test_a_mixed_stage_trains_on_items_without_speech_and_unmerged_lora_leaves_a_loadable_base(
    conversations_file: Path, tmp_path: Path
) -> None:
    text_only = tmp_path / "text.jsonl"
    text_only.write_text(
        "".join(
            f'{{"messages": [{{"role": "user", "content": "q{i}"}}, {{"role": "assistant", "content": "a{i}"}}]}}\n'
            for i in range(6)
        )
    )
    config_path = next(p for p in OMNI_CONFIGS if p.stem == "stage3_omni")
    cfg = _config(config_path, conversations_file, tmp_path / "mixed", **{"optim.max_steps": 6})
    cfg.data.train.append(type(cfg.data.train[0])(str(text_only), 1.0))
    recipe = OmniRecipe(cfg)
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    train = [r for r in metrics(tmp_path / "mixed") if r["split"] == "train"]
    assert len(train) == 6 and {"text"} <= set().union(*(r["losses"] for r in train))

    lora_path = next(p for p in OMNI_CONFIGS if p.stem == "medical_lora")
    cfg = _config(lora_path, conversations_file, tmp_path / "lora", **{"lora.merge": False, "optim.max_steps": 1})
    recipe = OmniRecipe(cfg)
    recipe.setup()
    base = {n: p.detach().clone() for n, p in recipe.model.named_parameters() if "lora_" not in n}
    recipe.train()
    final = recipe.save_final()
    recipe.cleanup()
    loaded = OmniForConditionalGeneration.from_pretrained(final)  # the base weights, adapters beside
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()
    for name, tensor in loaded.named_parameters():
        key = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(tensor, base.get(name, base.get(key))), name
