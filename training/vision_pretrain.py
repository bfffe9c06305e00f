"""Stage 1a of the default model: the vision encoder pretrained on the phantoms' ground truth.

Baichuan-Omni-1.5 starts from a vision encoder that was already pretrained (Qwen2-VL's NaViT); no such
weights install offline, and an encoder trained from scratch only through a frozen LLM's next-token
loss learns little more than "something bright" in the few hundred steps a CPU allows (the first
default model answered "left" to every side question). So the encoder is pretrained here first, as
encoders are pretrained on labelled images: supervised, on what each training study's
``ground_truth.json`` says (modality, lesion count, lesions on each side, the side of an effusion and
of a pneumothorax, the largest lesion's size class).

The heads read the merger's output tokens (what the LLM reads; stage 1 goes on to train the merger as
the projector) through attention pooling that knows nothing of a token's position, so whatever a head
learns (the side of a finding among them) has to be carried in the tokens themselves. The heads are
dropped afterwards; the encoder and merger go on to stage 1. Only the training split's truth is used;
the validation split measures the heads.
This is the project's own code because no installed package pretrains a Qwen2-VL tower on DICOM
phantoms' labels; the training loop is plain PyTorch, the encoder is transformers'.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

TARGETS: dict[str, tuple[str, ...]] = {
    "modality": ("CT", "CR"),
    "lesion_count": ("0", "1", "2", "3"),
    "lesion_right": ("no", "yes"),
    "lesion_left": ("no", "yes"),
    "effusion": ("none", "right", "left"),
    "pneumothorax": ("none", "right", "left"),
    "largest_lesion": ("none", "nodule", "mass"),
}
"""What the heads predict from a study's tokens, and the classes of each."""


def study_labels(truth: dict[str, Any]) -> dict[str, int]:
    """The class index of each target, from a phantom's ``ground_truth.json``."""
    findings = truth["findings"]
    lesions = findings["lesions"]
    largest = max(lesions, key=lambda lesion: lesion["diameter_mm"])["kind"] if lesions else "none"
    values = {
        "modality": truth["modality"],
        "lesion_count": str(min(len(lesions), 3)),
        "lesion_right": "yes" if any(lesion["side"] == "right" for lesion in lesions) else "no",
        "lesion_left": "yes" if any(lesion["side"] == "left" for lesion in lesions) else "no",
        "effusion": findings["effusion"] or "none",
        "pneumothorax": findings["pneumothorax"] or "none",
        "largest_lesion": largest,
    }
    return {name: TARGETS[name].index(value) for name, value in values.items()}


class ProbeHeads(nn.Module):
    """One learned query per target attends over a study's tokens; a linear layer classifies the
    pooled vector. The pooling is blind to token positions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.queries = nn.Parameter(torch.randn(len(TARGETS), width) / math.sqrt(width))
        self.classifiers = nn.ModuleList(nn.Linear(width, len(classes)) for classes in TARGETS.values())

    def forward(self, tokens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """tokens: one (n_i, width) tensor per study -> one (studies, classes) logits tensor per target."""
        pooled = []
        for study in tokens:
            keys = self.norm(study)
            weights = torch.softmax(self.queries @ keys.T / math.sqrt(keys.shape[-1]), dim=-1)  # (targets, n)
            pooled.append(weights @ keys)
        stacked = torch.stack(pooled)  # (studies, targets, width)
        return [classifier(stacked[:, index]) for index, classifier in enumerate(self.classifiers)]


@dataclass
class Encoded:
    patches: torch.Tensor
    grid: tuple[int, int, int]
    labels: dict[str, int]


def load_studies(split_dir: Path, config: Any) -> list[Encoded]:
    """Every study of a corpus split as the processor gives it to the encoder, with its labels."""
    from omni_core.processing_omni import OmniProcessor
    from omni_core.tokenization import character_tokenizer
    from training.data import MediaReader

    reader = MediaReader(config)
    processor = OmniProcessor(config, character_tokenizer())
    studies: list[Encoded] = []
    if not (split_dir / "studies").is_dir():  # a small corpus may leave a split empty
        return studies
    for folder in sorted(p for p in (split_dir / "studies").iterdir() if p.is_dir()):
        truth = json.loads((folder / "ground_truth.json").read_text(encoding="utf-8"))
        series = folder / "series"
        image = (
            reader._part("series", str(series))
            if series.is_dir()
            else reader._part("image", str(folder / truth["files"][0]))
        )
        patches, grid = processor._image(image.value)
        studies.append(Encoded(patches.half(), grid, study_labels(truth)))  # float16 halves the held split
    return studies


def _batch_loss(
    vision: nn.Module, heads: ProbeHeads, batch: Sequence[Encoded]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    patches = torch.cat([study.patches for study in batch]).float()
    grid = torch.tensor([study.grid for study in batch])
    tokens = vision(patches, grid).float()
    logits = heads(torch.split(tokens, vision.tokens_per_item(grid)))
    loss = sum(
        nn.functional.cross_entropy(target_logits, torch.tensor([study.labels[name] for study in batch]))
        for name, target_logits in zip(TARGETS, logits, strict=True)
    )
    return loss / len(TARGETS), logits


@torch.no_grad()
def head_accuracy(
    vision: nn.Module, heads: ProbeHeads, studies: Sequence[Encoded], batch_size: int = 32
) -> dict[str, float] | None:
    """Each head's accuracy on ``studies`` (None for none)."""
    if not studies:
        return None
    correct = dict.fromkeys(TARGETS, 0)
    for start in range(0, len(studies), batch_size):
        batch = studies[start : start + batch_size]
        _, logits = _batch_loss(vision, heads, batch)
        for name, target_logits in zip(TARGETS, logits, strict=True):
            truth = torch.tensor([study.labels[name] for study in batch])
            correct[name] += int((target_logits.argmax(-1) == truth).sum())
    return {name: round(count / len(studies), 4) for name, count in correct.items()}


def pretrain_vision(
    vision: nn.Module,
    train: Sequence[Encoded],
    validation: Sequence[Encoded],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``vision`` (encoder and merger) with the probe heads; returns losses and head accuracies."""
    if not train:
        raise ValueError("no training studies to pretrain the vision encoder on")
    if steps < 1:
        raise ValueError("vision pretraining needs at least one step")
    torch.manual_seed(seed)
    order = random.Random(seed)
    width = vision.tower.config.hidden_size  # the merger's output: the LLM's width
    heads = ProbeHeads(width)
    parameters = list(vision.parameters()) + list(heads.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))
    )
    vision.train()
    indices: list[int] = []
    losses = []
    started = time.monotonic()
    for step in range(steps):
        if len(indices) < batch_size:
            more = list(range(len(train)))
            order.shuffle(more)
            indices += more
        batch = [train[i] for i in indices[:batch_size]]
        del indices[:batch_size]
        loss, _ = _batch_loss(vision, heads, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"vision pretraining step {step + 1}/{steps}: loss {sum(losses[-50:]) / len(losses[-50:]):.4f}")
    vision.eval()
    result = {
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "train_studies": len(train),
        "validation_studies": len(validation),
        "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "train_accuracy": head_accuracy(vision, heads, train[:128]),
        "validation_accuracy": head_accuracy(vision, heads, validation),
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    return result
