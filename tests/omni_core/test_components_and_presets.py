"""Initialising from pretrained Hugging Face folders; the released model's dimensions on the meta device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    WhisperForConditionalGeneration,
)
from typer.testing import CliRunner

from app.cli import cli
from omni_core import OmniConfig, OmniForConditionalGeneration
from omni_core.modeling_audio import whisper_config

QWEN25_7B_PARAMETERS = 7_615_616_512  # Qwen2.5-7B, as published (untied output layer)
QWEN2_VL_7B_VISION_PARAMETERS = 8_291_375_616 - 7_615_616_512  # Qwen2-VL-7B total minus its LLM


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random Hugging Face checkpoints whose shapes match the tiny preset's parts."""
    config = OmniConfig.from_preset("tiny")
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(3)
    text = config.text.hf_kwargs() | {"vocab_size": config.base_vocab_size}
    AutoModelForCausalLM.from_config(Qwen2Config(**text)).save_pretrained(root / "llm")
    WhisperForConditionalGeneration(whisper_config(config.audio)).save_pretrained(root / "whisper")
    vision = config.vision
    Qwen2VLForConditionalGeneration(
        Qwen2VLConfig(
            text_config={
                "vocab_size": 256,
                "hidden_size": config.text.hidden_size,
                "intermediate_size": 128,
                "num_hidden_layers": 1,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            },
            vision_config={
                "depth": vision.depth,
                "embed_dim": vision.embed_dim,
                "hidden_size": config.text.hidden_size,
                "num_heads": vision.num_heads,
                "mlp_ratio": int(vision.mlp_ratio),
            },
            image_token_id=250,
            video_token_id=251,
            vision_start_token_id=252,
            vision_end_token_id=253,
        )
    ).save_pretrained(root / "qwen2vl")
    return {"llm": root / "llm", "whisper": root / "whisper", "qwen2_vl": root / "qwen2vl"}


