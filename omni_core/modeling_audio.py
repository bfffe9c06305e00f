"""Audio tokenizer: Whisper encoder -> 4x average pooling (12.5 Hz) -> residual VQ, and a mel decoder.

The audio front end is constants plus pure functions (``log_mel``), as openai/whisper's
``audio.py``. The encoder is transformers' ``WhisperEncoder``; the residual VQ is
``vector_quantize_pytorch.ResidualVQ`` with one codebook size per layer (learnable codebooks, so
that freezing the tokenizer freezes them too); the mel decoder (transformer layers, then transposed
convolutions back to the mel rate) is written here: no library has this one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from vector_quantize_pytorch import ResidualVQ

from omni_core.configuration_omni import AudioConfig


def log_mel(samples: np.ndarray, config: AudioConfig) -> np.ndarray:
    """Whisper log-mel features of 16 kHz mono audio: (num_mel_bins, frames), frames = samples / hop."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins,
        sampling_rate=config.sampling_rate,
        hop_length=config.hop_length,
        n_fft=config.n_fft,
        chunk_length=config.max_audio_seconds,
    )
    features = extractor(
        samples, sampling_rate=config.sampling_rate, return_tensors="np", padding=False, truncation=False
    )
    return features["input_features"][0]


def tokens_for_frames(mel_frames: int, config: AudioConfig) -> int:
    """Audio tokens (12.5 Hz for the released model) that ``mel_frames`` mel frames become."""
    encoder_frames = (mel_frames + 1) // 2
    return max(1, -(-encoder_frames // config.avg_pooler))


@dataclass
class AudioTokenizerOutput:
    codes: torch.Tensor
    """(B, T, num_quantizers) RVQ indices at the token rate."""
    quantized: torch.Tensor
    """(B, T, d_model)"""
    commit_loss: torch.Tensor
    mel_loss: torch.Tensor | None = None
    reconstructed_mel: torch.Tensor | None = None


class MelDecoder(nn.Module):
    """Quantized tokens (12.5 Hz) back to mel frames (100 Hz): transformer, then 3 stride-2 upsamplings."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.decoder_attention_heads,
            config.decoder_ffn_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.decoder_layers, enable_nested_tensor=False)
        upsamplings = (config.avg_pooler * 2).bit_length() - 1  # 8x = pooling 4 x encoder stride 2
        self.upsample = nn.ModuleList(
            nn.ConvTranspose1d(config.d_model, config.d_model, kernel_size=4, stride=2, padding=1)
            for _ in range(upsamplings)
        )
        self.to_mel = nn.Linear(config.d_model, config.num_mel_bins)

    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        """Args: quantized (B, T, d). Returns: mel (B, num_mel_bins, T * 8)."""
        hidden = self.transformer(quantized).transpose(1, 2)  # (B, d, T)
        for layer in self.upsample:
            hidden = F.gelu(layer(hidden))
        return self.to_mel(hidden.transpose(1, 2)).transpose(1, 2)


def whisper_config(config: AudioConfig) -> WhisperConfig:
    """A Whisper config whose encoder has this tokenizer's dimensions (its decoder is a stub)."""
    return WhisperConfig(
        num_mel_bins=config.num_mel_bins,
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        encoder_ffn_dim=config.encoder_ffn_dim,
        max_source_positions=config.max_source_positions,
        decoder_layers=1,
        decoder_attention_heads=1,
        decoder_ffn_dim=8,
        vocab_size=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )


class AudioTokenizer(nn.Module):
    """Audio to discrete codes at 12.5 Hz, and (for training) back to mel."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = WhisperEncoder(whisper_config(config))
        self.pool = nn.AvgPool1d(config.avg_pooler, stride=config.avg_pooler, ceil_mode=True)
        self.rvq = ResidualVQ(
            dim=config.d_model,
            codebook_size=config.codebook_sizes,
            num_quantizers=config.num_quantizers,
            learnable_codebook=True,
            ema_update=False,
            kmeans_init=False,
        )
        self.decoder = MelDecoder(config)

    def _pad(self, mel: torch.Tensor) -> torch.Tensor:
        target = 2 * self.config.max_source_positions  # the encoder takes exactly one window
        if mel.shape[-1] > target:
            raise ValueError(f"audio longer than {self.config.max_audio_seconds} s; split it into windows")
        return F.pad(mel, (0, target - mel.shape[-1]))

    def forward(
        self, mel: torch.Tensor, mel_frames: torch.Tensor | None = None, reconstruct: bool = False
    ) -> AudioTokenizerOutput:
        """Tokenize log-mel features.

        Args:
            mel: (B, num_mel_bins, frames), frames <= 100 * max_audio_seconds.
            mel_frames: (B,) real frames per item (for the reconstruction loss); None means all.
            reconstruct: also decode mel and return the L1 reconstruction loss.

        Returns:
            AudioTokenizerOutput with codes (B, T, L) for T = tokens_for_frames(frames).
        """
        frames = mel.shape[-1]
        hidden = self.encoder(self._pad(mel).to(self.encoder.dtype)).last_hidden_state  # (B, 1500, d)
        tokens = tokens_for_frames(frames, self.config)
        pooled = self.pool(hidden.transpose(1, 2)).transpose(1, 2)[:, :tokens]  # (B, T, d)
        quantized, codes, commit = self.rvq(pooled)
        output = AudioTokenizerOutput(codes=codes, quantized=quantized, commit_loss=commit.sum())
        if reconstruct:
            reconstructed = self.decoder(quantized)[..., :frames]
            target = mel[..., : reconstructed.shape[-1]]
            if mel_frames is not None:
                mask = (torch.arange(target.shape[-1], device=mel.device)[None] < mel_frames[:, None]).unsqueeze(1)
                output.mel_loss = (reconstructed - target).abs().mul(mask).sum() / (mask.sum() * target.shape[1])
            else:
                output.mel_loss = F.l1_loss(reconstructed, target)
            output.reconstructed_mel = reconstructed
        return output

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, num_mel_bins, frames) -> codes (B, T, L)."""
        return self.forward(mel).codes


class AudioEmbedding(nn.Module):
    """RVQ codes to LLM inputs: the sum of one embedding per quantizer layer."""

    def __init__(self, config: AudioConfig, hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Embedding(size, hidden_size) for size in config.codebook_sizes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes (..., L). Returns: (..., hidden_size)."""
        return sum(layer(codes[..., index]) for index, layer in enumerate(self.layers))  # type: ignore[return-value]
