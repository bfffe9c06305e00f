"""Conversations made by the tests: PNG images, WAV questions and spoken answers, in the JSON-lines format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
OMNICLINIC = Path(sys.executable).with_name("omniclinic")


def write_wav(path: Path, frequency: float, seconds: float = 0.5, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.sin(2 * np.pi * frequency * t) * 8000).astype(np.int16).tobytes())


def make_conversations(folder: Path, count: int = 12, *, seed: int = 0) -> Path:
    """``count`` conversations: an image, a spoken question and a question in text; a text answer
    with its speech. Two per group (study)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "aud").mkdir(exist_ok=True)
    lines = []
    for i in range(count):
        Image.fromarray((rng.random((40, 60)) * 255).astype(np.uint8)).save(folder / f"img/{i}.png")
        write_wav(folder / f"aud/q{i}.wav", 200 + 30 * i)
        write_wav(folder / f"aud/a{i}.wav", 300 + 20 * i, seconds=0.4)
        lines.append(
            {
                "id": f"c{i}",
                "group": f"study{i // 2}",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "image": f"img/{i}.png"},
                            {"type": "audio", "audio": f"aud/q{i}.wav"},
                            {"type": "text", "text": f"Is finding {i} present?"},
                        ],
                    },
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": f"Finding {i} is {'present' if i % 2 else 'absent'}."},
                            {"type": "speech", "audio": f"aud/a{i}.wav"},
                        ],
                    },
                ],
            }
        )
    path = folder / "omni.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def conversations_file(tmp_path: Path) -> Path:
    return make_conversations(tmp_path / "data")


def run_cli(
    *args: str, cwd: Path, timeout: int = 600, launcher: list[str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMNICLINIC_DATA_DIR": str(cwd / "omniclinic-data")}
    env.pop("WORLD_SIZE", None)
    command = [*(launcher or []), str(OMNICLINIC), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def sentences(name: str) -> list[str]:
    """Dictated radiology sentences written for this project (no patient data)."""
    path = REPO / "tests" / "omni_core" / "speech" / name
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


def make_dictations(folder: Path, texts: list[str], name: str) -> Path:
    """Piper speaks each sentence (deterministically); one (dictation, text) conversation per sentence."""
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.normalize import normalize_for_speech
    from omni_core.speech.tts import load_synthesizer

    piper = load_synthesizer("piper", deterministic=True)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, text in enumerate(texts):
        audio = piper.synthesize_sentence(normalize_for_speech(text))
        (folder / f"{name}{index}.wav").write_bytes(wav_bytes(audio, piper.sample_rate))
        lines.append(
            {
                "id": f"{name}{index}",
                "messages": [
                    {"role": "user", "content": [{"type": "audio", "audio": f"{name}{index}.wav"}]},
                    {"role": "assistant", "content": text},
                ],
            }
        )
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path
