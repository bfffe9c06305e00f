"""The omni model: vision encoder, audio tokenizer, LLM backbone and speech head, with its processor.

Depends on torch, transformers and the speech engines; never on ``app`` or ``training``.
``from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor`` loads the model
code on first use only, so ``omni_core.speech`` stays quick to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "OmniConfig": "omni_core.configuration_omni",
    "OmniForConditionalGeneration": "omni_core.modeling_omni",
    "DecodingOptions": "omni_core.modeling_omni",
    "OmniProcessor": "omni_core.processing_omni",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'omni_core' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
