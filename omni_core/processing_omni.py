"""Processor: chat messages with images, series, audio and speech to model inputs, and back.

It takes what ``medical_data`` produces (MetaTensors ``(C, D, H, W)`` in [0, 1] with header facts,
16 kHz mono float32 audio, note text) and a tokenizer (any object with ``encode(text) -> ids`` and
``decode(ids) -> text``, e.g. a Hugging Face tokenizer). The chat template is ChatML:

    <|im_start|>user\n[CT | CHEST | lung window] <image_start><image_pad>...<image_end> question<|im_end|>\n
    <|im_start|>assistant\n answer <audiogen_start><audiogen_pad>...<audiogen_end><|im_end|>\n

Special tokens are inserted by id, never parsed out of user text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from omni_core.configuration_omni import OmniConfig
from omni_core.modeling_audio import log_mel, tokens_for_frames
from omni_core.modeling_omni import DecodingOptions, OmniForConditionalGeneration
from omni_core.modeling_vision import patchify

IGNORE = -100
SENTENCE_ENDS = (".", "!", "?", ";", "\n")
CROSSFADE_S = 0.01
DEFAULT_DECODING = DecodingOptions()


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass
class Part:
    """One piece of a message."""

    kind: Literal["text", "image", "audio", "speech"]
    value: Any
    """text: str; image: (C, D, H, W) or (C, H, W) tensor in [0, 1] (a MetaTensor keeps its facts);
    audio: 16 kHz mono float32 array; speech: (K, L) RVQ codes of an answer spoken aloud."""


@dataclass
class Message:
    role: Literal["system", "user", "assistant"]
    parts: list[Part]


@dataclass
class ModelInputs:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_patches: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    audio_mel: list[torch.Tensor] = field(default_factory=list)
    speech_codes: torch.Tensor | None = None

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "pixel_patches": self.pixel_patches,
            "image_grid_thw": self.image_grid_thw,
            "audio_mel": self.audio_mel or None,
        }


@dataclass(frozen=True)
class StreamEvent:
    """A text delta, or a chunk of spoken audio (float32 at ``sample_rate``)."""

    text: str = ""
    audio: np.ndarray | None = None
    sample_rate: int = 0


def image_facts(image: Any) -> str:
    """A short line of header facts from a MetaTensor's meta (modality, body part, window)."""
    meta = getattr(image, "meta", None) or {}
    facts = [str(meta.get(key, "")).strip() for key in ("Modality", "BodyPartExamined")]
    window = meta.get("window") or []
    if window:
        facts.append(f"{window[0][0]} window")
    facts = [fact for fact in facts if fact]
    return f"[{' | '.join(facts)}] " if facts else ""


