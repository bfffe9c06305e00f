"""Generation speed of the omni model on the demo-cpu preset (random weights: speed, not answers).

- Decode tokens/s of ``OmniForConditionalGeneration.stream`` (KV cache, greedy) against the
  backbone's own ``generate()`` on the same weights and prompt embeddings (aim: ratio >= 0.9).
- Time to first token for a 448x448 image plus a 3-second spoken question: processor (log-mel,
  patches) + vision and audio encoders + prefill + first step.
- Time to first token for a 3-second spoken question alone: the audio tokenizer at the question's
  own length against the same tokenizer run over Whisper's full 30 s window (what it did before;
  reproduced here by padding with silence and keeping the question's codes).
Medians of several runs; 2 CPU threads.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from omni_core import DecodingOptions, OmniConfig, OmniForConditionalGeneration, OmniProcessor
from omni_core.modeling_audio import tokens_for_frames
from omni_core.processing_omni import Message, Part

NEW_TOKENS = 48
RUNS = 5


class AsciiTokenizer:
    eos_token_id = 2

    def encode(self, text: str) -> list[int]:
        return [3 + ord(ch) % 95 for ch in text]

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return {"<|im_start|>": 1, "<|im_end|>": 2}.get(token)

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(32 + (i - 3) % 95) for i in ids)


@contextmanager
def encoded_over_the_whole_window(model: OmniForConditionalGeneration) -> Iterator[None]:
    """The baseline: every clip padded to the tokenizer's 30 s window, its own codes kept."""
    tokenizer = model.audio_tokenizer
    own_length = tokenizer.forward
    window = 2 * model.config.audio.max_source_positions

    def padded(mel: torch.Tensor, mel_frames: torch.Tensor | None = None, reconstruct: bool = False):  # type: ignore[no-untyped-def]
        frames = mel.shape[-1] if mel_frames is None else mel_frames
        full = torch.nn.functional.pad(mel, (0, window - mel.shape[-1]))
        output = own_length(full, torch.as_tensor(frames).reshape(-1), reconstruct)
        output.codes = output.codes[:, : tokens_for_frames(mel.shape[-1], model.config.audio)]
        return output

    tokenizer.forward = padded  # type: ignore[method-assign]
    try:
        yield
    finally:
        del tokenizer.forward


def time_to_first_token(model: OmniForConditionalGeneration, processor: OmniProcessor, parts: list[Part]) -> float:
    started = time.perf_counter()
    inputs = processor([Message("user", parts)], add_generation_prompt=True)
    next(model.stream(inputs.input_ids, options=DecodingOptions(max_new_tokens=1), **inputs.model_kwargs()))
    return time.perf_counter() - started


def main() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = OmniConfig.from_preset("demo-cpu")
    model = OmniForConditionalGeneration(config).eval()
    eos = config.text.eos_token_id
    model.llm.lm_head.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, torch.tensor([eos]), -1e9))
    prompt = torch.randint(3, 1000, (1, 32))
    embeds = model.llm.get_input_embeddings()(prompt)

    def ours() -> int:
        options = DecodingOptions(max_new_tokens=NEW_TOKENS, speech=False)
        return sum(1 for _ in model.stream(prompt, options=options))

    def backbone() -> int:
        with torch.no_grad():
            out = model.llm.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
            )
        return int(out.shape[-1])

    rates: dict[str, list[float]] = {"ours": [], "backbone": []}
    for _ in range(RUNS):
        for name, run in (("ours", ours), ("backbone", backbone)):
            started = time.perf_counter()
            tokens = run()
            rates[name].append(tokens / (time.perf_counter() - started))
    ours_rate, base_rate = statistics.median(rates["ours"]), statistics.median(rates["backbone"])
    print(
        f"decode, demo-cpu ({config.text.num_hidden_layers}-layer {config.text.hidden_size}-wide LLM), "
        f"{NEW_TOKENS} new tokens after a 32-token prompt: ours {ours_rate:.1f} tok/s, backbone generate() "
        f"{base_rate:.1f} tok/s, ratio {ours_rate / base_rate:.2f}"
    )

    processor = OmniProcessor(config, AsciiTokenizer())
    image = torch.rand(1, 1, 448, 448)
    question = np.random.default_rng(0).normal(0, 0.1, 48_000).astype(np.float32)
    both = [Part("image", image), Part("audio", question), Part("text", "Findings?")]
    first_token = [time_to_first_token(model, processor, both) for _ in range(RUNS)]
    inputs = processor([Message("user", both)], add_generation_prompt=True)
    visual = int((inputs.input_ids == config.special_token_ids["image_pad"]).sum())
    spoken = int((inputs.input_ids == config.special_token_ids["audio_pad"]).sum())
    print(
        f"time to first token, 448x448 image ({visual} tokens) + 3 s spoken question ({spoken} tokens), "
        f"{inputs.input_ids.shape[1]}-token prompt: median {statistics.median(first_token):.3f} s"
    )

    spoken_only = [Part("audio", question), Part("text", "Findings?")]
    own, window = [], []
    for _ in range(RUNS):
        own.append(time_to_first_token(model, processor, spoken_only))
        with encoded_over_the_whole_window(model):
            window.append(time_to_first_token(model, processor, spoken_only))
    own_s, window_s = statistics.median(own), statistics.median(window)
    print(
        f"time to first token, 3 s spoken question: encoded at its own length {own_s:.3f} s, over the "
        f"{config.audio.max_audio_seconds} s window {window_s:.3f} s, ratio {window_s / own_s:.1f}x"
    )


if __name__ == "__main__":
    main()
