"""The omni model: vision encoder, audio tokenizer, LLM backbone and speech branch, composed.

Compose, don't inherit (torchtune's ``DeepFusionModel``): the LLM is any Hugging Face causal LM
driven through ``inputs_embeds``; images fill their ``image_pad``/``video_pad`` placeholders, audio
fills ``audio_pad`` with embedded RVQ codes, and generated speech frames sit at ``audiogen_pad``
positions, whose hidden states the audio head turns into the next frame's codes. The speech branch
is built only when ``config.speech.enabled``. Freezing is a flag per part.

Speech spans are learnable end to end: the text head's target after every frame is either
``audiogen_pad`` (another frame follows) or ``audiogen_end``, so a trained model knows when to stop.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
from transformers.utils import ModelOutput

from omni_core.configuration_omni import LOSS_NAMES, OmniConfig
from omni_core.loading import (
    CheckpointError,
    cast_parameters,
    empty_weights,
    iter_tensors,
    meta_tensors,
    place,
    safetensors_files,
)
from omni_core.losses import chunked_cross_entropy
from omni_core.modeling_audio import AudioEmbedding, AudioTokenizer, pad_mels, tokens_for_frames
from omni_core.modeling_layers import Transformer
from omni_core.modeling_speech_decoder import AudioHead, SpeechDecoder
from omni_core.modeling_vision import OmniVisionEncoder

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PARTS = ("vision", "projector", "audio_tokenizer", "audio_embedding", "llm", "audio_head", "speech_decoder")
LOADABLE_PARTS = ("vision", "audio_tokenizer", "audio_embedding", "llm", "audio_head", "speech_decoder")
EMPTY_PARTS = (*LOADABLE_PARTS, "audio_tokenizer.encoder")
"""Parts that can be built empty (on the meta device) to be loaded."""

SentenceBoundary = Callable[[Sequence[int], int | None], bool]
"""(text ids written since the last speech span, the next id) -> did a sentence end before it?
With None for the next id (the answer ends): is there anything left to say?"""


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode (a frozen dataclass, as openai/whisper's ``DecodingOptions``)."""

    max_new_tokens: int = 256
    """Text tokens (speech-span markers included; speech frames are counted by max_audio_frames)."""
    temperature: float = 0.0
    """0 is greedy."""
    top_k: int = 0
    """Sample among the k likeliest tokens only (0: all)."""
    top_p: float = 1.0
    """Sample among the smallest set of tokens whose probability reaches p (1: all)."""
    seed: int | None = None
    use_cache: bool = True
    speech: bool = True
    """Generate audio frames after ``audiogen_start`` (when the speech branch exists)."""
    max_audio_frames: int = 500
    """Frames per speech span at most (the released demo's 500)."""
    audio_temperature: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    """Tokens that end the answer (the processor gives the tokenizer's); the config's eos always does."""
    sentence_boundary: SentenceBoundary | None = None
    """Speak each sentence as it ends (the released demo's scheme): when this says a sentence ended
    before the next token, a speech span is opened instead, and the text still unspoken at a stop
    token is spoken before stopping. None: speech only where the model starts it itself."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or self.max_audio_frames < 1:
            raise ValueError("max_new_tokens and max_audio_frames must be >= 1, temperature >= 0")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("top_k must be >= 0 and top_p in (0, 1]")


DEFAULT_DECODING = DecodingOptions()


@dataclass
class OmniOutput(ModelOutput):
    """What ``forward`` returns; attribute and key access, as transformers' outputs.

    ``losses`` holds each computed loss by name (``LOSS_NAMES``), unweighted; ``loss`` is their sum
    weighted by ``config.loss_weights``.
    """

    loss: torch.Tensor | None = None
    losses: dict[str, torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


@dataclass
class GenerationStep:
    """One step of generation: a text token, or one speech frame (its RVQ codes)."""

    token_id: int | None = None
    audio_codes: torch.Tensor | None = None


@dataclass
class GenerationResult:
    token_ids: list[int] = field(default_factory=list)
    """Generated tokens, special ones included; a speech span is audiogen_start, K x audiogen_pad, end."""
    audio_codes: list[torch.Tensor] = field(default_factory=list)
    """One (K, L) tensor per generated speech span."""


def build_llm(config: OmniConfig) -> nn.Module:
    kind = Qwen2Config if config.text.model_type == "qwen2" else LlamaConfig
    return AutoModelForCausalLM.from_config(kind(**config.text.hf_kwargs()))


def _maybe_empty(empty: bool) -> AbstractContextManager[None]:
    return empty_weights() if empty else nullcontext()


class OmniForConditionalGeneration(nn.Module):
    """Images (2D, 3D series), audio and text in; text and speech out."""

    def __init__(self, config: OmniConfig, *, empty_parts: Collection[str] = ()) -> None:
        """Build every part; those named in ``empty_parts`` (``EMPTY_PARTS``) get meta-device
        parameters, to be filled by a loader (``from_pretrained``, ``from_components``)."""
        super().__init__()
        unknown = set(empty_parts) - set(EMPTY_PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}")
        self.config = config
        hidden = config.text.hidden_size
        with _maybe_empty("vision" in empty_parts):
            self.vision = OmniVisionEncoder(config.vision, hidden)
        with _maybe_empty("audio_tokenizer" in empty_parts):
            self.audio_tokenizer = AudioTokenizer(config.audio, empty_encoder="audio_tokenizer.encoder" in empty_parts)
        with _maybe_empty("audio_embedding" in empty_parts):
            self.audio_embedding = AudioEmbedding(config.audio, hidden)
        with _maybe_empty("llm" in empty_parts):
            self.llm = build_llm(config)
        if config.speech.enabled:
            with _maybe_empty("audio_head" in empty_parts):
                self.audio_head: AudioHead | None = AudioHead(config.speech, config.audio, hidden)
            with _maybe_empty("speech_decoder" in empty_parts):
                self.speech_decoder: SpeechDecoder | None = SpeechDecoder(config.speech, config.audio)
        else:
            self.audio_head = self.speech_decoder = None
        self.ids = config.special_token_ids

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    # -- parts, freezing, memory ------------------------------------------------------------------
    def part(self, name: str) -> list[nn.Parameter]:
        """Parameters of one named part (``PARTS``)."""
        if name == "projector":
            return list(self.vision.tower.merger.parameters())
        if name == "vision":
            merger = {id(p) for p in self.vision.tower.merger.parameters()}
            return [p for p in self.vision.parameters() if id(p) not in merger]
        module = getattr(self, name)
        return [] if module is None else list(module.parameters())

    def set_trainable(self, **parts: bool) -> None:
        """``set_trainable(vision=False, projector=True, llm=False)``: requires_grad per part."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; parts are {', '.join(PARTS)}")
        for name, trainable in parts.items():
            for parameter in self.part(name):
                parameter.requires_grad_(trainable)

    def trainable_parts(self) -> dict[str, bool]:
        return {name: any(p.requires_grad for p in self.part(name)) for name in PARTS if self.part(name)}

    def parameter_counts(self) -> dict[str, int]:
        counts = {name: sum(p.numel() for p in self.part(name)) for name in PARTS}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward instead of keeping them, in every part that can."""
        self._set_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_checkpointing(False)

    def _set_checkpointing(self, enabled: bool) -> None:
        for pretrained in (self.llm, self.vision.tower, self.audio_tokenizer.encoder):
            if enabled:
                pretrained.activation_checkpointing_enable({"use_reentrant": False})
            else:
                pretrained.activation_checkpointing_disable()
        for module in self.modules():
            if isinstance(module, Transformer):
                module.gradient_checkpointing = enabled

    # -- inputs ---------------------------------------------------------------------------------
    def audio_codes(self, mels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Tokenize input audio: list of (num_mel_bins, frames) -> (sum of tokens, L), clips in order."""
        return self._tokenize(mels, reconstruct=False)[0]

    def _tokenize(
        self, mels: Sequence[torch.Tensor], *, reconstruct: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Codes of every clip (concatenated) and, with ``reconstruct``, the tokenizer's own losses."""
        batch, frames = pad_mels([mel.to(self.device) for mel in mels])
        train = self.training and any(p.requires_grad for p in self.audio_tokenizer.parameters())
        with torch.set_grad_enabled(train and torch.is_grad_enabled()):
            output = self.audio_tokenizer(batch, frames, reconstruct=reconstruct)
        per_clip = [output.codes[i, : tokens_for_frames(int(n), self.config.audio)] for i, n in enumerate(frames)]
        losses = {}
        if reconstruct:
            losses = {"commitment": output.commit_loss, "mel_reconstruction": output.mel_loss}
        return torch.cat(per_clip), losses  # type: ignore[return-value]

    def embed(
        self,
        input_ids: torch.Tensor,
        *,
        pixel_patches: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        audio_codes: torch.Tensor | None = None,
        speech_codes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the placeholders filled.

        Args:
            input_ids: (B, S).
            pixel_patches, image_grid_thw: packed patches of every image/series, in sequence order.
            audio_codes: (number of ``audio_pad`` tokens, L) for input audio, in sequence order.
            speech_codes: (number of ``audiogen_pad`` tokens, L) for speech frames, in sequence order.

        Returns:
            (B, S, hidden).
        """
        ids = self.ids
        device = self.device
        input_ids = input_ids.to(device)
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(0, self.config.text.vocab_size - 1))
        image_mask = (input_ids == ids["image_pad"]) | (input_ids == ids["video_pad"])
        if image_mask.any():
            if pixel_patches is None or image_grid_thw is None:
                raise ValueError("the text holds image placeholders but no pixels were given")
            features = self.vision(pixel_patches.to(device), image_grid_thw.to(device)).to(embeds.dtype)
            if features.shape[0] != int(image_mask.sum()):
                raise ValueError(f"{int(image_mask.sum())} image placeholders for {features.shape[0]} image tokens")
            embeds = embeds.masked_scatter(image_mask[..., None], features)
        for token, codes in (("audio_pad", audio_codes), ("audiogen_pad", speech_codes)):
            mask = input_ids == ids[token]
            if mask.any():
                if codes is None or codes.shape[0] != int(mask.sum()):
                    raise ValueError(f"{int(mask.sum())} {token} placeholders need as many rows of codes")
                frames = self.audio_embedding(codes.to(device)).to(embeds.dtype)
                embeds = embeds.masked_scatter(mask[..., None], frames)
        return embeds

    # -- training forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        pixel_patches: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        audio_mel: Sequence[torch.Tensor] | None = None,
        audio_codes: torch.Tensor | None = None,
        speech_codes: torch.Tensor | None = None,
        speech_lengths: Sequence[int] | torch.Tensor | None = None,
        speech_mel: Sequence[torch.Tensor] | None = None,
        speech_audio_mel: Sequence[torch.Tensor] | None = None,
        segment_ids: torch.Tensor | None = None,
        losses: Collection[str] | None = None,
        return_logits: bool = False,
    ) -> OmniOutput:
        """Every loss of every training stage, by name, from one call.

        Args:
            input_ids, attention_mask, labels: (B, S); labels -100 where nothing is learnt (the
                processor labels the assistant's turns, speech-span markers and frames included).
            pixel_patches, image_grid_thw: see ``embed``.
            audio_mel: input audio as log-mel (num_mel_bins, frames) each (tokenized here), or
            audio_codes: the same already tokenized.
            speech_codes: (frames, L) codes of every ``audiogen_pad`` frame, spans in order: the
                audio head's targets and the speech decoder's input.
            speech_lengths: frames of each speech span (found from ``input_ids`` when not given).
            speech_mel: one (mel frames, speech mel_bins) target per speech span, for the flow loss.
            speech_audio_mel: instead of ``speech_codes``, the speech spans as log-mel (num_mel_bins,
                frames) each: the audio tokenizer gives their codes (without gradient).
            segment_ids: (B, S) packed conversations (``processing_omni.pack``): tokens attend only
                within their segment and positions restart at each; 0 is padding.
            losses: the losses to compute (``LOSS_NAMES``); None computes each whose inputs are given.
            return_logits: also return the text logits (B, S, V); inference without labels always does.

        Returns:
            OmniOutput: ``losses`` by name, ``loss`` their sum weighted by ``config.loss_weights``.
        """
        if speech_codes is None and speech_audio_mel:
            with torch.no_grad():
                speech_codes = self._tokenize(speech_audio_mel, reconstruct=False)[0]
        wanted = self._wanted_losses(losses, input_ids is not None, labels, audio_mel, speech_codes, speech_mel)
        computed: dict[str, torch.Tensor] = {}
        if audio_mel is not None and audio_codes is None:
            audio_codes, tokenizer_losses = self._tokenize(
                audio_mel, reconstruct=bool(wanted & {"commitment", "mel_reconstruction"})
            )
            computed.update({name: value for name, value in tokenizer_losses.items() if name in wanted})
        elif wanted & {"commitment", "mel_reconstruction"}:
            raise ValueError("the audio tokenizer's losses need audio_mel")
        logits = hidden = None
        if input_ids is not None and (wanted & {"text", "audio_head"} or return_logits or labels is None):
            hidden = self._llm_states(
                input_ids,
                attention_mask,
                pixel_patches=pixel_patches,
                image_grid_thw=image_grid_thw,
                audio_codes=audio_codes,
                speech_codes=speech_codes,
                segment_ids=segment_ids,
            )
            if "text" in wanted:
                computed["text"] = self._text_loss(hidden, labels)  # type: ignore[arg-type]
            if "audio_head" in wanted:
                computed["audio_head"] = self._audio_head_loss(hidden, input_ids, speech_codes)  # type: ignore[arg-type]
            if return_logits or labels is None:
                logits = self.llm.get_output_embeddings()(hidden)
        elif wanted & {"text", "audio_head"}:
            raise ValueError("the text and audio-head losses need input_ids")
        if wanted & {"flow", "flow_prenet"}:
            flow, prenet = self._flow_losses(input_ids, speech_codes, speech_lengths, speech_mel)  # type: ignore[arg-type]
            computed.update(
                {name: value for name, value in (("flow", flow), ("flow_prenet", prenet)) if name in wanted}
            )
        weights = self.config.loss_weights
        total = sum(getattr(weights, name) * value for name, value in computed.items()) if computed else None
        return OmniOutput(loss=total, losses=computed or None, logits=logits, last_hidden_state=hidden)  # type: ignore[arg-type]

    def _wanted_losses(
        self,
        losses: Collection[str] | None,
        has_text: bool,
        labels: torch.Tensor | None,
        audio_mel: object,
        speech_codes: object,
        speech_mel: object,
    ) -> set[str]:
        if losses is not None:
            unknown = set(losses) - set(LOSS_NAMES)
            if unknown:
                raise ValueError(f"unknown losses {sorted(unknown)}; losses are {', '.join(LOSS_NAMES)}")
            if set(losses) & {"audio_head", "flow", "flow_prenet"} and self.audio_head is None:
                raise ValueError("this model was built without the speech branch")
            return set(losses)
        wanted = set()
        if labels is not None and has_text:
            wanted.add("text")
        if speech_codes is not None and has_text and self.audio_head is not None:
            wanted.add("audio_head")
        if audio_mel is not None and self.training:
            wanted |= {"commitment", "mel_reconstruction"}
        if speech_mel is not None and self.speech_decoder is not None:
            wanted |= {"flow", "flow_prenet"}
        return wanted

    def _llm_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        segment_ids: torch.Tensor | None = None,
        **inputs: object,
    ) -> torch.Tensor:
        """The backbone's last hidden states (B, S, H); positions follow the attention mask (left
        padding), or restart at each packed segment."""
        embeds = self.embed(input_ids, **inputs)  # type: ignore[arg-type]
        position_ids = None
        if segment_ids is not None:
            attention_mask, position_ids = _segment_mask(segment_ids.to(embeds.device), embeds.dtype)
        elif attention_mask is not None:
            attention_mask = attention_mask.to(embeds.device)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        base = self.llm.get_decoder()
        output = base(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return output.last_hidden_state

    def _text_loss(self, hidden: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the text loss needs labels")
        targets = labels.to(hidden.device)[:, 1:]
        keep = targets != -100
        return chunked_cross_entropy(hidden[:, :-1][keep], targets[keep], self.llm.get_output_embeddings())

    def _audio_head_loss(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, speech_codes: torch.Tensor | None
    ) -> torch.Tensor:
        if speech_codes is None or self.audio_head is None:
            raise ValueError("the audio-head loss needs speech_codes and the speech branch")
        # the state before each frame (audiogen_start or the previous frame) predicts the frame
        frame = input_ids.to(hidden.device) == self.ids["audiogen_pad"]
        predicting = torch.zeros_like(frame)
        predicting[:, :-1] = frame[:, 1:]
        return self.audio_head.loss(hidden[predicting], speech_codes.to(hidden.device))

    def _flow_losses(
        self,
        input_ids: torch.Tensor | None,
        speech_codes: torch.Tensor | None,
        speech_lengths: Sequence[int] | torch.Tensor | None,
        speech_mel: Sequence[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.speech_decoder is None or speech_codes is None or speech_mel is None:
            raise ValueError("the flow losses need the speech branch, speech_codes and speech_mel")
        if speech_lengths is None:
            if input_ids is None:
                raise ValueError("the flow losses need speech_lengths (or input_ids to find the spans)")
            speech_lengths = speech_span_lengths(input_ids, self.ids["audiogen_pad"])
        lengths = [int(n) for n in speech_lengths]
        if sum(lengths) != speech_codes.shape[0] or len(lengths) != len(speech_mel):
            raise ValueError(f"{len(speech_mel)} mel targets and {sum(lengths)} frames for spans of {lengths}")
        device = self.device
        spans = torch.split(speech_codes.to(device), lengths)
        codes = nn.utils.rnn.pad_sequence(list(spans), batch_first=True)  # (N, T, L)
        mel = nn.utils.rnn.pad_sequence([m.to(device) for m in speech_mel], batch_first=True)  # (N, F, mel)
        upsample = self.speech_decoder.flow.upsample
        mel_lengths = torch.tensor(
            [min(m.shape[0], n * upsample) for m, n in zip(speech_mel, lengths, strict=True)], device=device
        )
        mel = mel[:, : codes.shape[1] * upsample]
        return self.speech_decoder.flow.loss(codes, mel.to(self.speech_decoder.flow.in_proj.weight.dtype), mel_lengths)

    # -- generation -----------------------------------------------------------------------------
    def _pick(self, logits: torch.Tensor, options: DecodingOptions, generator: torch.Generator | None) -> int:
        logits = logits.float()
        if options.temperature == 0:
            return int(logits.argmax())
        logits = logits / options.temperature
        if options.top_k:
            kth = torch.topk(logits, min(options.top_k, logits.shape[-1])).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if options.top_p < 1:
            ordered, order = torch.sort(logits, descending=True)
            probabilities = F.softmax(ordered, -1)
            drop = probabilities.cumsum(-1) - probabilities >= options.top_p  # keep the token that crosses p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        return int(torch.multinomial(F.softmax(logits, -1), 1, generator=generator))

    def _text_mask(self, speaking: bool) -> torch.Tensor:
        """-inf on ids the text head must not write: placeholders, span ends, beyond the vocabulary."""
        mask = torch.zeros(self.llm.get_output_embeddings().weight.shape[0], device=self.device)
        mask[self.config.text.vocab_size :] = float("-inf")
        for name, token in self.ids.items():
            if name != "audiogen_start" or not speaking:
                mask[token] = float("-inf")
        mask[list(self.config.reserved_token_ids)] = float("-inf")
        return mask

    @torch.no_grad()
    def stream(
        self,
        input_ids: torch.Tensor,
        *,
        options: DecodingOptions = DEFAULT_DECODING,
        pixel_patches: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        audio_mel: Sequence[torch.Tensor] | None = None,
    ) -> Iterator[GenerationStep]:
        """Generate for one prompt (input_ids (1, S)), yielding each text token and each speech frame.

        Inputs may be on any device: they are moved to the model's. With the KV cache each step
        feeds one new embedding; without it, the whole sequence is recomputed (slow; it exists so
        that tests can check the cache changes nothing).
        """
        if input_ids.shape[0] != 1:
            raise ValueError("generation takes one prompt at a time")
        device = self.device
        generator = torch.Generator(device=device).manual_seed(options.seed) if options.seed is not None else None
        audio_codes = self.audio_codes(audio_mel) if audio_mel else None
        prompt = self.embed(
            input_ids, pixel_patches=pixel_patches, image_grid_thw=image_grid_thw, audio_codes=audio_codes
        )
        ids = self.ids
        stops = set(options.stop_token_ids) | {self.config.text.eos_token_id}
        speaking = options.speech and self.audio_head is not None
        text_mask = self._text_mask(speaking)
        base, head = self.llm.get_decoder(), self.llm.get_output_embeddings()
        boundary = options.sentence_boundary if speaking else None
        cache = None
        sequence = new_input = prompt
        in_speech, frames, written, closing = False, 0, 0, False
        unspoken: list[int] = []  # text written since the last speech span
        while True:
            if options.use_cache:
                output = base(inputs_embeds=new_input, cache=cache, use_cache=True)
                cache = output.cache
            else:
                output = base(inputs_embeds=sequence, use_cache=False)
            state = output.last_hidden_state[0, -1]  # (H,)
            logits = head(state)
            if in_speech:
                go_on = logits[ids["audiogen_pad"]] >= logits[ids["audiogen_end"]]
                if go_on and frames < options.max_audio_frames:
                    codes = self.audio_head.generate(state[None], options.audio_temperature, generator)  # type: ignore[union-attr]
                    frames += 1
                    yield GenerationStep(audio_codes=codes[0])
                    new_input = self.audio_embedding(codes)[None].to(prompt.dtype)  # (1, 1, H)
                    if not options.use_cache:
                        sequence = torch.cat([sequence, new_input], dim=1)
                    continue
                in_speech, token = False, ids["audiogen_end"]
            elif closing:
                token = ids["audiogen_start"]  # the budget is spent: say what is written, then stop
            else:
                token = self._pick(logits.float() + text_mask, options, generator)
                if boundary is not None and unspoken:
                    if token in stops:  # say the last sentence before the answer ends
                        ended = boundary(unspoken, None)
                    else:
                        ended = token not in ids.values() and boundary(unspoken, token)
                    if ended:
                        token = ids["audiogen_start"]  # the sentence is written: say it first
            yield GenerationStep(token_id=token)
            written += 1
            if token in stops or (closing and token == ids["audiogen_end"]):
                return
            if token == ids["audiogen_start"] and speaking:
                in_speech, frames, unspoken = True, 0, []
            elif token not in ids.values():
                unspoken.append(token)
            if written >= options.max_new_tokens and not in_speech and not closing:
                # out of budget: the text still unspoken is said first when sentences are spoken
                closing = boundary is not None and bool(unspoken) and boundary(unspoken, None)
                if not closing:
                    return
            new_input = self.llm.get_input_embeddings()(torch.tensor([[token]], device=device))
            if not options.use_cache:
                sequence = torch.cat([sequence, new_input], dim=1)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, *, options: DecodingOptions = DEFAULT_DECODING, **inputs: object
    ) -> GenerationResult:
        """Collect ``stream``: tokens (speech frames as ``audiogen_pad``) and each span's codes."""
        result = GenerationResult()
        span: list[torch.Tensor] = []
        for step in self.stream(input_ids, options=options, **inputs):  # type: ignore[arg-type]
            if step.audio_codes is not None:
                span.append(step.audio_codes)
                result.token_ids.append(self.ids["audiogen_pad"])
                continue
            if step.token_id == self.ids["audiogen_end"] and span:
                result.audio_codes.append(torch.stack(span))
                span = []
            result.token_ids.append(int(step.token_id))  # type: ignore[arg-type]
        if span:
            result.audio_codes.append(torch.stack(span))
        return result

    # -- save and load --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """``config.json`` and ``model.safetensors`` (tied weights saved once)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        seen: dict[int, str] = {}
        for name in list(state):
            pointer = state[name].data_ptr()
            if pointer in seen and state[name].numel():
                del state[name]  # a tied weight (e.g. lm_head = embeddings): stored under its first name
            else:
                seen[pointer] = name
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "omniclinic": "1"})

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> OmniForConditionalGeneration:
        """Load a saved model straight into ``dtype`` (None: as stored) on ``device``.

        Built on the meta device and filled tensor by tensor: the peak is one copy of the weights.
        """
        directory = Path(directory)
        config = OmniConfig.load(directory / CONFIG_NAME)
        device = torch.device(device)
        with torch.device(device):
            model = cls(config, empty_parts=LOADABLE_PARTS)
        expected = set(model.state_dict())
        found: set[str] = set()
        stored: set[torch.dtype] = set()
        for name, tensor in _tensors_once(safetensors_files(directory), device, None):
            if name not in expected:
                raise CheckpointError(f"weights do not match the config (unexpected {name})")
            if dtype is None and tensor.is_floating_point():
                stored.add(tensor.dtype)
                if len(stored) > 1:  # "as stored" must be one dtype
                    raise CheckpointError(f"the weights mix {sorted(map(str, stored))}: pass dtype= to load them")
            place(model, name, tensor, device=device, dtype=dtype)
            found.add(name)
        model._finish_loading(device, dtype, expected - found)
        return model.eval()

    def _finish_loading(self, device: torch.device, dtype: torch.dtype | None, missing: set[str]) -> None:
        """Tie embeddings, refuse anything left unloaded, put buffers on the device."""
        if self.config.text.tie_word_embeddings:
            self.llm.tie_weights()
            missing = {name for name in missing if not name.endswith("lm_head.weight")}
        still_meta = meta_tensors(self)
        if missing or still_meta:
            names = sorted(missing | set(still_meta))
            raise ValueError(f"weights do not match the config (missing {names[:5]}, {len(names)} in all)")
        self.to(device)
        if dtype is not None:
            cast_parameters(self, dtype)

    @classmethod
    def from_components(
        cls,
        config: OmniConfig,
        *,
        llm: str | os.PathLike[str] | None = None,
        whisper: str | os.PathLike[str] | None = None,
        qwen2_vl: str | os.PathLike[str] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
    ) -> OmniForConditionalGeneration:
        """Initialise parts from pretrained Hugging Face folders, as the paper does.

        Parts given a folder are built empty and loaded tensor by tensor; the others start fresh.

        Args:
            llm: a causal LM folder (its architecture must match ``config.text``); special-token rows
                beyond its vocabulary start at the mean of its embeddings.
            whisper: a Whisper model folder (``omniclinic convert-whisper``): its encoder
                initialises the audio tokenizer's encoder.
            qwen2_vl: a Qwen2-VL model folder: its vision tower (with merger) initialises ``vision``.
            dtype: floating parameters in this dtype (None: float32).
            device: where the model is built.
        """
        device = torch.device(device)
        text, audio, vision = config.text, config.audio, config.vision
        # part, its folder, the names its weights have there (None: as they are), its name in errors,
        # and what its config.json must agree on
        sources = [
            (
                "llm",
                llm,
                None,
                "the LLM",
                {
                    "hidden_size": text.hidden_size,
                    "intermediate_size": text.intermediate_size,
                    "num_hidden_layers": text.num_hidden_layers,
                    "num_attention_heads": text.num_attention_heads,
                    "num_key_value_heads": text.num_key_value_heads,
                    "rope_theta": text.rope_theta,
                    "rms_norm_eps": text.rms_norm_eps,
                    "tie_word_embeddings": text.tie_word_embeddings,
                },
            ),
            # WhisperForConditionalGeneration ("model.encoder.") or WhisperModel ("encoder.")
            (
                "audio_tokenizer.encoder",
                whisper,
                ("model.encoder.", "encoder."),
                "the Whisper encoder",
                {
                    "d_model": audio.d_model,
                    "encoder_layers": audio.encoder_layers,
                    "encoder_attention_heads": audio.encoder_attention_heads,
                    "encoder_ffn_dim": audio.encoder_ffn_dim,
                    "num_mel_bins": audio.num_mel_bins,
                },
            ),
            (
                "vision.tower",
                qwen2_vl,
                ("model.visual.", "visual."),
                "the Qwen2-VL vision tower",
                {
                    "vision_config.depth": vision.depth,
                    "vision_config.embed_dim": vision.embed_dim,
                    "vision_config.num_heads": vision.num_heads,
                    "vision_config.patch_size": vision.patch_size,
                    "vision_config.spatial_merge_size": vision.spatial_merge_size,
                    "vision_config.temporal_patch_size": vision.temporal_patch_size,
                },
            ),
        ]
        given = [source for source in sources if source[1] is not None]
        for _, folder, _, what, agreed in given:
            _check_folder_config(folder, agreed, what)  # type: ignore[arg-type]
        with torch.device(device):
            model = cls(config, empty_parts={part.removesuffix(".tower") for part, *_ in given})
        for part, folder, prefixes, what, _ in given:
            _load_part(model, part, _folder_tensors(folder, device, prefixes), what, device, dtype)  # type: ignore[arg-type]
        model._finish_loading(device, dtype or torch.float32, set())
        return model


