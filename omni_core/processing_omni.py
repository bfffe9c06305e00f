"""Processor: chat messages with images, series, audio and speech to model inputs, and back.

It takes what ``medical_data`` produces (MetaTensors ``(C, D, H, W)`` in [0, 1] with header facts,
16 kHz mono float32 audio, note text) and the backbone's tokenizer (a transformers tokenizer, or any
object with ``encode``, ``decode`` and ``convert_tokens_to_ids``). The chat template is ChatML:

    <|im_start|>user\n[CT | CHEST | lung window] <image_start><image_pad>...<image_end> question<|im_end|>\n
    <|im_start|>assistant\n answer <audiogen_start><audiogen_pad>...<audiogen_end><|im_end|>\n

Control tokens (the template's and the model's) are inserted by id and never parsed out of text:
questions, transcripts, notes and DICOM header facts are encoded with every control token's string
broken in two, and a tokenizer that still returns a control id is refused, so no user can write the
assistant's turn.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from omni_core.configuration_omni import OmniConfig
from omni_core.modeling_audio import log_mel, tokens_for_frames
from omni_core.modeling_omni import DecodingOptions, OmniForConditionalGeneration
from omni_core.modeling_vision import patchify
from omni_core.speech.normalize import split_sentences

IGNORE = -100
CROSSFADE_S = 0.01
DEFAULT_DECODING = DecodingOptions()
CHAT_START, CHAT_END = "<|im_start|>", "<|im_end|>"


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def convert_tokens_to_ids(self, token: str) -> int | None: ...


class ControlTokenInText(ValueError):
    """The tokenizer turned text into a control token (it would let text steer the conversation)."""


class InputTooLong(ValueError):
    """The inputs need more tokens than the backbone's context holds."""


@dataclass
class Part:
    """One piece of a message."""

    kind: Literal["text", "image", "audio", "speech"]
    value: Any
    """text: str; image: (C, D, H, W) or (C, H, W) tensor in [0, 1] (a MetaTensor keeps its facts);
    audio: 16 kHz mono float32 array; speech: (K, L) RVQ codes of an answer spoken aloud, or
    ``SpeechTarget`` (codes with the mel they should sound like, for the flow loss)."""


@dataclass
class SpeechTarget:
    codes: torch.Tensor
    """(K, L) RVQ codes."""
    mel: torch.Tensor | None = None
    """(frames, speech mel_bins) target mel at the speech decoder's rate."""


@dataclass
class SpeechAudio:
    """An answer's speech as audio, for training: the model's own audio tokenizer turns it into the
    audio head's target codes inside ``forward`` (so the codes always match the tokenizer)."""

    samples: np.ndarray
    """16 kHz mono float32 (the audio tokenizer's input)."""
    mel: torch.Tensor | None = None
    """(frames, speech mel_bins) flow target (``speech_log_mel`` of the audio at the decoder's rate)."""


ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: Literal["system", "user", "assistant"]
    parts: list[Part]

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"a message's role is one of {', '.join(ROLES)}")


