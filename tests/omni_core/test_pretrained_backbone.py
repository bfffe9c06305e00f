"""The demo-cpu omni model with the real SmolLM2-135M weights answers through our own generation loop."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from omni_core import DecodingOptions, OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.backbones import smollm2_folder
from omni_core.processing_omni import Message, Part


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


def test_our_processor_and_stop_tokens_answer_like_the_backbones_own_template(smollm2: Path) -> None:
    """The processor's ChatML with SmolLM2's system line: the same prompt ids as the tokenizer's template,
    and the answer stops at the tokenizer's <|im_end|> instead of running to max_new_tokens."""
    model = OmniForConditionalGeneration.from_components(OmniConfig.from_preset("demo-cpu"), llm=smollm2).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    processor = OmniProcessor(model.config, tokenizer)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    messages = [Message("system", [Part("text", system)]), Message("user", [Part("text", "What is 2 + 2?")])]
    inputs = processor(messages, add_generation_prompt=True)
    template = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, return_tensors="pt"
    )
    template_ids = template["input_ids"] if hasattr(template, "keys") else template
    assert inputs.input_ids[0].tolist() == template_ids[0].tolist()
    options = processor.decoding_options(DecodingOptions(max_new_tokens=64, speech=False))
    result = model.generate(inputs.input_ids, options=options)
    assert result.token_ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>") and len(result.token_ids) < 64
    assert "4" in tokenizer.decode(result.token_ids)
