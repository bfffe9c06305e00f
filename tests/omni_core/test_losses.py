"""Losses by name, weighted from the config; the chunked vocabulary cross-entropy equals the plain one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.losses import chunked_cross_entropy

from .conftest import conversation


def test_chunked_cross_entropy_equals_the_plain_one_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    plain = F.cross_entropy(head(hidden), targets)
    (plain_hidden, plain_weight) = torch.autograd.grad(plain, (hidden, head.weight))
    chunked = chunked_cross_entropy(hidden, targets, head, chunk=8)  # 5 chunks, the last one short
    (chunked_hidden, chunked_weight) = torch.autograd.grad(chunked, (hidden, head.weight))
    assert torch.allclose(plain, chunked, atol=1e-6)
    assert torch.allclose(plain_hidden, chunked_hidden, atol=1e-6)
    assert torch.allclose(plain_weight, chunked_weight, atol=1e-6)
    empty = chunked_cross_entropy(hidden[:0], targets[:0], head)
    assert empty.item() == 0 and empty.requires_grad


def test_chunks_never_hold_the_whole_sequence_of_logits() -> None:
    """Autograd keeps nothing larger than the hidden states: logits are recomputed chunk by chunk."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 1000)
    hidden = torch.randn(4096, 8, requires_grad=True)
    targets = torch.randint(0, 1000, (4096,))
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        chunked_cross_entropy(hidden, targets, head, chunk=256).backward()
    assert max(saved) <= hidden.numel()  # the plain loss keeps 4096 x 1000 logits, unchecked chunks 256 x 1000


def test_each_loss_is_returned_by_name_and_weighted_from_the_config(processor: OmniProcessor) -> None:
    config = OmniConfig.from_preset("tiny")
    config.loss_weights = dataclasses.replace(config.loss_weights, text=2.0, audio_head=0.5, commitment=0.0)
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(config).train()
    inputs = OmniProcessor(config, processor.tokenizer)(conversation(config)).forward_kwargs()
    output = model(**inputs)
    losses = output.losses
    expected = 2.0 * losses["text"] + 0.5 * losses["audio_head"] + losses["mel_reconstruction"]
    assert torch.allclose(output.loss, expected)
    only_text = model(**inputs, losses=("text",))
    assert set(only_text.losses) == {"text"} and torch.allclose(only_text.loss, 2.0 * losses["text"])
    assert only_text.logits is None  # a training step never builds the full logits
    assert model(**inputs, losses=("text",), return_logits=True).logits.shape[-1] == model.llm.lm_head.out_features
    with pytest.raises(ValueError, match="unknown losses"):
        model(**inputs, losses=("perplexity",))
    with pytest.raises(ValueError, match="need audio_mel"):
        model(input_ids=inputs["input_ids"], losses=("mel_reconstruction",))


def test_inference_forward_returns_logits_and_no_loss(model: OmniForConditionalGeneration) -> None:
    model.eval()
    output = model(torch.tensor([[5, 6, 7]]))
    assert output.loss is None and output.losses is None
    assert output.logits.shape == (1, 3, model.llm.lm_head.out_features)
    assert torch.allclose(output.logits, model.llm(input_ids=torch.tensor([[5, 6, 7]])).logits, atol=1e-5)
