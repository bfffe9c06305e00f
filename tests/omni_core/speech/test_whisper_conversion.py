"""faster-whisper's tiny.en as a transformers Whisper: lossless, transcribes as well, starts the audio tokenizer.

Figures when written (Piper dictations of clinical_sentences.txt, greedy decoding, no lexicon
correction): word error rate 0.223 with transformers in float32, 0.226 with faster-whisper in float32
(0.248 with its default int8). The audio tokenizer started
from tiny.en's encoder (frozen), 150 steps of AdamW 1e-3 on a 4 s spoken sentence, seeds 0/1/2: mel L1
0.070/0.039/0.046 with the rotary mel decoder, 0.035/0.089/0.054 with the position-free one it
replaced (medians 0.046 against 0.054): the seed moves it more than positions do.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jiwer
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner
from whisper_normalizer.english import EnglishTextNormalizer

from app.cli import cli
from omni_core import OmniConfig, OmniForConditionalGeneration
from omni_core.modeling_audio import log_mel
from omni_core.speech.asr import RecognitionOptions, SpeechRecognizer, resolve_model
from omni_core.speech.tts import PiperSynthesizer
from omni_core.whisper_ct2 import WhisperConversionError, convert_ct2_whisper, read_ct2_model

from .conftest import Dictation, to_16k

normalize = EnglishTextNormalizer()


@pytest.fixture(scope="module")
def tiny_en_ct2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return resolve_model("tiny.en", tmp_path_factory.mktemp("ct2"))


@pytest.fixture(scope="module")
def tiny_en(tiny_en_ct2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_ct2_whisper(tiny_en_ct2, tmp_path_factory.mktemp("hf") / "whisper-tiny.en")


def _wer(references: list[str], hypotheses: list[str]) -> float:
    return jiwer.wer([normalize(r) for r in references], [normalize(h) for h in hypotheses])


def test_conversion_keeps_every_weight_bit_for_bit(tiny_en_ct2: Path, tiny_en: Path) -> None:
    ct2 = read_ct2_model(tiny_en_ct2 / "model.bin").variables
    hf = load_file(str(tiny_en / "model.safetensors"))
    assert all(array.dtype == np.float16 for array in hf.values())
    fused = np.concatenate([hf[f"model.encoder.layers.2.self_attn.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")])
    assert np.array_equal(fused, ct2["encoder/layer_2/self_attention/linear_0/weight"])
    cross = np.concatenate([hf[f"model.decoder.layers.1.encoder_attn.{p}.weight"] for p in ("k_proj", "v_proj")])
    assert np.array_equal(cross, ct2["decoder/layer_1/attention/linear_1/weight"])
    assert np.array_equal(hf["model.decoder.embed_tokens.weight"], ct2["decoder/embeddings/weight"])
    float_values = sum(
        a.size for name, a in ct2.items() if a.dtype == np.float16 and name != "decoder/projection/weight"
    )
    zero_key_biases = sum(a.size // 3 for name, a in ct2.items() if name.endswith("self_attention/linear_0/bias"))
    zero_key_biases += sum(a.size // 2 for name, a in ct2.items() if name.endswith("/attention/linear_1/bias"))
    assert sum(a.size for a in hf.values()) == float_values - zero_key_biases  # nothing else dropped
    config = json.loads((tiny_en / "config.json").read_text())
    assert (config["d_model"], config["encoder_layers"], config["vocab_size"]) == (384, 4, 51_864)


def test_converted_model_transcribes_like_faster_whisper(
    tiny_en_ct2: Path, tiny_en: Path, dictations: list[Dictation]
) -> None:
    from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny_en, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_en)
    features = WhisperFeatureExtractor.from_pretrained(tiny_en)
    greedy = RecognitionOptions(beam_size=1, vad_filter=False, vocabulary=(), word_timestamps=False)
    recognizer = SpeechRecognizer(tiny_en_ct2, options=greedy, compute_type="float32")  # the same numerics
    ours, theirs = [], []
    for dictation in dictations:
        inputs = features(dictation.samples, sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(inputs.input_features, max_new_tokens=120, num_beams=1, do_sample=False)
        ours.append(tokenizer.decode(ids[0], skip_special_tokens=True))
        theirs.append(recognizer.transcribe(dictation.samples).text)
    references = [d.text for d in dictations]
    transformers_wer, faster_whisper_wer = _wer(references, ours), _wer(references, theirs)
    assert abs(transformers_wer - faster_whisper_wer) <= 0.02, (transformers_wer, faster_whisper_wer)
    assert transformers_wer < 0.35  # a working model, not two equally broken ones


def test_the_demo_audio_tokenizer_starts_from_tiny_en(tiny_en: Path) -> None:
    config = OmniConfig.from_preset("demo-cpu")
    model = OmniForConditionalGeneration.from_components(config, whisper=str(tiny_en))
    hf = load_file(str(tiny_en / "model.safetensors"))
    encoder = model.audio_tokenizer.encoder
    assert encoder.conv1.weight.dtype == torch.float32
    assert torch.equal(encoder.conv1.weight, torch.from_numpy(hf["model.encoder.conv1.weight"]).float())
    assert torch.equal(encoder.layers[3].fc2.weight, torch.from_numpy(hf["model.encoder.layers.3.fc2.weight"]).float())
    assert not encoder.embed_positions.weight.requires_grad  # Whisper's positions stay fixed


def test_the_tokenizer_learns_to_reconstruct_mel_from_tiny_en(tiny_en: Path, piper: PiperSynthesizer) -> None:
    """The tokenizer from tiny.en's encoder (frozen), RVQ and mel decoder trained on one 4 s sentence:
    the reconstruction beats half the error of predicting each mel bin's mean (0.066 to 0.13 by seed)."""
    config = OmniConfig.from_preset("demo-cpu")
    spoken = piper.synthesize_sentence("There is a small nodule in the right upper lobe, measuring four millimetres.")
    mel = torch.from_numpy(log_mel(to_16k(spoken, piper.sample_rate), config.audio))[None]
    mean_predictor = (mel - mel.mean(-1, keepdim=True)).abs().mean().item()  # 0.335 for this clip
    torch.manual_seed(0)
    tokenizer = OmniForConditionalGeneration.from_components(config, whisper=tiny_en).audio_tokenizer.train()
    tokenizer.encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in tokenizer.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(100):
        output = tokenizer(mel, reconstruct=True)
        optimizer.zero_grad()
        (output.mel_loss + 0.25 * output.commit_loss).backward()
        optimizer.step()
    assert output.mel_loss.item() < 0.5 * mean_predictor