@dataclass
class ModelInputs:
    """One conversation (B = 1) or a collated batch of them."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    pixel_patches: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    audio_mel: list[torch.Tensor] = field(default_factory=list)
    speech_codes: torch.Tensor | None = None
    speech_lengths: list[int] = field(default_factory=list)
    speech_mel: list[torch.Tensor] = field(default_factory=list)
    """One target per speech span, or empty when no span has one."""
    speech_audio_mel: list[torch.Tensor] = field(default_factory=list)
    """Log-mel (num_mel_bins, frames) of each speech span given as audio (``SpeechAudio``), in order."""
    segment_ids: torch.Tensor | None = None
    """(B, S) with packed conversations: 1, 2, ... per conversation in a row, 0 for padding."""

    def model_kwargs(self) -> dict[str, Any]:
        """The inputs generation needs beside ``input_ids``."""
        return {
            "pixel_patches": self.pixel_patches,
            "image_grid_thw": self.image_grid_thw,
            "audio_mel": self.audio_mel or None,
        }

    def forward_kwargs(self) -> dict[str, Any]:
        """Everything ``OmniForConditionalGeneration.forward`` takes, targets included."""
        return self.model_kwargs() | {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "labels": self.labels,
            "speech_codes": self.speech_codes,
            "speech_lengths": self.speech_lengths or None,
            "speech_mel": self.speech_mel or None,
            "speech_audio_mel": self.speech_audio_mel or None,
            "segment_ids": self.segment_ids,
        }

    @property
    def tokens(self) -> int:
        """Real (not padding) tokens."""
        return int(self.attention_mask.sum())


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
        self.chat_start, self.chat_end = self._chat_token(CHAT_START), self._chat_token(CHAT_END)
        self._added = added = _added_tokens(tokenizer)
        self.control_ids = frozenset(
            {*self.ids.values(), *config.reserved_token_ids, self.chat_start, self.chat_end, *added.values()}
        )
        # strings the tokenizer would turn into a control id: broken up wherever they appear in text
        strings = sorted({*added, CHAT_START, CHAT_END}, key=len, reverse=True)
        self._control_strings = re.compile("|".join(re.escape(string) for string in strings if string))

    def _chat_token(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        unknown = getattr(self.tokenizer, "unk_token_id", None)
        if token_id is None or (token_id == unknown and unknown is not None):
            raise ValueError(f"the tokenizer has no {token} token: the ChatML template needs it")
        return int(token_id)

    # -- text -------------------------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        """Ids of plain text. A control token's string in it (a special token, any added token, the
        ChatML markers) stays text: it is encoded in two pieces, so no tokenizer can match it."""
        ids: list[int] = []
        position = 0
        for match in self._control_strings.finditer(text):
            ids += self._encode_plain(text[position : match.start()])
            string = match.group()
            ids += self._encode_plain(string[:1]) + self.encode_text(string[1:])
            position = match.end()
        ids += self._encode_plain(text[position:])
        if self.control_ids.intersection(ids):
            raise ControlTokenInText("the tokenizer turned text into control tokens; it must split special tokens")
        if any(not 0 <= i < self.config.text.vocab_size for i in ids):
            raise ValueError("the tokenizer produced ids beyond the text backbone's vocabulary")
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        if hasattr(self.tokenizer, "all_special_ids") and callable(self.tokenizer):  # a transformers tokenizer
            return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
        return list(self.tokenizer.encode(text))

    def stop_token_ids(self) -> tuple[int, ...]:
        """What ends an answer: the end of a ChatML turn, the start of another one (a model that
        begins a turn has finished its own), the tokenizer's end of sequence and ``<|endoftext|>``."""
        stops = {self.chat_end, self.chat_start}
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is not None:
            stops.add(int(eos))
        end_of_text = self._added.get("<|endoftext|>")
        if end_of_text is not None:
            stops.add(end_of_text)
        return tuple(sorted(stops))

    def sentence_boundary(self, spoken: Sequence[int], next_id: int | None) -> bool:
        """Did a sentence end before ``next_id``? Decided on decoded text by the speech engines'
        sentence splitter, so "3.2 cm", "e.g." and "Dr." do not end one. With ``next_id`` None (the
        answer ends): is there any text left to say?"""
        before = self.tokenizer.decode(list(spoken))
        if not before.strip():
            return False
        if next_id is None:
            return True
        after = self.tokenizer.decode([*spoken, next_id])
        return len(split_sentences(after)) > len(split_sentences(before))

    # -- images -----------------------------------------------------------------------------------
    def _image(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        from medical_data.transforms import native_resolution_size

        vision = self.config.vision
        plain = image.as_tensor() if hasattr(image, "as_tensor") else image  # a MetaTensor's meta stays here
        pixels = torch.as_tensor(plain, dtype=torch.float32)
        if pixels.dim() == 3:
            pixels = pixels[:, None]  # (C, 1, H, W)
        channels, depth, height, width = pixels.shape
        if depth > vision.max_frames:  # thin first: only the frames kept are resized
            if vision.slab_projection == "max" and channels == 1:  # grey: each kept frame its slab's MIP
                edges = torch.linspace(0, depth, vision.max_frames + 1).round().long().tolist()
                pixels = torch.stack([pixels[:, a:b].amax(dim=1) for a, b in itertools.pairwise(edges)], dim=1)
            else:
                pixels = pixels[:, torch.linspace(0, depth - 1, vision.max_frames).round().long()]
            depth = vision.max_frames
        size = native_resolution_size(
            height, width, factor=vision.merge_factor, min_pixels=vision.min_pixels, max_pixels=vision.max_pixels
        )
        per_frame = (size[0] // vision.merge_factor) * (size[1] // vision.merge_factor)
        tokens = -(-depth // vision.temporal_patch_size) * per_frame
        context = self.config.text.max_position_embeddings
        if tokens > context:
            raise InputTooLong(f"an image or series needs {tokens} tokens; the model's context holds {context}")
        if channels == 1:
            pixels = pixels.expand(3, depth, height, width)
        if size != (height, width):
            pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(vision.image_mean)[:, None, None, None]
        std = torch.tensor(vision.image_std)[:, None, None, None]
        frames = ((pixels - mean) / std).permute(1, 0, 2, 3)  # (D, 3, H, W)
        return patchify(frames, vision)

    # -- conversations ----------------------------------------------------------------------------
    def __call__(self, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> ModelInputs:
        """Build inputs; labels cover the assistant's turns only.

        In an assistant turn every token is a target, speech frames included: the target after each
        frame is ``audiogen_pad`` while the span goes on and ``audiogen_end`` where it stops, so a
        model learns the length of what it says. Image and input-audio placeholders are never targets.
        """
        ids: list[int] = []
        labels: list[int] = []
        collected: dict[str, list[Any]] = {
            "patches": [],
            "grids": [],
            "mels": [],
            "speech": [],
            "speech_mel": [],
            "speech_audio": [],
            "speech_lengths": [],
        }
        newline = self.encode_text("\n")
        for message in messages:
            trained = message.role == "assistant"
            turn = [self.chat_start, *self.encode_text(message.role), *newline]
            turn_labels = [IGNORE] * len(turn)
            for part in message.parts:
                pieces = self._part(part, collected)
                turn += pieces
                turn_labels += pieces if trained else [IGNORE] * len(pieces)
            closing = [self.chat_end, *newline]
            turn += closing
            turn_labels += closing if trained else [IGNORE] * len(closing)
            ids += turn
            labels += turn_labels
        if add_generation_prompt:
            prompt = [self.chat_start, *self.encode_text("assistant"), *newline]
            ids += prompt
            labels += [IGNORE] * len(prompt)
        context = self.config.text.max_position_embeddings
        if len(ids) > context:
            raise InputTooLong(f"the conversation needs {len(ids)} tokens; the model's context holds {context}")
        inputs_only = {self.ids[name] for name in ("image_pad", "video_pad", "audio_pad")}
        labels = [IGNORE if t in inputs_only else t for t in labels]
        speech_mel = collected["speech_mel"]
        if any(mel is None for mel in speech_mel):
            speech_mel = []  # a flow target for some spans only is no target
        if collected["speech"] and collected["speech_audio"]:
            raise ValueError("a conversation gives speech as codes or as audio, not both")
        tensor = torch.tensor([ids])
        return ModelInputs(
            input_ids=tensor,
            attention_mask=torch.ones_like(tensor),
            labels=torch.tensor([labels]),
            pixel_patches=torch.cat(collected["patches"]) if collected["patches"] else None,
            image_grid_thw=torch.tensor(collected["grids"]) if collected["grids"] else None,
            audio_mel=collected["mels"],
            speech_codes=torch.cat(collected["speech"]) if collected["speech"] else None,
            speech_lengths=collected["speech_lengths"],
            speech_mel=speech_mel,
            speech_audio_mel=collected["speech_audio"],
        )

    def _part(self, part: Part, collected: dict[str, list[Any]]) -> list[int]:
        ids = self.ids
        if part.kind == "text":
            return self.encode_text(str(part.value))
        if part.kind == "image":
            patch_rows, grid = self._image(part.value)
            collected["patches"].append(patch_rows)
            collected["grids"].append(grid)
            tokens = grid[0] * grid[1] * grid[2] // self.config.vision.spatial_merge_size**2
            pad = ids["video_pad"] if grid[0] > 1 else ids["image_pad"]
            opening, closing = ("video_start", "video_end") if grid[0] > 1 else ("image_start", "image_end")
            return self.encode_text(image_facts(part.value)) + [ids[opening]] + [pad] * tokens + [ids[closing]]
        if part.kind == "audio":
            mel = torch.from_numpy(log_mel(self._checked_samples(part.value), self.config.audio))
            collected["mels"].append(mel)
            tokens = tokens_for_frames(mel.shape[-1], self.config.audio)
            return [ids["audio_start"]] + [ids["audio_pad"]] * tokens + [ids["audio_end"]]
        if part.kind == "speech" and isinstance(part.value, SpeechAudio):
            mel = torch.from_numpy(log_mel(self._checked_samples(part.value.samples), self.config.audio))
            frames = tokens_for_frames(mel.shape[-1], self.config.audio)
            collected["speech_audio"].append(mel)
            collected["speech_lengths"].append(frames)
            collected["speech_mel"].append(None if part.value.mel is None else torch.as_tensor(part.value.mel).float())
            return [ids["audiogen_start"]] + [ids["audiogen_pad"]] * frames + [ids["audiogen_end"]]
        if part.kind == "speech":
            target = part.value if isinstance(part.value, SpeechTarget) else SpeechTarget(part.value)
            codes = torch.as_tensor(target.codes, dtype=torch.long)
            if codes.dim() != 2 or codes.shape[1] != self.config.audio.num_quantizers or not len(codes):
                raise ValueError(f"speech codes must be (frames >= 1, {self.config.audio.num_quantizers})")
            collected["speech"].append(codes)
            collected["speech_lengths"].append(codes.shape[0])
            collected["speech_mel"].append(None if target.mel is None else torch.as_tensor(target.mel).float())
            return [ids["audiogen_start"]] + [ids["audiogen_pad"]] * codes.shape[0] + [ids["audiogen_end"]]
        raise ValueError(f"unknown part kind {part.kind!r}")

    def _checked_samples(self, value: Any) -> np.ndarray:
        samples = np.asarray(value, dtype=np.float32)
        limit = self.config.audio.max_audio_seconds
        if len(samples) > limit * self.config.audio.sampling_rate:
            raise ValueError(f"an audio part is longer than {limit} s, the audio tokenizer's window: split it")
        if samples.ndim != 1 or len(samples) < self.config.audio.n_fft:
            shortest = 1000 * self.config.audio.n_fft / self.config.audio.sampling_rate
            raise ValueError(f"an audio part must be mono and at least {shortest:.0f} ms long: record it again")
        if not np.all(np.isfinite(samples)):
            raise ValueError("an audio part holds invalid samples (NaN or infinity)")
        return samples

    # -- answers ----------------------------------------------------------------------------------
    def decoding_options(
        self, options: DecodingOptions = DEFAULT_DECODING, *, speak_sentences: bool = True
    ) -> DecodingOptions:
        """``options`` with this tokenizer's stop tokens and, for ``speak_sentences``, its sentence ends."""
        return dataclasses.replace(
            options,
            stop_token_ids=tuple(sorted({*options.stop_token_ids, *self.stop_token_ids()})),
            sentence_boundary=options.sentence_boundary
            or (self.sentence_boundary if speak_sentences and options.speech else None),
        )

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
        options = self.decoding_options(options, speak_sentences=speak_sentences)
        inputs = self(messages, add_generation_prompt=True)
        text_ids: list[int] = []
        shown = ""
        frames: list[torch.Tensor] = []
        tail: np.ndarray | None = None
        skipped = self.control_ids | {self.config.text.eos_token_id}
        rate = self.config.speech.sampling_rate
        noise = None if options.seed is None else torch.Generator(device=model.device).manual_seed(options.seed)
        for step in model.stream(inputs.input_ids, options=options, **inputs.model_kwargs()):
            if step.audio_codes is not None:
                frames.append(step.audio_codes)
                if len(frames) >= audio_chunk_frames:
                    audio, tail = self._vocode(model, frames, tail, noise)
                    frames = []
                    yield StreamEvent(audio=audio, sample_rate=rate)
                continue
            if step.token_id == self.ids["audiogen_end"] and frames:
                audio, tail = self._vocode(model, frames, tail, noise)
                frames = []
                yield StreamEvent(audio=audio, sample_rate=rate)
            if step.token_id in skipped:
                continue
            text_ids.append(int(step.token_id))  # type: ignore[arg-type]
            decoded = self.tokenizer.decode(text_ids)
            if len(decoded) > len(shown):
                yield StreamEvent(text=decoded[len(shown) :])
                shown = decoded
        if frames:
            audio, tail = self._vocode(model, frames, tail, noise)
            yield StreamEvent(audio=audio, sample_rate=rate)
        if tail is not None and len(tail):
            yield StreamEvent(audio=tail, sample_rate=rate)

    def _vocode(
        self,
        model: OmniForConditionalGeneration,
        frames: list[torch.Tensor],
        tail: np.ndarray | None,
        noise: torch.Generator | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flow matching and vocoder over a chunk of frames (the flow's noise from ``noise``)."""
        if model.speech_decoder is None:
            raise ValueError("this model was built without the speech branch")
        wave = model.speech_decoder(torch.stack(frames)[None], generator=noise)[0].float().cpu().numpy()
        fade = int(CROSSFADE_S * self.config.speech.sampling_rate)
        if tail is not None and len(tail) and len(wave) > fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            wave[:fade] = wave[:fade] * ramp + tail[:fade] * (1 - ramp)
        if len(wave) <= fade:
            return wave, np.zeros(0, np.float32)
        return wave[:-fade], wave[-fade:]


def _added_tokens(tokenizer: object) -> dict[str, int]:
    """Every token a transformers tokenizer matches as a whole string: its special tokens and all its
    added tokens, special or not (Qwen2.5 leaves ``<tool_call>`` and ``<|fim_*|>`` unflagged)."""
    found = {
        str(token.content): int(i) for i, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
    }
    specials = getattr(tokenizer, "all_special_tokens", None) or []
    ids = getattr(tokenizer, "all_special_ids", None) or []
    found |= {str(token): int(i) for token, i in zip(specials, ids, strict=False)}
    return found


@dataclass(frozen=True)
class OmniCollator:
    """Pads processed conversations into one batch, for training and for batched inference.

    ``input_ids`` are padded with ``pad_token_id`` (attention 0, labels -100), on the right for
    training or on the left for batched generation; images, audio and speech are concatenated in
    conversation order, which is the order the model fills placeholders in.
    """

    pad_token_id: int
    padding_side: Literal["right", "left"] = "right"

    def __call__(self, batch: Sequence[ModelInputs]) -> ModelInputs:
        if not batch:
            raise ValueError("an empty batch")
        longest = max(item.input_ids.shape[1] for item in batch)

        def pad(tensor: torch.Tensor, value: int) -> torch.Tensor:
            fill = torch.full((tensor.shape[0], longest - tensor.shape[1]), value, dtype=tensor.dtype)
            return torch.cat([tensor, fill] if self.padding_side == "right" else [fill, tensor], dim=1)

        packed = any(item.segment_ids is not None for item in batch)
        return ModelInputs(
            input_ids=torch.cat([pad(item.input_ids, self.pad_token_id) for item in batch]),
            attention_mask=torch.cat([pad(item.attention_mask, 0) for item in batch]),
            labels=torch.cat([pad(item.labels, IGNORE) for item in batch]),
            segment_ids=torch.cat([pad(_segments(item), 0) for item in batch]) if packed else None,
            **_media(batch),
        )


def _media(items: Sequence[ModelInputs]) -> dict[str, Any]:
    """The media of several conversations, concatenated in their order (the order placeholders fill)."""

    def concatenated(name: str) -> torch.Tensor | None:
        tensors = [getattr(item, name) for item in items if getattr(item, name) is not None]
        return torch.cat(tensors) if tensors else None

    with_speech = [item for item in items if item.speech_lengths]
    return {
        "pixel_patches": concatenated("pixel_patches"),
        "image_grid_thw": concatenated("image_grid_thw"),
        "audio_mel": [mel for item in items for mel in item.audio_mel],
        "speech_codes": concatenated("speech_codes"),
        "speech_lengths": [n for item in items for n in item.speech_lengths],
        "speech_mel": [mel for item in with_speech for mel in item.speech_mel]
        if all(item.speech_mel for item in with_speech)
        else [],
        "speech_audio_mel": [mel for item in items for mel in item.speech_audio_mel],
    }


def _segments(item: ModelInputs) -> torch.Tensor:
    return item.segment_ids if item.segment_ids is not None else item.attention_mask.long()


def pack(items: Sequence[ModelInputs], max_tokens: int) -> list[ModelInputs]:
    """Sequence packing: conversations (B = 1 each, in order) concatenated into rows of at most
    ``max_tokens``, first fit, each marked by its own segment id, so that the model attends within a
    conversation only and restarts positions at each (no padding is spent between them).

    Media stay in conversation order within a row, which is the order the model fills placeholders in.
    """
    rows: list[list[ModelInputs]] = []
    room: list[int] = []
    for item in items:
        if item.input_ids.shape[0] != 1:
            raise ValueError("pack takes single conversations (B = 1)")
        length = item.input_ids.shape[1]
        if length > max_tokens:
            raise ValueError(f"a conversation of {length} tokens does not fit a packed row of {max_tokens}")
        index = next((i for i, free in enumerate(room) if length <= free), None)
        if index is None:
            rows.append([])
            room.append(max_tokens)
            index = len(rows) - 1
        rows[index].append(item)
        room[index] -= length

    def labels(row: list[ModelInputs]) -> torch.Tensor:
        joined = []
        for index, item in enumerate(row):
            own = item.labels.clone()
            if index:
                own[:, 0] = IGNORE  # never learnt from the previous conversation's last token
            joined.append(own)
        return torch.cat(joined, dim=1)

    return [
        ModelInputs(
            input_ids=torch.cat([item.input_ids for item in row], dim=1),
            attention_mask=torch.cat([item.attention_mask for item in row], dim=1),
            labels=labels(row),
            segment_ids=torch.cat([torch.full_like(item.input_ids, n) for n, item in enumerate(row, 1)], dim=1),
            **_media(row),
        )
        for row in rows
    ]
