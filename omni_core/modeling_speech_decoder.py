"""Speech out: audio head (RVQ codes from the LLM state), flow-matching mel decoder, vocoder.

- ``AudioHead``: a small causal "depth" transformer that predicts the L codes of one audio frame in
  turn from the LLM hidden state (as in Baichuan-Omni-1.5 and Moshi's depth transformer).
- ``FlowMatchingDecoder``: conditional flow matching (Matcha-TTS style): a transformer prenet turns
  code embeddings into mel-rate conditions, a transformer estimator predicts the velocity field,
  Euler steps with classifier-free guidance integrate noise into mel.
- The vocoder is transformers' ``SpeechT5HifiGan`` (mel -> waveform); ``speech_log_mel`` is the
  front end both the flow targets and the vocoder's training input come from.
None of the first two exists in a library in this form: they are written here, small and plain, on
the rotary transformer of ``modeling_layers``.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

from omni_core.configuration_omni import AudioConfig, SpeechConfig
from omni_core.modeling_layers import Transformer, frame_mask


def speech_log_mel(samples: torch.Tensor, speech: SpeechConfig) -> torch.Tensor:
    """HiFi-GAN's front end at the speech decoder's rate: (samples,) mono audio at
    ``speech.sampling_rate`` -> (samples // hop_length, mel_bins) natural-log mel.

    FFT and window 4 x hop (1920 at 24 kHz, as CosyVoice's decoder), Slaney mel up to half the
    sampling rate, reflect padding of (n_fft - hop) / 2 on each side and no centring, so that
    there is exactly one mel frame per hop of audio.
    """
    from transformers.audio_utils import mel_filter_bank

    hop = speech.hop_length
    n_fft = 4 * hop
    samples = samples.float().reshape(1, 1, -1)
    usable = samples.shape[-1] // hop * hop
    if usable == 0:
        raise ValueError(f"speech needs at least {hop} samples")
    padding = (n_fft - hop) // 2
    padded = F.pad(samples[..., :usable], (padding, padding), mode="reflect")[0, 0]
    spectrum = torch.stft(
        padded,
        n_fft,
        hop_length=hop,
        window=torch.hann_window(n_fft, device=padded.device),
        center=False,
        return_complex=True,
    ).abs()  # (n_fft // 2 + 1, frames)
    filters = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=speech.mel_bins,
        min_frequency=0.0,
        max_frequency=speech.sampling_rate / 2,
        sampling_rate=speech.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    mel = torch.from_numpy(filters).to(spectrum).T @ spectrum  # (mel_bins, frames)
    return torch.log(mel.clamp_min(1e-5)).T[: usable // hop]


class AudioHead(nn.Module):
    """LLM state of one frame -> its L RVQ codes, one after another (causal over the L positions)."""

    def __init__(self, speech: SpeechConfig, audio: AudioConfig, llm_hidden_size: int) -> None:
        super().__init__()
        width = speech.head_dim_model
        self.codebook_sizes = audio.codebook_sizes
        self.from_llm = nn.Linear(llm_hidden_size, width)
        self.code_embeddings = nn.ModuleList(nn.Embedding(size, width) for size in audio.codebook_sizes[:-1])
        self.transformer = Transformer(width, speech.head_heads, 4 * width, speech.head_layers, final_norm=True)
        self.heads = nn.ModuleList(nn.Linear(width, size) for size in audio.codebook_sizes)

    def _inputs(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        steps = [self.from_llm(hidden)] + [self.code_embeddings[i](codes[..., i]) for i in range(codes.shape[-1])]
        return torch.stack(steps, dim=-2)  # (N, codes so far + 1, width)

    def logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits.

        Args:
            hidden: (N, llm_hidden) the LLM state of N audio frames.
            codes: (N, L) their target codes.

        Returns:
            L tensors (N, codebook_size_l).
        """
        states = self.transformer(self._inputs(hidden, codes[:, :-1]), causal=True)  # (N, L, width)
        return [head(states[:, i]) for i, head in enumerate(self.heads)]

    def loss(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the L codes of each frame, averaged over the L codebooks."""
        losses = [F.cross_entropy(logits.float(), codes[:, i]) for i, logits in enumerate(self.logits(hidden, codes))]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def generate(
        self, hidden: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(N, llm_hidden) -> codes (N, L), greedy when temperature is 0."""
        codes = torch.zeros(hidden.shape[0], 0, dtype=torch.long, device=hidden.device)
        for head in self.heads:
            state = self.transformer(self._inputs(hidden, codes), causal=True)[:, -1]
            logits = head(state).float()
            if temperature > 0:
                choice = torch.multinomial(F.softmax(logits / temperature, -1), 1, generator=generator)
            else:
                choice = logits.argmax(-1, keepdim=True)
            codes = torch.cat([codes, choice], dim=-1)
        return codes


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * 1000 * frequencies[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class FlowMatchingDecoder(nn.Module):
    """Codes -> mel by conditional flow matching (sigma_min 1e-6, cosine time, CFG at inference).

    Each 12.5 Hz code becomes ``upsample`` mel-rate frames, told apart by a learned phase embedding
    (which of the frames under one code it is); the prenet and the velocity network then see rotary
    positions, so the order of frames matters and neighbouring codes shape each frame.
    """

    sigma_min = 1e-6

    def __init__(self, speech: SpeechConfig, audio: AudioConfig) -> None:
        super().__init__()
        self.speech = speech
        width = speech.flow_d_model
        self.code_embeddings = nn.ModuleList(nn.Embedding(size, width) for size in audio.codebook_sizes)
        self.upsample = round(speech.sampling_rate / speech.hop_length / audio.frame_rate)  # tokens -> mel frames
        self.phase = nn.Embedding(self.upsample, width)
        self.prenet = Transformer(width, speech.flow_heads, speech.flow_ffn_dim, max(1, speech.flow_layers // 2))
        self.to_condition = nn.Linear(width, speech.mel_bins)
        self.in_proj = nn.Linear(2 * speech.mel_bins, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.estimator = Transformer(width, speech.flow_heads, speech.flow_ffn_dim, speech.flow_layers)
        self.out_proj = nn.Linear(width, speech.mel_bins)

    def condition(self, codes: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, L) codes -> (B, T * upsample, mel_bins) conditions (the prenet's mel estimate).

        ``padding_mask`` (B, T * upsample) marks real mel frames when spans of different lengths
        share a batch.
        """
        embedded = sum(emb(codes[..., i]) for i, emb in enumerate(self.code_embeddings))  # (B, T, width)
        hidden = embedded.repeat_interleave(self.upsample, dim=1)  # type: ignore[union-attr]
        phase = torch.arange(hidden.shape[1], device=hidden.device) % self.upsample
        hidden = hidden + self.phase(phase)[None]
        return self.to_condition(self.prenet(hidden, padding_mask))

    def velocity(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args: x (B, F, mel) noisy mel, t (B,), condition (B, F, mel), padding_mask (B, F).
        Returns (B, F, mel)."""
        hidden = self.in_proj(torch.cat([x, condition], dim=-1))
        hidden = hidden + self.time(_timestep_embedding(t, hidden.shape[-1]).to(hidden.dtype))[:, None]
        return self.out_proj(self.estimator(hidden, padding_mask))

    def loss(
        self, codes: torch.Tensor, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-matching loss and the prenet's L1 loss on target mel.

        Args:
            codes: (B, T, L) speech codes (padded when spans differ in length).
            mel: (B, F, mel_bins) target mel, F <= T * upsample.
            mel_lengths: (B,) real mel frames per item; None means all F.

        Returns:
            (flow loss: MSE of the velocity field, prenet loss: L1 of the condition against mel).
        """
        frames = mel.shape[1]
        lengths = mel_lengths if mel_lengths is not None else torch.full((mel.shape[0],), frames, device=mel.device)
        mask = frame_mask(lengths, frames)  # (B, F)
        condition = self.condition(codes, F.pad(mask, (0, codes.shape[1] * self.upsample - frames)))[:, :frames]
        weights = mask[..., None].to(mel.dtype)
        denominator = weights.sum() * mel.shape[-1]
        prenet = ((condition - mel).abs() * weights).sum() / denominator
        guide = condition
        if self.training and self.speech.training_cfg_rate > 0:  # learn the unconditional field too
            keep = (torch.rand(mel.shape[0], 1, 1, device=mel.device) >= self.speech.training_cfg_rate).to(mel.dtype)
            guide = condition * keep
        t = 1 - torch.cos(torch.rand(mel.shape[0], device=mel.device) * math.pi / 2)  # cosine schedule
        noise = torch.randn_like(mel)
        x_t = (1 - (1 - self.sigma_min) * t[:, None, None]) * noise + t[:, None, None] * mel
        target = mel - (1 - self.sigma_min) * noise
        flow = ((self.velocity(x_t, t, guide, mask) - target).pow(2) * weights).sum() / denominator
        return flow, prenet

    @torch.no_grad()
    def sample(self, codes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler integration with classifier-free guidance: codes (B, T, L) -> mel (B, T * upsample, mel)."""
        condition = self.condition(codes)
        x = torch.randn(condition.shape, generator=generator, device=condition.device).to(condition.dtype)
        steps = self.speech.flow_steps
        times = 1 - torch.cos(torch.linspace(0, 1, steps + 1, device=x.device) * math.pi / 2)
        for start, end in itertools.pairwise(times):
            t = start.expand(x.shape[0])
            guided = self.velocity(x, t, condition)
            if self.speech.cfg_rate > 0:
                free = self.velocity(x, t, torch.zeros_like(condition))
                guided = (1 + self.speech.cfg_rate) * guided - self.speech.cfg_rate * free
            x = x + (end - start).to(x.dtype) * guided
        return x


def build_vocoder(speech: SpeechConfig) -> SpeechT5HifiGan:
    """A HiFi-GAN vocoder for ``mel_bins`` at ``sampling_rate`` with hop ``hop_length``.

    Each transposed convolution makes exactly ``rate`` samples per input sample: kernel 2 x rate
    for an even rate, 2 x rate + 1 for an odd one (with HiFi-GAN's padding (kernel - rate) // 2, a
    kernel of 2 x 5 would add a sample per layer and shift every later chunk).
    """
    config = SpeechT5HifiGanConfig(
        model_in_dim=speech.mel_bins,
        sampling_rate=speech.sampling_rate,
        upsample_initial_channel=speech.vocoder_channels,
        upsample_rates=list(speech.vocoder_upsample_rates),
        upsample_kernel_sizes=[2 * rate + rate % 2 for rate in speech.vocoder_upsample_rates],
        normalize_before=False,
    )
    config.upsample_rates_product = speech.hop_length
    return SpeechT5HifiGan(config)


class SpeechDecoder(nn.Module):
    """Flow matching then vocoder: RVQ codes -> waveform."""

    def __init__(self, speech: SpeechConfig, audio: AudioConfig) -> None:
        super().__init__()
        self.flow = FlowMatchingDecoder(speech, audio)
        self.vocoder = build_vocoder(speech)

    @torch.no_grad()
    def forward(self, codes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Args: codes (B, T, L). Returns: waveform (B, T * upsample * hop_length)."""
        mel = self.flow.sample(codes, generator=generator)
        wave = self.vocoder(mel)
        wave = wave if wave.dim() == 2 else wave[None]
        return wave[:, : mel.shape[1] * self.vocoder.config.upsample_rates_product]