def test_convert_whisper_command(tiny_en_ct2: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["convert-whisper", "tiny.en", "--out", str(tmp_path / "tiny")])
    assert result.exit_code == 0, result.output
    assert {"model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in (tmp_path / "tiny").iterdir()
    }
    again = runner.invoke(cli, ["convert-whisper", "tiny.en", "--out", str(tmp_path / "tiny")])
    assert again.exit_code == 2 and "already exists" in again.output
    missing = runner.invoke(cli, ["convert-whisper", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "not a CTranslate2 Whisper folder" in missing.output
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (broken / name).write_bytes((tiny_en_ct2 / name).read_bytes())
    (broken / "model.bin").write_bytes((tiny_en_ct2 / "model.bin").read_bytes()[:100_000])
    truncated = runner.invoke(cli, ["convert-whisper", str(broken), "--out", str(tmp_path / "y")])
    assert truncated.exit_code == 1 and "truncated" in truncated.output
    assert isinstance(truncated.exception, SystemExit)  # a typed, reported failure: nothing escaped
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y-*"))  # nothing half-written
    with pytest.raises(WhisperConversionError):
        read_ct2_model(broken / "model.bin")


def _name(text: str | bytes) -> bytes:
    raw = text if isinstance(text, bytes) else text.encode()
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str | bytes, dims: tuple[int, ...], type_id: int, payload: bytes) -> bytes:
    header = _name(name) + struct.pack("<B", len(dims)) + struct.pack("<" + "I" * len(dims), *dims)
    return header + struct.pack("<BI", type_id, len(payload)) + payload


WHISPER_HEAD = struct.pack("<I", 6) + _name("WhisperSpec") + struct.pack("<I", 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (struct.pack("<I", 6) + _name("\x1b[31mTransformerSpec") + struct.pack("<I", 3), r"'\\x1b\[31mTrans"),
        (struct.pack("<I", 99), "format 99"),
        (
            WHISPER_HEAD + struct.pack("<I", 1) + _variable(b"\xff\xfe", (1,), 4, b"\0\0") + struct.pack("<I", 0),
            "UTF-8",
        ),
        (WHISPER_HEAD + struct.pack("<II", 0, 1) + _name("a") + _name("gone"), "alias of a missing"),
        (
            WHISPER_HEAD + struct.pack("<I", 1) + _variable("x", (1 << 31, 1 << 31, 4), 4, b"") + struct.pack("<I", 0),
            "inconsistent",
        ),
        (WHISPER_HEAD + struct.pack("<I", 1) + _variable("x", (2,), 9, bytes(8)) + struct.pack("<I", 0), "data type"),
        (WHISPER_HEAD + struct.pack("<I", 5), "truncated"),
    ],
)
def test_a_crafted_model_bin_is_a_typed_error(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "model.bin").write_bytes(content)
    with pytest.raises(WhisperConversionError, match=message):
        read_ct2_model(tmp_path / "model.bin")
