"""A model folder that stores only what was trained: the pretrained parts come from their packages.

The default model's backbone (SmolLM2-135M, 540 MB in float32) and audio encoder (Whisper tiny.en)
install offline as packages; training left them frozen and added LoRA adapters to the backbone. So
the folder holds the trained parts (vision encoder, projector, the audio tokenizer's codebooks, the
audio embedding) and the adapters in float16, and ``components.json``, which names the pretrained
parts (the tokenizer is the LLM's, from its package). Loading rebuilds the model from those
packages exactly as training did (``from_components``), puts the trained parts in place and merges
the adapters: the same weights as the merged training result, from a folder of a few tens of
megabytes that can be committed.

``load_model_folder`` loads this kind of folder and the full kind (``save_pretrained``) alike.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from omni_core.configuration_omni import OmniConfig
from omni_core.loading import CheckpointError
from omni_core.modeling_omni import CONFIG_NAME, OmniForConditionalGeneration

COMPONENTS = "components.json"
PARTS_WEIGHTS = "trained_parts.safetensors"
ADAPTER_FOLDER = "adapter"
KNOWN_COMPONENTS = {"llm": ("smollm2-135m-instruct",), "whisper": ("tiny.en",)}
"""What ``components.json`` may name: packages that install offline (``omni_core.backbones``,
``omni_core.speech.asr``), never a path or a hub name."""


def save_trained_parts(
    model: OmniForConditionalGeneration,
    folder: Path,
    *,
    prefixes: tuple[str, ...],
    components: dict[str, str],
    adapter: Path | None,
) -> int:
    """Write the parameters under ``prefixes`` (float16), the adapter folder's files and
    ``components.json`` into ``folder``. Returns the bytes of weights written."""
    for name, value in components.items():
        if value not in KNOWN_COMPONENTS.get(name, ()):
            raise ValueError(f"components: {name}={value!r} is not a packaged part")
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_NAME)
    state = {  # parameters only (buffers are rebuilt as training built them); a layer that carries
        # adapters stores its base weight under the plain layer's name
        name.replace(".base_layer.", "."): tensor.detach().to(torch.float16).contiguous()
        for name, tensor in model.named_parameters()
        if name.startswith(prefixes) and "lora_" not in name
    }
    if not state:
        raise ValueError("no parameter matches the trained parts' prefixes")
    save_file(state, str(folder / PARTS_WEIGHTS), metadata={"format": "pt", "omniclinic": "trained-parts"})
    written = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    if adapter is not None:  # the adapters in float16 too, beside their settings
        from omni_core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

        target = folder / ADAPTER_FOLDER
        target.mkdir(exist_ok=True)
        (target / ADAPTER_CONFIG).write_bytes((adapter / ADAPTER_CONFIG).read_bytes())
        adapters = {k: v.to(torch.float16).contiguous() for k, v in load_file(str(adapter / ADAPTER_WEIGHTS)).items()}
        save_file(adapters, str(target / ADAPTER_WEIGHTS), metadata={"format": "pt", "omniclinic": "lora"})
        written += sum(tensor.numel() * tensor.element_size() for tensor in adapters.values())
    record = {"components": components, "trained_prefixes": list(prefixes)}
    (folder / COMPONENTS).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return written


def is_parts_folder(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / COMPONENTS).is_file()


def component_folders(names: dict[str, str], cache_dir: Path) -> dict[str, Path]:
    """The packaged parts as Hugging Face folders, made once into ``cache_dir``."""
    folders: dict[str, Path] = {}
    for name, value in names.items():
        if value not in KNOWN_COMPONENTS.get(name, ()):
            raise CheckpointError(f"components.json names {name}={value!r}, which is not a packaged part")
        if name == "llm":
            from omni_core.backbones import smollm2_folder

            folders[name] = smollm2_folder(cache_dir)
        else:
            folders[name] = whisper_tiny_folder(cache_dir)
    return folders


def whisper_tiny_folder(cache_dir: Path) -> Path:
    """Whisper tiny.en (its faster-whisper package) converted once into a transformers folder."""
    from omni_core.speech.asr import resolve_model
    from omni_core.whisper_ct2 import convert_ct2_whisper

    target = cache_dir / "whisper-tiny.en"
    if not target.exists():
        with contextlib.suppress(FileExistsError):  # another process converted it meanwhile
            convert_ct2_whisper(resolve_model("tiny.en", cache_dir), target)  # appears whole or not at all
    return target


def load_model_folder(
    folder: str | os.PathLike[str], cache_dir: Path, *, dtype: torch.dtype = torch.float32
) -> tuple[OmniForConditionalGeneration, Any]:
    """(model in eval mode, tokenizer) from a full model folder or a trained-parts folder.

    Raises:
        CheckpointError: the folder is malformed, names an unknown component, or its weights do not
            fit its config.
    """
    from omni_core.tokenization import load_tokenizer

    folder = Path(folder)
    if not is_parts_folder(folder):
        return OmniForConditionalGeneration.from_pretrained(folder, dtype=dtype), load_tokenizer(folder)
    try:
        record = json.loads((folder / COMPONENTS).read_text(encoding="utf-8"))
        names = {str(k): str(v) for k, v in record["components"].items()}
        prefixes = tuple(str(p) for p in record["trained_prefixes"])
        config = OmniConfig.load(folder / CONFIG_NAME)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{folder.name} is not a readable trained-parts folder ({type(exc).__name__})") from None
    sources = component_folders(names, cache_dir)
    torch.manual_seed(0)  # parts neither packaged nor trained (the speech head) start as training's did
    model = OmniForConditionalGeneration.from_components(config, llm=sources.get("llm"), whisper=sources.get("whisper"))
    stored = load_file(str(folder / PARTS_WEIGHTS))
    expected = {name for name, _ in model.named_parameters() if name.startswith(prefixes)}
    if set(stored) != expected:
        extra, missing = sorted(set(stored) - expected), sorted(expected - set(stored))
        raise CheckpointError(f"trained parts do not fit the config ({len(extra)} unexpected, {len(missing)} missing)")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name in stored:
                if tensor.shape != stored[name].shape:
                    raise CheckpointError(f"trained part {name} has the wrong shape")
                tensor.copy_(stored[name])
    if (folder / ADAPTER_FOLDER).is_dir():
        from omni_core.lora import load_lora, merge_lora

        load_lora(model, folder / ADAPTER_FOLDER)
        merge_lora(model)
    model.to(dtype)
    return model.eval(), load_tokenizer(sources.get("llm", folder))  # the LLM's own tokenizer, from its package


# -- the speech recognizer adapted with the model ---------------------------------------------------------
RECOGNIZER_FOLDER = "recognizer"
RECOGNIZER_WEIGHTS = "decoder_layers.safetensors"
RECOGNIZER_RECORD = "recognizer.json"
DECODER_PREFIXES = ("model.decoder.layers.", "model.decoder.layer_norm.")


def save_recognizer_delta(hf_folder: Path, folder: Path, record: dict[str, Any], cache_dir: Path) -> int:
    """The decoder-layer tensors that fine-tuning Whisper tiny.en (embeddings frozen) changed, in
    float16, with ``record`` (its word error rates), into ``folder/recognizer``. Returns the bytes written."""
    tuned = load_file(str(next(iter(sorted(hf_folder.glob("*.safetensors"))))))
    base = load_file(str(whisper_tiny_folder(cache_dir) / "model.safetensors"))
    state = {  # the decoder tensors training changed
        k: v.to(torch.float16).contiguous()
        for k, v in tuned.items()
        if k.startswith(DECODER_PREFIXES) and (k not in base or not torch.equal(v.to(base[k].dtype), base[k]))
    }
    if not state:
        raise ValueError("no decoder layers in the fine-tuned recognizer")
    target = folder / RECOGNIZER_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, str(target / RECOGNIZER_WEIGHTS), metadata={"format": "pt", "omniclinic": "recognizer-delta"})
    (target / RECOGNIZER_RECORD).write_text(json.dumps({"base": "tiny.en"} | record, indent=2) + "\n", encoding="utf-8")
    return sum(tensor.numel() * tensor.element_size() for tensor in state.values())


def recognizer_folder(model_folder: Path, cache_dir: Path) -> Path | None:
    """The CTranslate2 folder of the recognizer adapted with a model (None when the folder has none):
    Whisper tiny.en from its package with the stored decoder layers in place, exported once into
    ``cache_dir`` under a name that changes with the stored weights."""
    import hashlib
    import shutil

    from omni_core.model_cache import building_folder
    from omni_core.whisper_ct2 import export_ct2

    weights = model_folder / RECOGNIZER_FOLDER / RECOGNIZER_WEIGHTS
    if not weights.is_file():
        return None
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    target = cache_dir / f"recognizer-{digest}"
    if (target / "model.bin").is_file():
        return target
    base = whisper_tiny_folder(cache_dir)
    stored = load_file(str(weights))
    with building_folder(cache_dir / f".recognizer-{digest}-hf", replace=True) as hf:
        for path in base.iterdir():
            if path.is_file():
                shutil.copy(path, hf / path.name)
        state = load_file(str(hf / "model.safetensors"))
        unknown = sorted(set(stored) - set(state))
        if unknown or not all(stored[k].shape == state[k].shape for k in stored):
            raise CheckpointError("the stored recognizer layers do not fit Whisper tiny.en")
        state.update({k: v.to(state[k].dtype) for k, v in stored.items()})
        save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
    hf_folder = cache_dir / f".recognizer-{digest}-hf"
    try:
        with building_folder(target) as staging:
            export_ct2(hf_folder, staging)
    finally:
        shutil.rmtree(hf_folder, ignore_errors=True)
    return target
