"""The demo-cpu omni model with the real SmolLM2-135M weights answers through our own generation loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from omni_core import DecodingOptions, OmniConfig, OmniForConditionalGeneration
from omni_core.backbones import smollm2_folder


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smollm2_folder(tmp_path_factory.mktemp("models"))  # de-quantised once (~20 s)


def test_converted_once_then_reused(smollm2: Path) -> None:
    stamp = (smollm2 / "model.safetensors").stat().st_mtime_ns
    assert smollm2_folder(smollm2.parent) == smollm2
    assert (smollm2 / "model.safetensors").stat().st_mtime_ns == stamp


def test_pretrained_backbone_loads_as_it_is_and_answers(smollm2: Path) -> None:
    model = OmniForConditionalGeneration.from_components(OmniConfig.from_preset("demo-cpu"), llm=smollm2).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt"
    )
    input_ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    result = model.generate(input_ids, options=DecodingOptions(max_new_tokens=16, speech=False))
    assert "Paris" in tokenizer.decode(result.token_ids)
