"""LoRA adapters (peft) on any part of the omni model: added, saved, loaded, merged for serving.

peft's ``inject_adapter_in_model`` works on any ``nn.Module``, so the adapters go straight into the
composed model, part by part (the LLM, the vision tower, the Whisper encoder, the audio head, the
speech decoder), on the linear layers named in ``targets``. Adapter files hold the adapter weights
and the settings that made them; base weights stay where they are (a hospital ships megabytes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from omni_core.modeling_omni import PARTS, OmniForConditionalGeneration

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "qkv", "proj")
"""Attention projections by their names in every part: the LLM and Whisper (q/k/v/o, out_proj), the
Qwen2-VL vision blocks (fused qkv, proj) and the speech transformers (q/k/v/o)."""


@dataclass(frozen=True)
class LoraSettings:
    """Where the adapters go and how big they are."""

    parts: tuple[str, ...] = ("llm",)
    """Parts to adapt (``PARTS``)."""
    r: int = 16
    """Rank of each adapter."""
    alpha: int = 32
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    targets: tuple[str, ...] = ATTENTION_PROJECTIONS
    """Names of the linear layers to adapt (the last part of a module's name); ("all",) takes every
    linear layer of the parts. The LM head is never adapted (it may be tied to the embeddings)."""
    modules: tuple[str, ...] = field(default=())
    """Filled in by ``add_lora``: the full names of the adapted layers."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "modules", tuple(self.modules))
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ValueError(f"LoRA parts must be among {', '.join(PARTS)} (got {sorted(unknown) or 'none'})")
        if self.r < 1 or self.alpha < 1 or not 0 <= self.dropout < 1:
            raise ValueError("LoRA needs r >= 1, alpha >= 1 and 0 <= dropout < 1")


def _part_prefixes(part: str) -> tuple[str, tuple[str, ...]]:
    """(prefix of the part's module names, prefixes inside it that belong to another part)."""
    if part == "vision":
        return "vision.tower.", ("vision.tower.merger.",)
    if part == "projector":
        return "vision.tower.merger.", ()
    return f"{part}.", ()


def lora_targets(model: OmniForConditionalGeneration, settings: LoraSettings) -> list[str]:
    """Full names of the linear layers ``settings`` adapts."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
            continue
        for part in settings.parts:
            prefix, excluded = _part_prefixes(part)
            if name.startswith(prefix) and not name.startswith(excluded or ("\0",)):
                if "all" in settings.targets or name.rsplit(".", 1)[-1] in settings.targets:
                    names.append(name)
                break
    return names


def add_lora(model: OmniForConditionalGeneration, settings: LoraSettings) -> LoraSettings:
    """Add adapters in place; only adapter weights stay trainable. Returns the settings with
    ``modules`` filled in (what ``save_lora`` records)."""
    from peft import LoraConfig, inject_adapter_in_model

    if getattr(model, "peft_config", None):
        raise ValueError("this model already has LoRA adapters: merge or drop them first")
    modules = lora_targets(model, settings)
    if not modules:
        raise ValueError(f"no linear layer named {', '.join(settings.targets)} in {', '.join(settings.parts)}")
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=modules)
    inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return dataclasses.replace(settings, modules=tuple(modules))


def save_lora(model: OmniForConditionalGeneration, settings: LoraSettings, directory: str | os.PathLike[str]) -> None:
    """The adapter weights and their settings (``adapter_model.safetensors``, ``adapter_config.json``)."""
    from peft import get_peft_model_state_dict

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous() for name, tensor in get_peft_model_state_dict(model).items()}
    save_file(state, str(directory / ADAPTER_WEIGHTS), metadata={"format": "pt", "omniclinic": "lora"})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(dataclasses.asdict(settings), indent=2) + "\n", encoding="utf-8")


def load_lora(model: OmniForConditionalGeneration, directory: str | os.PathLike[str]) -> LoraSettings:
    """Add the adapters saved in ``directory`` to ``model`` (the base they were trained on).

    Everything is checked before the model is touched: the adapted layers must be this model's, and
    the file must hold exactly their adapter matrices (an adapter file never writes a base weight).
    A refused load leaves the model as it was.
    """
    from peft import set_peft_model_state_dict

    directory = Path(directory)
    try:
        settings = LoraSettings(**json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"no readable {ADAPTER_CONFIG} in {directory} ({type(exc).__name__})") from None
    if tuple(lora_targets(model, settings)) != settings.modules:
        raise ValueError("the adapters were trained on a model with other layers than this one")
    weights = load_file(str(directory / ADAPTER_WEIGHTS))
    expected = {}
    for name in settings.modules:
        layer = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (settings.r, layer.in_features)
        expected[f"{name}.lora_B.weight"] = (layer.out_features, settings.r)
    unexpected = sorted(set(weights) - set(expected))
    if unexpected or set(expected) - set(weights):
        raise ValueError(
            f"the adapter file does not hold exactly the adapters its config names "
            f"({len(unexpected)} other tensors, e.g. {unexpected[:1]})"
        )
    misshapen = [name for name, shape in expected.items() if tuple(weights[name].shape) != shape]
    if misshapen:
        raise ValueError(f"adapter {misshapen[0]} has the wrong shape for rank {settings.r}")
    add_lora(model, dataclasses.replace(settings, modules=()))
    set_peft_model_state_dict(model, weights)
    return settings


def merge_lora(model: OmniForConditionalGeneration) -> None:
    """Fold every adapter into its base layer and remove it: plain layers, as fast as before LoRA."""
    _unwrap(model, merge=True)


def remove_lora(model: OmniForConditionalGeneration) -> None:
    """Drop every adapter, leaving the base layers as they were (and trainable again)."""
    _unwrap(model, merge=False)
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def _unwrap(model: OmniForConditionalGeneration, *, merge: bool) -> None:
    from peft.tuners.lora import LoraLayer

    adapted = [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for name, module in adapted:
        if merge:
            module.merge()
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
