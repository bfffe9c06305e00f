"""`omniclinic speak` and `omniclinic transcribe` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from omni_core.speech.encode import wav_bytes

runner = CliRunner()
SENTENCE = "The lungs are clear."


@pytest.mark.parametrize("suffix", [".wav", ".ogg"])
def test_speak_then_transcribe(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "OMNICLINIC_TTS_DETERMINISTIC", "1"
    )  # the same audio every run (ASR accuracy is tested elsewhere)
    out = tmp_path / f"answer{suffix}"
    spoken = runner.invoke(cli, ["speak", SENTENCE, "--out", str(out), "--engine", "piper"])
    assert spoken.exit_code == 0, spoken.output
    assert "piper" in spoken.stdout and out.stat().st_size > 1000
    heard = runner.invoke(cli, ["transcribe", str(out), "--json"])
    assert heard.exit_code == 0, heard.output
    result = json.loads(heard.stdout)
    assert "lungs" in result["text"].lower() and result["segments"][0]["words"]


def test_silence_says_no_speech_detected(tmp_path: Path) -> None:
    silence = tmp_path / "silence.wav"
    silence.write_bytes(wav_bytes(np.zeros(32_000, np.float32), 16_000))
    result = runner.invoke(cli, ["transcribe", str(silence)])
    assert result.exit_code == 1 and "no speech detected" in result.stderr
    as_json = runner.invoke(cli, ["transcribe", str(silence), "--json"])
    assert json.loads(as_json.stdout)["no_speech"] is True


def test_corrupt_and_over_long_audio_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    result = runner.invoke(cli, ["transcribe", str(corrupt)])
    assert result.exit_code == 1 and "not decodable audio" in result.stderr and "Traceback" not in result.output
    long_audio = tmp_path / "long.wav"
    long_audio.write_bytes(wav_bytes(np.zeros(16_000 * 5, np.float32), 16_000))
    monkeypatch.setenv("OMNICLINIC_MAX_AUDIO_SECONDS", "2")
    result = runner.invoke(cli, ["transcribe", str(long_audio)])
    assert result.exit_code == 1 and "limit" in result.stderr


def test_speak_refuses_an_unknown_format_and_empty_text(tmp_path: Path) -> None:
    result = runner.invoke(cli, ["speak", "hello", "--out", str(tmp_path / "x.mp3")])
    assert result.exit_code == 2 and ".wav" in result.stderr
    result = runner.invoke(cli, ["speak", "  ", "--out", str(tmp_path / "x.wav")])
    assert result.exit_code == 1 and "no text" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_deterministic_speech_is_the_same_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNICLINIC_TTS_DETERMINISTIC", "true")
    for name in ("a.wav", "b.wav"):
        assert (
            runner.invoke(cli, ["speak", SENTENCE, "--out", str(tmp_path / name), "--engine", "piper"]).exit_code == 0
        )
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
