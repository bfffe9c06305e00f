"""A trained-parts folder: what training changed, stored small, loads back to the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from omni_core import OmniConfig, OmniForConditionalGeneration
from omni_core.loading import CheckpointError
from omni_core.lora import LoraSettings, add_lora, merge_lora, save_lora
from omni_core.tokenization import character_tokenizer
from omni_core.trained_parts import COMPONENTS, PARTS_WEIGHTS, load_model_folder, save_trained_parts

PREFIXES = ("vision.", "audio_embedding.", "llm.")


def trained_tiny(tmp_path: Path) -> tuple[OmniForConditionalGeneration, Path]:
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(OmniConfig.from_preset("tiny"))
    settings = add_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0, parts=("llm",)))
    with torch.no_grad():  # "training": the vision encoder and the adapters move
        for name, parameter in model.named_parameters():
            if name.startswith("vision.") or "lora_B" in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    save_lora(model, settings, tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_a_parts_folder_loads_back_to_the_trained_model(tmp_path: Path) -> None:
    model, adapter = trained_tiny(tmp_path)
    folder = tmp_path / "model"
    save_trained_parts(model, folder, prefixes=PREFIXES, components={}, adapter=adapter)
    character_tokenizer().save_pretrained(str(folder))
    merge_lora(model)

    loaded, _ = load_model_folder(folder, tmp_path / "cache")

    ids = torch.arange(3, 30)[None]
    patches = torch.randn(4, 3 * 2 * 14 * 14)
    grid = torch.tensor([[1, 2, 2]])
    expected = model.eval().vision(patches, grid)
    assert torch.allclose(loaded.vision(patches, grid), expected, atol=2e-2)  # float16 storage
    assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=2e-2)
    stored = json.loads((folder / COMPONENTS).read_text())
    assert stored["trained_prefixes"] == list(PREFIXES)


def test_a_parts_folder_names_only_packaged_components(tmp_path: Path) -> None:
    model, adapter = trained_tiny(tmp_path)
    with pytest.raises(ValueError, match="not a packaged part"):
        save_trained_parts(model, tmp_path / "a", prefixes=PREFIXES, components={"llm": "/etc"}, adapter=adapter)
    folder = tmp_path / "b"
    save_trained_parts(model, folder, prefixes=PREFIXES, components={}, adapter=None)
    character_tokenizer().save_pretrained(str(folder))
    record = json.loads((folder / COMPONENTS).read_text())
    record["components"] = {"llm": "https://example.org/weights"}  # a folder edited to fetch something else
    (folder / COMPONENTS).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="not a packaged part"):
        load_model_folder(folder, tmp_path / "cache")


def test_parts_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    model, _ = trained_tiny(tmp_path)
    folder = tmp_path / "model"
    save_trained_parts(model, folder, prefixes=("vision.",), components={}, adapter=None)
    character_tokenizer().save_pretrained(str(folder))
    record = json.loads((folder / COMPONENTS).read_text())
    record["trained_prefixes"] = ["vision.", "audio_embedding."]  # says more was stored than was
    (folder / COMPONENTS).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_folder(folder, tmp_path / "cache")
    (folder / PARTS_WEIGHTS).write_bytes(b"\x00" * 7)
    with pytest.raises(CheckpointError, match="cannot be loaded"):  # a truncated file: a typed error
        load_model_folder(folder, tmp_path / "cache")


def test_an_adapted_recognizer_ships_as_its_decoder_layers_and_serves_through_faster_whisper(tmp_path: Path) -> None:
    from safetensors.torch import load_file as load_tensors
    from safetensors.torch import save_file as save_tensors

    from medical_data.audio import decode_audio
    from omni_core.speech.asr import RecognitionOptions, SpeechRecognizer
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.tts import load_synthesizer, speak
    from omni_core.trained_parts import recognizer_folder, save_recognizer_delta, whisper_tiny_folder
    from omni_core.whisper_ct2 import export_ct2

    cache = tmp_path / "cache"
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    state = load_tensors(str(whisper_tiny_folder(cache) / "model.safetensors"))
    layer = "model.decoder.layers.0.fc2.bias"
    state[layer] = state[layer] + 1e-3  # "fine-tuned"
    save_tensors(state, str(tuned / "model.safetensors"))
    model = tmp_path / "model"
    assert recognizer_folder(model, cache) is None  # a model without one: tiny.en serves

    written = save_recognizer_delta(tuned, model, {"wer_tiny_en": 0.2, "wer_adapted": 0.1}, cache)

    assert written == 384 * 2  # the one tensor that changed, in float16: not the 75 MB model
    served = recognizer_folder(model, cache)
    assert served is not None and (served / "model.bin").is_file()
    assert recognizer_folder(model, cache) == served  # exported once
    plain = export_ct2(whisper_tiny_folder(cache), tmp_path / "plain-ct2")
    assert (served / "model.bin").read_bytes() != (plain / "model.bin").read_bytes()  # the tuned layers are in it
    synthesizer = load_synthesizer("piper", deterministic=True)
    wav = wav_bytes(speak(synthesizer, "Which side is the mass on?"), synthesizer.sample_rate)
    recognizer = SpeechRecognizer(served, options=RecognitionOptions(vocabulary=()))
    assert "which side is the mass on" in recognizer.transcribe(decode_audio(wav).samples).text.lower()
