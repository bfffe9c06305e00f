"""A tiny omni model (random weights, seconds on CPU) and a byte tokenizer for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from omni_core import OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.processing_omni import Message, Part


class ByteTokenizer:
    """Printable ASCII to ids 3..97 (0-2 are pad/bos/eos; anything else reads as a space): a reversible
    tokenizer that fits the tiny model's 128-token vocabulary. Its ChatML tokens are bos and eos, as
    SmolLM2 has them; text never becomes one of them."""

    eos_token_id = 2

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return {"<|im_start|>": 1, "<|im_end|>": 2}.get(token)

    def encode(self, text: str) -> list[int]:
        return [3 + (ord(ch) - 32 if 32 <= ord(ch) < 127 else 0) for ch in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(32 + i - 3) if 3 <= i < 98 else "" for i in ids)


@pytest.fixture(scope="session")
def smollm2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct de-quantised from its GGUF once, kept in pytest's cache between runs."""
    from omni_core.backbones import smollm2_folder

    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider
    root = cache.mkdir("omniclinic-models") if cache is not None else tmp_path_factory.mktemp("models")
    return smollm2_folder(Path(root))


@pytest.fixture
def config() -> OmniConfig:
    return OmniConfig.from_preset("tiny")


@pytest.fixture
def model(config: OmniConfig) -> OmniForConditionalGeneration:
    torch.manual_seed(0)
    return OmniForConditionalGeneration(config)


@pytest.fixture
def processor(config: OmniConfig) -> OmniProcessor:
    return OmniProcessor(config, ByteTokenizer())


def speech_codes(config: OmniConfig, frames: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.randint(0, size, (frames,), generator=generator) for size in config.audio.codebook_sizes], -1
    )


def conversation(config: OmniConfig) -> list[Message]:
    """A study image, a 3D series, a spoken question, and a spoken answer."""
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 1, 56, 84, generator=generator)  # a 2D radiograph, (C, D, H, W)
    series = torch.rand(3, 5, 28, 56, generator=generator)  # a 5-slice series rendered three-window
    question = np.random.default_rng(2).normal(0, 0.1, 16_000).astype(np.float32)
    return [
        Message(
            "user",
            [Part("image", image), Part("image", series), Part("audio", question), Part("text", "Is there a nodule?")],
        ),
        Message("assistant", [Part("text", "No nodule."), Part("speech", speech_codes(config, 4))]),
    ]
