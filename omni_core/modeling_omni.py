"""The omni model: vision encoder, audio tokenizer, LLM backbone and speech branch, composed.

Compose, don't inherit (torchtune's ``DeepFusionModel``): the LLM is any Hugging Face causal LM
driven through ``inputs_embeds``; images fill their ``image_pad``/``video_pad`` placeholders, audio
fills ``audio_pad`` with embedded RVQ codes, and generated speech frames sit at ``audiogen_pad``
positions, whose hidden states the audio head turns into the next frame's codes. The speech branch
is built only when ``config.speech.enabled``. Freezing is a flag per part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

from omni_core.configuration_omni import OmniConfig
from omni_core.modeling_audio import AudioEmbedding, AudioTokenizer
from omni_core.modeling_speech_decoder import AudioHead, SpeechDecoder
from omni_core.modeling_vision import OmniVisionEncoder

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PARTS = ("vision", "projector", "audio_tokenizer", "audio_embedding", "llm", "audio_head", "speech_decoder")


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode (a frozen dataclass, as openai/whisper's ``DecodingOptions``)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 is greedy."""
    seed: int | None = None
    use_cache: bool = True
    speech: bool = True
    """Generate audio frames after ``audiogen_start`` (when the speech branch exists)."""
    max_audio_frames: int = 500
    audio_temperature: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    sentence_end_ids: frozenset[int] = frozenset()
    """Speak each sentence as it ends (the released demo's scheme): after one of these tokens the
    model is switched into a speech span. Empty: speech only where the model starts it itself."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.temperature < 0 or self.max_audio_frames < 1:
            raise ValueError("max_new_tokens and max_audio_frames must be >= 1, temperature >= 0")


DEFAULT_DECODING = DecodingOptions()


@dataclass
class OmniOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor
    text_loss: torch.Tensor | None = None
    audio_loss: torch.Tensor | None = None


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


class OmniForConditionalGeneration(nn.Module):
    """Images (2D, 3D series), audio and text in; text and speech out."""

    def __init__(self, config: OmniConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.text.hidden_size
        self.vision = OmniVisionEncoder(config.vision, hidden)
        self.audio_tokenizer = AudioTokenizer(config.audio)
        self.audio_embedding = AudioEmbedding(config.audio, hidden)
        self.llm = build_llm(config)
        if config.speech.enabled:
            self.audio_head: AudioHead | None = AudioHead(config.speech, config.audio, hidden)
            self.speech_decoder: SpeechDecoder | None = SpeechDecoder(config.speech, config.audio)
        else:
            self.audio_head = self.speech_decoder = None
        self.ids = config.special_token_ids

    # -- parts and freezing ---------------------------------------------------------------------
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

    # -- inputs ---------------------------------------------------------------------------------
    def audio_codes(self, mels: list[torch.Tensor]) -> torch.Tensor:
        """Tokenize input audio: list of (num_mel_bins, frames) -> (sum of tokens, L)."""
        train = any(p.requires_grad for p in self.audio_tokenizer.parameters()) and self.training
        with torch.set_grad_enabled(train):
            return torch.cat([self.audio_tokenizer(mel[None]).codes[0] for mel in mels])

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
        embeds = self.llm.get_input_embeddings()(input_ids.clamp_max(self.config.text.vocab_size - 1))
        image_mask = (input_ids == ids["image_pad"]) | (input_ids == ids["video_pad"])
        if image_mask.any():
            if pixel_patches is None or image_grid_thw is None:
                raise ValueError("the text holds image placeholders but no pixels were given")
            features = self.vision(pixel_patches, image_grid_thw).to(embeds.dtype)
            if features.shape[0] != int(image_mask.sum()):
                raise ValueError(f"{int(image_mask.sum())} image placeholders for {features.shape[0]} image tokens")
            embeds = embeds.masked_scatter(image_mask[..., None], features)
        for token, codes in (("audio_pad", audio_codes), ("audiogen_pad", speech_codes)):
            mask = input_ids == ids[token]
            if mask.any():
                if codes is None or codes.shape[0] != int(mask.sum()):
                    raise ValueError(f"{int(mask.sum())} {token} placeholders need as many rows of codes")
                embeds = embeds.masked_scatter(mask[..., None], self.audio_embedding(codes).to(embeds.dtype))
        return embeds

    # -- training forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        pixel_patches: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        audio_mel: list[torch.Tensor] | None = None,
        audio_codes: torch.Tensor | None = None,
        speech_codes: torch.Tensor | None = None,
    ) -> OmniOutput:
        """Next-token loss on ``labels`` (-100 ignored) plus, for speech spans, the audio head's loss.

        Args:
            input_ids, attention_mask, labels: (B, S).
            pixel_patches, image_grid_thw: see ``embed``.
            audio_mel: input audio as log-mel (num_mel_bins, frames) each (tokenized here), or
            audio_codes: the same already tokenized.
            speech_codes: codes of every ``audiogen_pad`` frame, the targets of the audio head.

        Returns:
            OmniOutput with the summed loss (when labels or speech codes are given) and text logits.
        """
        if audio_mel is not None:
            audio_codes = self.audio_codes(audio_mel)
        embeds = self.embed(
            input_ids,
            pixel_patches=pixel_patches,
            image_grid_thw=image_grid_thw,
            audio_codes=audio_codes,
            speech_codes=speech_codes,
        )
        output = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)
        logits = output.logits
        text_loss = audio_loss = None
        if labels is not None:
            text_loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
        if speech_codes is not None and self.audio_head is not None:
            # the state before each frame (audiogen_start or the previous frame) predicts the frame
            frame = input_ids == self.ids["audiogen_pad"]
            predicting = torch.zeros_like(frame)
            predicting[:, :-1] = frame[:, 1:]
            audio_loss = self.audio_head.loss(output.hidden_states[-1][predicting], speech_codes)
        losses = [loss for loss in (text_loss, audio_loss) if loss is not None]
        return OmniOutput(sum(losses) if losses else None, logits, text_loss, audio_loss)  # type: ignore[arg-type]

    # -- generation -----------------------------------------------------------------------------
    def _pick(self, logits: torch.Tensor, options: DecodingOptions, generator: torch.Generator | None) -> int:
        logits = logits.float()
        logits[self.config.text.vocab_size :] = float("-inf")
        if options.temperature == 0:
            return int(logits.argmax())
        return int(torch.multinomial(F.softmax(logits / options.temperature, -1), 1, generator=generator))

    @torch.no_grad()
    def stream(
        self,
        input_ids: torch.Tensor,
        *,
        options: DecodingOptions = DEFAULT_DECODING,
        pixel_patches: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        audio_mel: list[torch.Tensor] | None = None,
    ) -> Iterator[GenerationStep]:
        """Generate for one prompt (input_ids (1, S)), yielding each text token and each speech frame.

        With the KV cache each step feeds one new embedding; without it, the whole sequence is
        recomputed (slow; it exists so that tests can check the cache changes nothing).
        """
        if input_ids.shape[0] != 1:
            raise ValueError("generation takes one prompt at a time")
        generator = torch.Generator().manual_seed(options.seed) if options.seed is not None else None
        audio_codes = self.audio_codes(audio_mel) if audio_mel is not None else None
        prompt = self.embed(
            input_ids, pixel_patches=pixel_patches, image_grid_thw=image_grid_thw, audio_codes=audio_codes
        )
        stops = set(options.stop_token_ids) | {self.config.text.eos_token_id}
        speaking = options.speech and self.audio_head is not None
        cache = None
        sequence = prompt
        new_input = prompt
        frames = 0
        in_speech = False
        forced: list[int] = []
        for _ in range(options.max_new_tokens + options.max_audio_frames):
            if options.use_cache:
                output = self.llm(inputs_embeds=new_input, cache=cache, use_cache=True, output_hidden_states=in_speech)
                cache = output.cache
            else:
                output = self.llm(inputs_embeds=sequence, use_cache=False, output_hidden_states=in_speech)
            logits = output.logits[0, -1]
            if in_speech:
                ends = self._pick(logits, DecodingOptions(), None) == self.ids["audiogen_end"]
                if not ends and frames < options.max_audio_frames:
                    codes = self.audio_head.generate(
                        output.hidden_states[-1][0, -1:],  # type: ignore[union-attr]
                        options.audio_temperature,
                        generator,
                    )
                    frames += 1
                    yield GenerationStep(audio_codes=codes[0])
                    new_input = self.audio_embedding(codes)[None].to(prompt.dtype)
                    sequence = torch.cat([sequence, new_input], dim=1)
                    continue
                in_speech, token = False, self.ids["audiogen_end"]
            else:
                token = forced.pop(0) if forced else self._pick(logits, options, generator)
            yield GenerationStep(token_id=token)
            if token in stops:
                return
            in_speech = speaking and token == self.ids["audiogen_start"]
            if speaking and not in_speech and token in options.sentence_end_ids:
                forced.append(self.ids["audiogen_start"])  # the sentence is written: now say it
            frames = 0 if in_speech else frames
            new_input = self.llm.get_input_embeddings()(torch.tensor([[token]]))
            sequence = torch.cat([sequence, new_input], dim=1)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, *, options: DecodingOptions = DEFAULT_DECODING, **inputs: object
    ) -> GenerationResult:
        """Collect ``stream``: tokens (speech frames as ``audiogen_pad``) and each span's codes."""
        result = GenerationResult()
        span: list[torch.Tensor] = []
        text_tokens = 0
        for step in self.stream(input_ids, options=options, **inputs):  # type: ignore[arg-type]
            if step.audio_codes is not None:
                span.append(step.audio_codes)
                result.token_ids.append(self.ids["audiogen_pad"])
                continue
            if step.token_id == self.ids["audiogen_end"] and span:
                result.audio_codes.append(torch.stack(span))
                span = []
            result.token_ids.append(int(step.token_id))  # type: ignore[arg-type]
            text_tokens += 1
            if text_tokens >= options.max_new_tokens:
                break
        if span:
            result.audio_codes.append(torch.stack(span))
        return result

    # -- save and load --------------------------------------------------------------------------
    def save_pretrained(self, directory: Path) -> None:
        """``config.json`` and ``model.safetensors`` (tied weights saved once)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_NAME)
        state = {name: tensor.contiguous() for name, tensor in self.state_dict().items()}
        seen: dict[int, str] = {}
        for name in list(state):
            pointer = state[name].data_ptr()
            if pointer in seen and state[name].numel():
                del state[name]  # a tied weight (e.g. lm_head = embeddings): stored under its first name
            else:
                seen[pointer] = name
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "omniclinic": "1"})

    @classmethod
    def from_pretrained(cls, directory: Path) -> OmniForConditionalGeneration:
        config = OmniConfig.load(directory / CONFIG_NAME)
        model = cls(config)
        state = load_file(str(directory / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {name for name in missing if name.endswith("lm_head.weight") and config.text.tie_word_embeddings}
        if set(missing) - tied or unexpected:
            raise ValueError(
                f"weights do not match the config (missing {sorted(set(missing) - tied)[:5]}, "
                f"unexpected {sorted(unexpected)[:5]})"
            )
        return model.eval()

    @classmethod
    def from_components(
        cls, config: OmniConfig, *, llm: Path | None = None, whisper: Path | None = None, qwen2_vl: Path | None = None
    ) -> OmniForConditionalGeneration:
        """Initialise parts from pretrained Hugging Face folders, as the paper does.

        Args:
            llm: a causal LM folder (its architecture must match ``config.text``); special-token rows
                beyond its vocabulary keep their fresh initialisation.
            whisper: a Whisper model folder: its encoder initialises the audio tokenizer's encoder.
            qwen2_vl: a Qwen2-VL model folder: its vision tower (with merger) initialises ``vision``.
        """
        model = cls(config)
        if llm is not None:
            source = AutoModelForCausalLM.from_pretrained(str(llm)).state_dict()
            _copy_into(model.llm, source, "the LLM")
        if whisper is not None:  # WhisperForConditionalGeneration ("model.encoder.") or WhisperModel ("encoder.")
            encoder = {
                k.split("encoder.", 1)[1]: v
                for k, v in _load_folder(whisper).items()
                if k.startswith(("model.encoder.", "encoder."))
            }
            _copy_into(model.audio_tokenizer.encoder, encoder, "the Whisper encoder")
        if qwen2_vl is not None:
            prefixes = ("model.visual.", "visual.")
            visual = {k.split("visual.", 1)[1]: v for k, v in _load_folder(qwen2_vl).items() if k.startswith(prefixes)}
            _copy_into(model.vision.tower, visual, "the Qwen2-VL vision tower")
        return model


def _load_folder(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _copy_into(module: nn.Module, source: dict[str, torch.Tensor], what: str) -> None:
    """Copy matching tensors; a vocabulary that grew by special tokens keeps its new rows."""
    target = module.state_dict()
    missing = [name for name in target if name not in source]
    if missing:
        raise ValueError(f"{what} lacks {len(missing)} tensors the config needs (e.g. {missing[0]})")
    with torch.no_grad():
        for name, tensor in target.items():
            value = source[name]
            if value.shape == tensor.shape:
                tensor.copy_(value)
            elif (
                value.dim() == tensor.dim() and value.shape[1:] == tensor.shape[1:] and value.shape[0] < tensor.shape[0]
            ):
                tensor[: value.shape[0]].copy_(value)  # embeddings / lm_head of a grown vocabulary
            else:
                raise ValueError(f"{what}: {name} is {tuple(value.shape)}, the config needs {tuple(tensor.shape)}")
