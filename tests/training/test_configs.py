"""Every recipe YAML and DeepSpeed JSON loads; mistakes are errors that name the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omni_core.modeling_omni import PARTS
from training.config import (
    CONFIG_DIR,
    ConfigError,
    deepspeed_configs,
    load_deepspeed_config,
    load_recipe_config,
    recipe_configs,
)

PAPER_STAGES = {
    "1.1-image-text",
    "1.2-image-text",
    "2.1-audio",
    "2.2-image-audio",
    "3-omni",
    "4.1-omni-sft",
    "4.2-speech-sft",
}


def test_every_shipped_yaml_loads_and_says_what_trains() -> None:
    configs = [load_recipe_config(path) for path in recipe_configs()]
    stages = {c.stage for c in configs}
    assert stages >= PAPER_STAGES
    assert {"audio-tokenizer", "speech-decoder-flow", "medical-lora", "medical-full"} <= stages
    for config in configs:
        if config.recipe == "omni":
            assert set(config.trainable) == set(PARTS)
    by_stage = {c.stage: c for c in configs}
    assert [p for p, t in by_stage["1.1-image-text"].trainable.items() if t] == ["projector"]
    assert by_stage["4.1-omni-sft"].trainable["audio_head"] is False
    assert by_stage["medical-lora"].lora is not None


def test_every_deepspeed_json_loads() -> None:
    stages = {load_deepspeed_config(path)["zero_optimization"]["stage"] for path in deepspeed_configs()}
    assert stages == {2, 3}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"optim.lrr": 1.0}, "optim.lrr: unknown key"),
        ({"optimizer": {}}, "optimizer: unknown key"),
        ({"data.train": [{"path": "x.jsonl", "wieght": 2.0}]}, "data.train[0].wieght: unknown key"),
        ({"optim.lr": "1e-4"}, "optim.lr: expected a number"),
        ({"trainable.vison": True}, "unknown parts vison"),
        ({"losses": ["txt"]}, "losses"),
        ({"model.preset": "huge"}, "preset must be one of"),
    ],
)
def test_a_wrong_key_or_value_is_named(override: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        load_recipe_config(CONFIG_DIR / "stage1_1_image_text.yaml", override)


def test_a_stage_that_leaves_a_part_unsaid_is_refused(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "stage1_1_image_text.yaml").read_text().replace("  vision: false\n", "")
    (tmp_path / "stage.yaml").write_text(text)
    with pytest.raises(ConfigError, match="missing vision"):
        load_recipe_config(tmp_path / "stage.yaml")


def test_deepspeed_json_mistakes_are_named(tmp_path: Path) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comms": True}}))
    with pytest.raises(ConfigError, match=r"zero_optimization\.overlap_comms: unknown key"):
        load_deepspeed_config(path)
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4}))
    with pytest.raises(ConfigError, match="comes from the recipe"):
        load_deepspeed_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        load_deepspeed_config(path)