def _segment_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A (B, 1, S, S) additive mask (causal, within a segment) and positions that restart per segment."""
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = causal & same & (segment_ids[:, :, None] > 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)  # padding sees itself: no NaN
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    index = torch.arange(length, device=segment_ids.device).expand_as(segment_ids)
    start_of_segment = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values
    return mask, index - start_of_segment


def speech_span_lengths(input_ids: torch.Tensor, frame_id: int) -> list[int]:
    """Frames of each speech span (runs of ``frame_id``), row by row."""
    lengths: list[int] = []
    for row in (input_ids == frame_id).tolist():
        run = 0
        for is_frame in [*row, False]:
            if is_frame:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
    return lengths


def _tensors_once(
    files: list[Path], device: torch.device, wanted: Callable[[str], bool] | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of several shards; a name found in two of them is refused (a stale shard)."""
    seen: set[str] = set()
    for file in files:
        for name, tensor in iter_tensors(file, device, wanted):
            if name in seen:
                raise CheckpointError(f"{name} is stored twice (a stale shard in the folder?)")
            seen.add(name)
            yield name, tensor


def _folder_tensors(
    folder: str | os.PathLike[str], device: torch.device, prefixes: tuple[str, ...] | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of a Hugging Face folder's safetensors; with ``prefixes``, only names under one
    of them (the others are never read), the prefix removed."""
    wanted = None if prefixes is None else (lambda name: name.startswith(prefixes))
    for name, tensor in _tensors_once(safetensors_files(folder), device, wanted):
        if prefixes is None:
            yield name, tensor
        else:
            prefix = next(p for p in prefixes if name.startswith(p))
            yield name[len(prefix) :], tensor


def _check_folder_config(folder: str | os.PathLike[str], expected: dict[str, object], what: str) -> None:
    """Refuse a pretrained folder whose config.json disagrees with the omni config on ``expected``
    (keys may be dotted into a nested config; ``rope_theta`` is also looked for in ``rope_parameters``)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return  # nothing to compare: tensor shapes are still checked one by one
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{what}: its config.json is unreadable") from None
    for key, value in expected.items():
        node: object = found
        for step in key.split("."):
            node = node.get(step) if isinstance(node, dict) else None
        if node is None and key == "rope_theta":
            node = (found.get("rope_parameters") or {}).get("rope_theta")
        if isinstance(node, int | float) and isinstance(value, float):
            same = math.isclose(node, value, rel_tol=1e-6)  # a float32 written back as float64 (1e-5)
        else:
            same = node == value
        if node is not None and not same:
            raise ValueError(f"{what}: {key} is {node} in its config.json, the omni config has {value}")


def _load_part(
    model: OmniForConditionalGeneration,
    part: str,
    tensors: Iterator[tuple[str, torch.Tensor]],
    what: str,
    device: torch.device,
    dtype: torch.dtype | None,
) -> None:
    """Fill the empty ``part`` (a dotted module path) with exactly its tensors; a vocabulary that grew
    by special tokens gets its new rows at the mean of the pretrained ones."""
    module = model.get_submodule(part)
    needed = {name: tensor for name, tensor in module.state_dict(keep_vars=True).items()}
    target_dtype = dtype or torch.float32
    for name, value in tensors:
        if name not in needed:
            raise ValueError(f"{what} has tensors the config does not (e.g. {name}): its architecture differs")
        shape = tuple(needed.pop(name).shape)
        if tuple(value.shape) != shape:
            grown = value.dim() == len(shape) and tuple(value.shape[1:]) == shape[1:] and value.shape[0] < shape[0]
            if not grown:
                raise ValueError(f"{what}: {name} is {tuple(value.shape)}, the config needs {shape}")
            rows = value.to(target_dtype)
            value = torch.cat([rows, rows.mean(0, keepdim=True).expand(shape[0] - rows.shape[0], *shape[1:])])
        place(module, name, value, device=device, dtype=target_dtype)
    lacking = [name for name, tensor in needed.items() if tensor.is_meta and not name.endswith("lm_head.weight")]
    if lacking:
        raise ValueError(f"{what} lacks {len(lacking)} tensors the config needs (e.g. {lacking[0]})")