class OmniProcessor:
    """Messages to ``ModelInputs``; generation back to text deltas and spoken audio."""

    def __init__(self, config: OmniConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.ids = config.special_token_ids
        self._sentence_end_ids: frozenset[int] | None = None

    def sentence_end_ids(self) -> frozenset[int]:
        """Token ids whose text ends a sentence (found once by decoding the vocabulary)."""
        if self._sentence_end_ids is None:
            vocabulary = self.config.base_vocab_size or self.config.text.vocab_size
            self._sentence_end_ids = frozenset(
                i for i in range(vocabulary) if self.tokenizer.decode([i]).rstrip().endswith((".", "!", "?"))
            )
        return self._sentence_end_ids

    def _text(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text))
        base = self.config.base_vocab_size or self.config.text.vocab_size
        if any(i >= base for i in ids):
            raise ValueError("the tokenizer produced ids beyond the text backbone's vocabulary")
        return ids

    def _image(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        plain = image.as_tensor() if hasattr(image, "as_tensor") else image  # a MetaTensor's meta stays here
        pixels = torch.as_tensor(plain, dtype=torch.float32)
        if pixels.dim() == 3:
            pixels = pixels[:, None]  # (C, 1, H, W)
        channels, depth, height, width = pixels.shape
        if channels == 1:
            pixels = pixels.expand(3, depth, height, width)
        factor = self.config.vision.merge_factor
        if height % factor or width % factor or height * width > self.config.vision.max_pixels:
            from medical_data.transforms import native_resolution_size

            size = native_resolution_size(
                height,
                width,
                factor=factor,
                min_pixels=self.config.vision.min_pixels,
                max_pixels=self.config.vision.max_pixels,
            )
            pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        if depth > self.config.vision.max_frames:
            pixels = pixels[:, torch.linspace(0, depth - 1, self.config.vision.max_frames).round().long()]
        mean = torch.tensor(self.config.vision.image_mean)[:, None, None, None]
        std = torch.tensor(self.config.vision.image_std)[:, None, None, None]
        frames = ((pixels - mean) / std).permute(1, 0, 2, 3)  # (D, 3, H, W)
        return patchify(frames, self.config.vision)

    def __call__(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> ModelInputs:
        """Build inputs; labels cover the assistant's turns only (text and speech end markers)."""
        ids, labels = [], []
        patches, grids, mels, speech = [], [], [], []
        start, end, newline = self._text("<|im_start|>"), self._text("<|im_end|>"), self._text("\n")
        for message in messages:
            trained = message.role == "assistant"
            turn = start + self._text(message.role) + newline
            turn_labels = [IGNORE] * len(turn)
            for part in message.parts:
                pieces = self._part(part, patches, grids, mels, speech)
                turn += pieces
                turn_labels += pieces if trained else [IGNORE] * len(pieces)
            turn += end + newline
            turn_labels += (end + newline) if trained else [IGNORE] * len(end + newline)
            ids += turn
            labels += turn_labels
        if add_generation_prompt:
            prompt = start + self._text("assistant") + newline
            ids += prompt
            labels += [IGNORE] * len(prompt)
        labels = [
            IGNORE
            if t in (self.ids["audiogen_pad"], self.ids["image_pad"], self.ids["audio_pad"], self.ids["video_pad"])
            else t
            for t in labels
        ]
        tensor = torch.tensor([ids])
        return ModelInputs(
            input_ids=tensor,
            attention_mask=torch.ones_like(tensor),
            labels=torch.tensor([labels]),
            pixel_patches=torch.cat(patches) if patches else None,
            image_grid_thw=torch.tensor(grids) if grids else None,
            audio_mel=mels,
            speech_codes=torch.cat(speech) if speech else None,
        )

    def _part(self, part: Part, patches: list, grids: list, mels: list, speech: list) -> list[int]:  # type: ignore[type-arg]
        ids = self.ids
        if part.kind == "text":
            return self._text(str(part.value))
        if part.kind == "image":
            patch_rows, grid = self._image(part.value)
            patches.append(patch_rows)
            grids.append(grid)
            tokens = grid[0] * grid[1] * grid[2] // self.config.vision.spatial_merge_size**2
            pad = ids["video_pad"] if grid[0] > 1 else ids["image_pad"]
            opening, closing = ("video_start", "video_end") if grid[0] > 1 else ("image_start", "image_end")
            return self._text(image_facts(part.value)) + [ids[opening]] + [pad] * tokens + [ids[closing]]
        if part.kind == "audio":
            samples = np.asarray(part.value, dtype=np.float32)
            limit = self.config.audio.max_audio_seconds
            if len(samples) > limit * self.config.audio.sampling_rate:
                raise ValueError(f"an audio part is longer than {limit} s, the audio tokenizer's window: split it")
            mel = torch.from_numpy(log_mel(samples, self.config.audio))
            mels.append(mel)
            return (
                [ids["audio_start"]]
                + [ids["audio_pad"]] * tokens_for_frames(mel.shape[-1], self.config.audio)
                + [ids["audio_end"]]
            )
        if part.kind == "speech":
            codes = torch.as_tensor(part.value, dtype=torch.long)
            speech.append(codes)
            return [ids["audiogen_start"]] + [ids["audiogen_pad"]] * codes.shape[0] + [ids["audiogen_end"]]
        raise ValueError(f"unknown part kind {part.kind!r}")

    def stream(
        self,
        model: OmniForConditionalGeneration,
        messages: Sequence[Message],
        *,
        options: DecodingOptions = DEFAULT_DECODING,
        audio_chunk_frames: int = 50,
        speak_sentences: bool = True,
    ) -> Iterator[StreamEvent]:
        """Generate an answer: text deltas as tokens arrive, speech in chunks as frames arrive.

        With ``speak_sentences`` (the released demo's scheme) each sentence is written, then spoken:
        the model is switched into a speech span at every sentence end. Speech frames are vocoded
        every ``audio_chunk_frames`` frames and at the end of a span; consecutive chunks are
        cross-faded over 10 ms.
        """
        if speak_sentences and options.speech and not options.sentence_end_ids:
            options = dataclasses.replace(options, sentence_end_ids=self.sentence_end_ids())
        inputs = self(messages, add_generation_prompt=True)
        text_ids: list[int] = []
        shown = ""
        frames: list[torch.Tensor] = []
        tail: np.ndarray | None = None
        specials = set(self.ids.values())
        for step in model.stream(inputs.input_ids, options=options, **inputs.model_kwargs()):
            if step.audio_codes is not None:
                frames.append(step.audio_codes)
                if len(frames) >= audio_chunk_frames:
                    audio, tail = self._vocode(model, frames, tail)
                    frames = []
                    yield StreamEvent(audio=audio, sample_rate=self.config.speech.sampling_rate)
                continue
            if step.token_id == self.ids["audiogen_end"] and frames:
                audio, tail = self._vocode(model, frames, tail)
                frames = []
                yield StreamEvent(audio=audio, sample_rate=self.config.speech.sampling_rate)
            if step.token_id in specials or step.token_id == self.config.text.eos_token_id:
                continue
            text_ids.append(int(step.token_id))  # type: ignore[arg-type]
            decoded = self.tokenizer.decode(text_ids)
            if len(decoded) > len(shown):
                yield StreamEvent(text=decoded[len(shown) :])
                shown = decoded
        if frames:
            audio, tail = self._vocode(model, frames, tail)
            yield StreamEvent(audio=audio, sample_rate=self.config.speech.sampling_rate)
        if tail is not None and len(tail):
            yield StreamEvent(audio=tail, sample_rate=self.config.speech.sampling_rate)

    def _vocode(
        self, model: OmniForConditionalGeneration, frames: list[torch.Tensor], tail: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        if model.speech_decoder is None:
            raise ValueError("this model was built without the speech branch")
        wave = model.speech_decoder(torch.stack(frames)[None])[0].float().numpy()
        fade = int(CROSSFADE_S * self.config.speech.sampling_rate)
        if tail is not None and len(tail) and len(wave) > fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            wave[:fade] = wave[:fade] * ramp + tail[:fade] * (1 - ramp)
        if len(wave) <= fade:
            return wave, np.zeros(0, np.float32)
        return wave[:-fade], wave[-fade:]
