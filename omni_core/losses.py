"""Vocabulary cross-entropy without the whole sequence's fp32 logits.

A 152k-token vocabulary turns 8k positions into 5 GB of fp32 logits, and autograd keeps them for the
backward pass. Here only labelled positions are projected, a chunk at a time, each chunk under
activation checkpointing: its logits exist during its own forward and are recomputed in backward,
so the peak is one chunk's logits whatever the sequence length (the scheme of Liger's and
torchtune's chunked losses, written in plain torch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

CHUNK_POSITIONS = 1024


def _chunk_loss(
    hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()  # (chunk, V)
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, head: nn.Linear, *, chunk: int = CHUNK_POSITIONS
) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``targets``.

    Args:
        hidden: (N, H) states of the positions that carry a label.
        targets: (N,) their target ids.
        head: the output projection (the LM head).
        chunk: positions projected at once.

    Returns:
        A scalar; 0 (still in the graph) when there is nothing to predict.
    """
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        part, wanted = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and (part.requires_grad or head.weight.requires_grad):
            total = total + checkpoint(_chunk_loss, part, wanted, head.weight, head.bias, use_reentrant=False)
        else:
            total = total + _chunk_loss(part, wanted, head.weight, head.bias)
    return total / hidden.shape[0]
