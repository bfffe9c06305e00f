"""Audio tokenizer: Whisper encoder -> 4x average pooling (12.5 Hz) -> residual VQ, and a mel decoder.

The audio front end is constants plus pure functions (``log_mel``), as openai/whisper's
``audio.py``. The encoder is transformers' ``WhisperEncoder``; the residual VQ is
``vector_quantize_pytorch.ResidualVQ`` with one codebook size per layer (learnable codebooks, so
that freezing the tokenizer freezes them too); the mel decoder (transformer layers, then transposed
convolutions back to the mel rate) is written here: no library has this one.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from vector_quantize_pytorch import ResidualVQ

from omni_core.configuration_omni import AudioConfig
from omni_core.loading import empty_weights
from omni_core.modeling_layers import Transformer, frame_mask


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
    """Quantized tokens (12.5 Hz) back to mel frames (100 Hz): rotary transformer, then 3 stride-2
    transposed convolutions, so the 8 mel frames under one token each get their own output."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.transformer = Transformer(
            config.d_model, config.decoder_attention_heads, config.decoder_ffn_dim, config.decoder_layers
        )
        upsamplings = (config.avg_pooler * 2).bit_length() - 1  # 8x = pooling 4 x encoder stride 2
        self.upsample = nn.ModuleList(
            nn.ConvTranspose1d(config.d_model, config.d_model, kernel_size=4, stride=2, padding=1)
            for _ in range(upsamplings)
        )
        self.to_mel = nn.Linear(config.d_model, config.num_mel_bins)

    def forward(self, quantized: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Args: quantized (B, T, d); padding_mask (B, T) True at real tokens.
        Returns: mel (B, num_mel_bins, T * 8)."""
        hidden = self.transformer(quantized, padding_mask).transpose(1, 2)  # (B, d, T)
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

    def __init__(self, config: AudioConfig, *, empty_encoder: bool = False) -> None:
        """``empty_encoder``: the Whisper encoder's parameters on the meta device, to be loaded."""
        super().__init__()
        self.config = config
        with empty_weights() if empty_encoder else nullcontext():
            self.encoder = WhisperEncoder(whisper_config(config))
        self.rvq = ResidualVQ(
            dim=config.d_model,
            codebook_size=config.codebook_sizes,
            num_quantizers=config.num_quantizers,
            learnable_codebook=True,
            ema_update=False,
            kmeans_init=False,
        )
        self.decoder = MelDecoder(config)

    def forward(
        self, mel: torch.Tensor, mel_frames: torch.Tensor | None = None, reconstruct: bool = False
    ) -> AudioTokenizerOutput:
        """Tokenize log-mel features at their own length (never padded to Whisper's 30 s window).

        transformers' ``WhisperEncoder.forward`` insists on a full window, so a 3 s question would
        pay for 30 s: Whisper's layers are run here directly, its positions sliced to the input (as
        Qwen2-Audio does). Each clip is padded with its own log-mel of silence, as Whisper saw in
        training, to whole tokens (8 mel frames) plus one frame for the convolution's look-ahead;
        in a batch, attention and pooling never reach past a clip's own frames, so a clip gets the
        same codes alone or batched.

        Args:
            mel: (B, num_mel_bins, frames), frames <= 100 * max_audio_seconds (``pad_mels`` builds
                a batch of clips of different lengths).
            mel_frames: (B,) real frames per clip; None means all.
            reconstruct: also decode mel and return the L1 reconstruction loss.

        Returns:
            AudioTokenizerOutput with codes (B, T, L), T = tokens_for_frames(frames); codes past a
            clip's own tokens are -1.
        """
        frames = mel.shape[-1]
        pooled, token_mask = self.pooled(mel, mel_frames)
        quantized, codes, commit = self.rvq(pooled, mask=None if mel_frames is None else token_mask)
        output = AudioTokenizerOutput(codes=codes, quantized=quantized, commit_loss=commit.sum())
        if reconstruct:
            lengths = torch.full((mel.shape[0],), frames) if mel_frames is None else torch.as_tensor(mel_frames)
            real = frame_mask(lengths.to(mel.device), frames)
            reconstructed = self.decoder(quantized, token_mask)[..., :frames]
            target = mel.to(reconstructed.dtype)
            weights = real[:, None].to(reconstructed.dtype)
            output.mel_loss = ((reconstructed - target).abs() * weights).sum() / (weights.sum() * target.shape[1])
            output.reconstructed_mel = reconstructed
        return output

    def pooled(self, mel: torch.Tensor, mel_frames: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's features pooled to 12.5 Hz, before quantization: (B, T, d) and the mask of
        each clip's own tokens (B, T). What ``forward`` quantizes, and what codebooks are fitted to."""
        batch, _, frames = mel.shape
        if frames > 2 * self.config.max_source_positions:
            raise ValueError(f"audio longer than {self.config.max_audio_seconds} s; split it into windows")
        lengths = (
            torch.as_tensor(mel_frames, device=mel.device)
            if mel_frames is not None
            else torch.full((batch,), frames, device=mel.device)
        )
        per_token = 2 * self.config.avg_pooler  # mel frames under one token
        tokens = tokens_for_frames(frames, self.config)
        token_lengths = (lengths + per_token - 1) // per_token  # (B,)
        token_mask = frame_mask(token_lengths, tokens)  # (B, T)
        real = frame_mask(lengths, frames)  # (B, F)
        level = silence_level(mel, real)  # (B,)
        padded = torch.cat([mel, mel.new_zeros(batch, mel.shape[1], tokens * per_token + 1 - frames)], dim=-1)
        padded = torch.where(
            frame_mask(lengths, padded.shape[-1])[:, None], padded, level[:, None, None].to(padded.dtype)
        )
        hidden = self._encode(padded, token_mask.repeat_interleave(self.config.avg_pooler, dim=1))
        return hidden.unflatten(1, (tokens, self.config.avg_pooler)).mean(dim=2), token_mask  # (B, T, d)

    def _encode(self, mel: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """Whisper's encoder on (B, num_mel_bins, 2 * E + 1) -> (B, E, d), attending to ``attend`` (B, E)."""
        encoder = self.encoder
        hidden = F.gelu(encoder.conv1(mel.to(encoder.conv1.weight.dtype)))
        hidden = F.gelu(encoder.conv2(hidden)).transpose(1, 2)[:, : attend.shape[1]]  # (B, E, d)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        attention_mask = None
        if not bool(attend.all()):
            blocked = torch.finfo(hidden.dtype).min
            attention_mask = torch.zeros(attend.shape, dtype=hidden.dtype, device=hidden.device)
            attention_mask = attention_mask.masked_fill(~attend, blocked)[:, None, None, :]  # (B, 1, 1, E)
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return encoder.layer_norm(hidden)

    @torch.no_grad()
    def encode(self, mel: torch.Tensor, mel_frames: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_mel_bins, frames) -> codes (B, T, L)."""
        return self.forward(mel, mel_frames).codes


def silence_level(mel: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """The log-mel value of digital silence in each clip, as Whisper's feature extractor writes it.

    Whisper clamps log10 power at (the clip's maximum - 8) and maps x to (x + 4) / 4, so silence in a
    clip whose top value is m reads max(m - 2, -1.5).

    Args:
        mel: (B, num_mel_bins, frames).
        real: (B, frames) True at the clip's own frames (None: all).

    Returns:
        (B,)
    """
    if real is not None:
        mel = torch.where(real[:, None], mel, float("-inf"))
    return mel.amax(dim=(1, 2)).sub(2).clamp_min(-1.5)


def pad_mels(mels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of (num_mel_bins, frames) into one batch (B, num_mel_bins, longest) and their frames (B,).

    The padding's value does not matter: the tokenizer replaces it with each clip's silence.
    """
    longest = max(mel.shape[-1] for mel in mels)
    batch = torch.stack([F.pad(mel, (0, longest - mel.shape[-1])) for mel in mels])
    return batch, torch.tensor([mel.shape[-1] for mel in mels], device=batch.device)


class AudioEmbedding(nn.Module):
    """RVQ codes to LLM inputs: the sum of one embedding per quantizer layer."""

    def __init__(self, config: AudioConfig, hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Embedding(size, hidden_size) for size in config.codebook_sizes)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Args: codes (..., L). Returns: (..., hidden_size)."""
        return sum(layer(codes[..., index]) for index, layer in enumerate(self.layers))  # type: ignore[return-value]
