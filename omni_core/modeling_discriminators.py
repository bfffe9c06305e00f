"""HiFi-GAN's discriminators and GAN losses, for training the vocoder (Kong et al. 2020).

- Multi-period: the waveform folded into (T / p, p) for periods 2, 3, 5, 7, 11, each judged by 2D
  convolutions along time, so each sees one phase of a periodic structure.
- Multi-scale: the raw waveform and two average-pooled copies, judged by grouped 1D convolutions.
- Least-squares adversarial losses, feature matching (L1 between the discriminators' feature maps on
  real and generated audio) and the mel L1 (weighed 45 in the paper) that the recipe adds.

transformers ships HiFi-GAN's generator (``SpeechT5HifiGan``) but not its discriminators; they are
written here after the paper, with a ``width`` scale so that tests can build small ones.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

PERIODS = (2, 3, 5, 7, 11)
LEAKY = 0.1

FeatureMaps = list[torch.Tensor]


def _judge(convs: nn.ModuleList, out: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
    """Leaky-ReLU convolutions then the output layer: (B, N) scores and every layer's feature map."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LEAKY)
        features.append(x)
    x = out(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, width: int = 32) -> None:
        super().__init__()
        self.period = period
        channels = [1, width, 4 * width, 16 * width, 32 * width, 32 * width]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(a, b, (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
            for i, (a, b) in enumerate(itertools.pairwise(channels))
        )
        self.out = weight_norm(nn.Conv2d(channels[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
        """Args: wave (B, 1, T). Returns: scores (B, N) and the feature map of every layer."""
        batch, channels, length = wave.shape
        if length % self.period:
            wave = F.pad(wave, (0, self.period - length % self.period), mode="reflect")
        return _judge(self.convs, self.out, wave.view(batch, channels, -1, self.period))  # (B, 1, T / p, p)


class ScaleDiscriminator(nn.Module):
    def __init__(self, width: int = 16, spectral: bool = False) -> None:
        super().__init__()
        norm = spectral_norm if spectral else weight_norm
        w = width
        layers = [  # (in, out, kernel, stride, groups)
            (1, w, 15, 1, 1),
            (w, 4 * w, 41, 4, 4),
            (4 * w, 16 * w, 41, 4, 16),
            (16 * w, 64 * w, 41, 4, 16),
            (64 * w, 64 * w, 41, 4, 16),
            (64 * w, 64 * w, 5, 1, 1),
        ]
        self.convs = nn.ModuleList(
            norm(nn.Conv1d(a, b, k, s, groups=min(g, a, b), padding=k // 2)) for a, b, k, s, g in layers
        )
        self.out = norm(nn.Conv1d(64 * w, 1, 3, 1, padding=1))

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, FeatureMaps]:
        return _judge(self.convs, self.out, wave)


class HifiGanDiscriminator(nn.Module):
    """Multi-period and multi-scale discriminators together: 5 + 3 judges of one waveform."""

    def __init__(self, period_width: int = 32, scale_width: int = 16) -> None:
        super().__init__()
        self.judges = nn.ModuleList(
            [PeriodDiscriminator(p, period_width) for p in PERIODS]
            + [
                ScaleDiscriminator(scale_width, spectral=True),
                ScaleDiscriminator(scale_width),
                ScaleDiscriminator(scale_width),
            ]
        )
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[FeatureMaps]]:
        """Args: wave (B, T) or (B, 1, T). Returns: each judge's scores and feature maps."""
        wave = wave if wave.dim() == 3 else wave[:, None]
        scores, features = [], []
        scaled = wave
        scale_index = 0
        for judge in self.judges:
            if isinstance(judge, ScaleDiscriminator):
                if scale_index:
                    scaled = self.pool(scaled)  # the raw waveform, then x2 and x4 average-pooled
                scale_index += 1
                score, maps = judge(scaled)
            else:
                score, maps = judge(wave)
            scores.append(score)
            features.append(maps)
        return scores, features


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Least squares: real scores towards 1, generated towards 0."""
    return sum(((1 - r) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake, strict=True))  # type: ignore[return-value]


def generator_adversarial_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    return sum(((1 - f) ** 2).mean() for f in fake)  # type: ignore[return-value]


def feature_matching_loss(real: list[FeatureMaps], fake: list[FeatureMaps]) -> torch.Tensor:
    """L1 between feature maps on real (no gradient) and generated audio, summed over judges and layers, x2."""
    total = sum(
        (r.detach() - f).abs().mean()
        for real_maps, fake_maps in zip(real, fake, strict=True)
        for r, f in zip(real_maps, fake_maps, strict=True)
    )
    return 2 * total  # type: ignore[return-value]
