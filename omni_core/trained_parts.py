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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from omni_core.configuration_omni import OmniConfig
from omni_core.loading import CheckpointError
from omni_core.modeling_omni import CONFIG_NAME, OmniForConditionalGeneration

COMPONENTS = "components.json"
PARTS_WEIGHTS = "trained_parts.safetensors"
FULL_PRECISION = ("audio_tokenizer.rvq.",)
"""Stored in float32: a codebook rounded to float16 can flip which code is nearest to a sound, and
with it the token the model hears (seen as a 0.5 logit difference on a spoken question)."""
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
    """Write the parameters under ``prefixes`` (float16; codebooks float32), the adapters (float16) and
    ``components.json`` into ``folder``. Returns the bytes of weights written."""
    for name, value in components.items():
        if value not in KNOWN_COMPONENTS.get(name, ()):
            raise ValueError(f"components: {name}={value!r} is not a packaged part")
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / CONFIG_NAME)
    state = {  # parameters only (buffers are rebuilt as training built them); a layer that carries
        # adapters stores its base weight under the plain layer's name
        name.replace(".base_layer.", "."): tensor.detach()
        .to(torch.float32 if name.startswith(FULL_PRECISION) else torch.float16)
        .contiguous()
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


def read_components(folder: Path) -> tuple[dict[str, str], tuple[str, ...]]:
    """(packaged components by part, stored prefixes) from a trained-parts folder's ``components.json``.

    Raises:
        CheckpointError: the file is missing or malformed.
    """
    try:
        record = json.loads((folder / COMPONENTS).read_text(encoding="utf-8"))
        names = {str(k): str(v) for k, v in record["components"].items()}
        return names, tuple(str(p) for p in record["trained_prefixes"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{folder.name} is not a readable trained-parts folder ({type(exc).__name__})") from None


PART_PREFIXES = {
    "vision": "vision.",
    "projector": "vision.tower.merger.",
    "audio_tokenizer": "audio_tokenizer.",
    "audio_embedding": "audio_embedding.",
    "llm": "llm.",
    "audio_head": "audio_head.",
    "speech_decoder": "speech_decoder.",
}
PACKAGED_PARTS = {"llm": ("llm", ()), "audio_tokenizer": ("whisper", ("audio_tokenizer.rvq.",))}
"""Parts a packaged component provides: the component, and what must still be stored beside it (the
audio tokenizer's codebooks are trained; its Whisper encoder comes from the package)."""


def uncovered_parts(folder: Path) -> tuple[str, ...]:
    """Parts of a trained-parts folder's model whose weights are neither stored nor packaged: they
    start fresh at load, untrained, whatever a record beside them says. Every part when the folder's
    ``components.json`` cannot be read."""
    try:
        packaged, stored = read_components(folder)
    except CheckpointError:
        return tuple(PART_PREFIXES)

    def stored_whole(prefix: str) -> bool:
        return any(prefix.startswith(kept) for kept in stored)

    missing = []
    for part, prefix in PART_PREFIXES.items():
        component, beside = PACKAGED_PARTS.get(part, ("", ()))
        from_package = component in packaged and all(stored_whole(p) for p in beside)
        if not (stored_whole(prefix) or from_package):
            missing.append(part)
    return tuple(missing)


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
    names, prefixes = read_components(folder)
    try:
        config = OmniConfig.load(folder / CONFIG_NAME)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{folder.name} is not a readable trained-parts folder ({type(exc).__name__})") from None
    sources = component_folders(names, cache_dir)
    try:
        with torch.random.fork_rng():  # parts neither packaged nor trained start as training's did (seed 0),
            torch.manual_seed(0)  # without moving the caller's random state
            model = OmniForConditionalGeneration.from_components(
                config, llm=sources.get("llm"), whisper=sources.get("whisper")
            )
        stored = load_file(str(folder / PARTS_WEIGHTS))
    except (ValueError, OSError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt file
        raise CheckpointError(f"{folder.name} cannot be loaded ({type(exc).__name__})") from None
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

        try:
            load_lora(model, folder / ADAPTER_FOLDER)
        except (ValueError, OSError, SafetensorError) as exc:
            raise CheckpointError(f"the adapters in {folder.name} cannot be loaded ({exc})") from None
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
    ``cache_dir`` under a name that changes with the stored weights, the base package and the
    converter. Processes that build it at once each work in a folder of their own; the first to
    finish publishes it (``building_folder``)."""
    import hashlib
    import shutil
    import tempfile

    import ctranslate2

    from omni_core.model_cache import building_folder
    from omni_core.speech.asr import resolve_model
    from omni_core.whisper_ct2 import export_ct2

    weights = model_folder / RECOGNIZER_FOLDER / RECOGNIZER_WEIGHTS
    if not weights.is_file():
        return None
    key = hashlib.sha256(weights.read_bytes())
    base_package = resolve_model("tiny.en", cache_dir)
    key.update(f"{(base_package / 'model.bin').stat().st_size}\0{ctranslate2.__version__}".encode())
    target = cache_dir / f"recognizer-{key.hexdigest()[:16]}"
    if (target / "model.bin").is_file():
        return target
    base = whisper_tiny_folder(cache_dir)
    try:
        stored = load_file(str(weights))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"the stored recognizer layers cannot be read ({type(exc).__name__})") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".recognizer-", dir=cache_dir) as work:
        hf = Path(work)
        for path in base.iterdir():
            if path.is_file():
                shutil.copy(path, hf / path.name)
        state = load_file(str(hf / "model.safetensors"))
        unknown = sorted(set(stored) - set(state))
        if unknown or not all(stored[k].shape == state[k].shape for k in stored):
            raise CheckpointError("the stored recognizer layers do not fit Whisper tiny.en")
        state.update({k: v.to(state[k].dtype) for k, v in stored.items()})
        save_file(state, str(hf / "model.safetensors"), metadata={"format": "pt"})
        with building_folder(target) as staging:
            export_ct2(hf, staging)
    return target