def test_from_components_copies_each_part(checkpoints: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    config = OmniConfig.from_preset("tiny")
    model = OmniForConditionalGeneration.from_components(config, **checkpoints)
    llm = load_file(str(checkpoints["llm"] / "model.safetensors"))
    embeddings = model.llm.get_input_embeddings().weight
    assert torch.equal(embeddings[: config.base_vocab_size], llm["model.embed_tokens.weight"])
    assert embeddings.shape[0] == config.text.vocab_size  # special-token rows added and kept
    whisper = load_file(str(checkpoints["whisper"] / "model.safetensors"))
    assert torch.equal(model.audio_tokenizer.encoder.conv1.weight, whisper["model.encoder.conv1.weight"])
    visual = load_file(str(checkpoints["qwen2_vl"] / "model.safetensors"))
    merger = visual.get("model.visual.merger.mlp.0.weight", visual.get("visual.merger.mlp.0.weight"))
    assert merger is not None and torch.equal(model.vision.tower.merger.mlp[0].weight, merger)


def test_from_components_refuses_a_mismatched_backbone(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    deeper = OmniConfig.from_preset("tiny")
    deeper.text.num_hidden_layers = 3  # the checkpoint has 2
    with pytest.raises(ValueError, match=r"num_hidden_layers is 2 in its config\.json, the omni config has 3"):
        OmniForConditionalGeneration.from_components(deeper, llm=checkpoints["llm"])
    other_rope = OmniConfig.from_preset("tiny")
    other_rope.text.rope_theta = 1_000_000.0
    with pytest.raises(ValueError, match="rope_theta"):
        OmniForConditionalGeneration.from_components(other_rope, llm=checkpoints["llm"])
    # without a config.json to compare, the tensors themselves must match, one for one
    bare = tmp_path / "bare"
    shutil.copytree(checkpoints["llm"], bare)
    (bare / "config.json").unlink()
    with pytest.raises(ValueError, match="lacks"):
        OmniForConditionalGeneration.from_components(deeper, llm=bare)
    shallower = OmniConfig.from_preset("tiny")
    shallower.text.num_hidden_layers = 1
    with pytest.raises(ValueError, match="has tensors the config does not"):
        OmniForConditionalGeneration.from_components(shallower, llm=bare)
    wider = OmniConfig.from_preset("tiny")
    wider.audio.encoder_layers = 3
    with pytest.raises(ValueError, match="the Whisper encoder: encoder_layers"):
        OmniForConditionalGeneration.from_components(wider, whisper=checkpoints["whisper"])


def test_from_components_loads_into_the_dtype_asked_for(checkpoints: dict[str, Path]) -> None:
    config = OmniConfig.from_preset("tiny")
    model = OmniForConditionalGeneration.from_components(config, **checkpoints, dtype=torch.bfloat16)
    floating = [p for p in model.parameters() if p.is_floating_point()]
    assert all(p.dtype == torch.bfloat16 for p in floating) and not any(p.is_meta for p in model.parameters())


def test_released_dimensions_on_the_meta_device() -> None:
    config = OmniConfig.from_preset("baichuan-omni-1.5-7b")
    with torch.device("meta"):
        model = OmniForConditionalGeneration(config)
    counts = model.parameter_counts()
    assert counts["llm"] == QWEN25_7B_PARAMETERS
    assert counts["vision"] + counts["projector"] == QWEN2_VL_7B_VISION_PARAMETERS
    assert len(model.audio_tokenizer.encoder.layers) == 32 and config.audio.d_model == 1280
    assert config.audio.num_mel_bins == 128 and config.audio.frame_rate == 12.5
    assert config.audio.codebook_sizes == (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024)
    assert [e.num_embeddings for e in model.audio_embedding.layers] == list(config.audio.codebook_sizes)
    assert len(model.audio_head.transformer.layers) == 3
    assert config.text.vocab_size == 152_064 and len(model.vision.tower.blocks) == 32
    assert all(p.is_meta for p in model.parameters())  # nothing was allocated


def test_released_config_file_agrees_with_the_preset() -> None:
    released = json.loads((Path(__file__).parents[2] / "omni_core" / "baichuan_omni_1_5_config.json").read_text())
    config = OmniConfig.from_preset("baichuan-omni-1.5-7b")
    assert released["hidden_size"] == config.text.hidden_size and released["vocab_size"] == config.text.vocab_size
    assert released["visual_config"]["depth"] == config.vision.depth
    assert released["audio_config"]["vq_config"]["codebook_sizes"] == list(config.audio.codebook_sizes)
    assert released["audio_config"]["audio_head_transformer_layers"] == config.speech.head_layers


def test_released_special_token_ids_are_those_of_the_packaged_release_file() -> None:
    released = json.loads((Path(__file__).parents[2] / "omni_core" / "baichuan_omni_1_5_config.json").read_text())
    ids = OmniConfig.from_preset("baichuan-omni-1.5-7b").special_token_ids
    named_by_release = {
        value
        for section in ("audio_config", "visual_config", "video_config")
        for key, value in released[section].items()
        if key.endswith("_token_id")
    }
    assert set(ids.values()) - {ids["audiogen_pad"]} == named_by_release  # every one mapped, none invented
    assert ids["audio_delim"] == released["audio_config"]["audio_delim_token_id"] == 151693
    assert ids["audiotext_pad"] == released["audio_config"]["audiotext_pad_token_id"]
    assert ids["image_line"] == released["visual_config"]["image_line_token_id"]
    assert ids["image_delimiter"] == released["visual_config"]["image_delimiter_token_id"]
    assert ids["video_pad"] == released["video_config"]["video_place_token_id"]
    assert ids["audiogen_pad"] == max(released["multimodal_special_token_list"]) + 1  # the release has none
    assert ids["audiogen_pad"] not in released["multimodal_special_token_list"]


def test_model_info_prints_exact_integers() -> None:
    result = CliRunner().invoke(cli, ["model-info", "--preset", "baichuan-omni-1.5-7b", "--json"])
    assert result.exit_code == 0, result.output
    parameters = json.loads(result.stdout)["parameters"]
    assert parameters["llm"] == QWEN25_7B_PARAMETERS and isinstance(parameters["total"], int)
    assert CliRunner().invoke(cli, ["model-info", "--preset", "huge"]).exit_code == 2


def test_presets_round_trip_through_json(tmp_path: Path) -> None:
    for name in ("tiny", "demo-cpu", "baichuan-omni-1.5-7b"):
        config = OmniConfig.from_preset(name)
        config.save(tmp_path / f"{name}.json")
        assert OmniConfig.load(tmp_path / f"{name}.json") == config
    with pytest.raises(ValueError, match="unknown preset"):
        OmniConfig.from_preset("gigantic")


def test_special_token_ids_must_be_distinct_and_beyond_the_text_vocabulary() -> None:
    ids = OmniConfig.from_preset("tiny").special_token_ids
    with pytest.raises(ValueError, match="distinct"):
        OmniConfig.from_preset("tiny").__class__(
            special_token_ids=ids | {"audio_pad": ids["image_pad"]}, base_vocab_size=128
        )
    with pytest.raises(ValueError, match="beyond the base vocabulary"):
        OmniConfig(special_token_ids=ids | {"audio_pad": 5}, base_vocab_size=128)
    released = OmniConfig.from_preset("baichuan-omni-1.5-7b")
    assert set(released.reserved_token_ids) == {151_683, 151_684, 151_685, 151_686, 151_687}
