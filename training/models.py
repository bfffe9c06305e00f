"""The model and tokenizer a recipe starts from, and the model folder it ends with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from omni_core.configuration_omni import OmniConfig
from omni_core.modeling_omni import OmniForConditionalGeneration
from omni_core.tokenization import character_tokenizer, load_tokenizer
from training.config import ModelConfig

TRAINING_RECORD = "training.json"


def load_for_training(
    spec: ModelConfig, *, device: torch.device, seed: int
) -> tuple[OmniForConditionalGeneration, Any]:
    """(model in float32 on ``device``, tokenizer) as ``spec`` says; fresh parts are seeded."""
    if spec.base is not None:
        model = OmniForConditionalGeneration.from_pretrained(spec.base, dtype=torch.float32, device=device)
        return model.train(), load_tokenizer(spec.tokenizer or spec.base)
    config = OmniConfig.from_preset(spec.preset)
    torch.manual_seed(seed)
    if spec.llm or spec.whisper or spec.qwen2_vl:
        model = OmniForConditionalGeneration.from_components(
            config, llm=spec.llm, whisper=spec.whisper, qwen2_vl=spec.qwen2_vl, device=device
        )
    else:
        with torch.device(device):
            model = OmniForConditionalGeneration(config)
    tokenizer_folder = spec.tokenizer or spec.llm
    if tokenizer_folder is not None:
        tokenizer = load_tokenizer(tokenizer_folder)
    elif spec.preset == "tiny":
        tokenizer = character_tokenizer()
    else:
        raise ValueError(f"the {spec.preset} preset needs model.llm or model.tokenizer (its backbone's tokenizer)")
    return model.train(), tokenizer


def save_model_folder(
    model: OmniForConditionalGeneration,
    tokenizer: Any,
    folder: Path,
    record: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """A folder ``from_pretrained`` and the app load: config, weights, tokenizer, and what made it.

    ``state_dict``: the full weights when they live elsewhere (gathered from ZeRO-3 shards).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    (folder / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
