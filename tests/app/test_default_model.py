"""The default model (models/omniclinic-demo, trained by ``omniclinic demo-model build``) in the app: a
clinician asks about a generated study by voice and hears a correct answer."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.services.assistant import DEFAULT_MODEL, default_model_folder, describe_model
from medical_data.phantoms import ChestFindings, write_ct_chest
from tests.app.conftest import login


def test_the_default_preset_serves_the_committed_trained_model(isolated_settings: Path) -> None:
    assert default_model_folder() == DEFAULT_MODEL  # committed with the code
    info = describe_model(Settings(data_dir=isolated_settings, model_preset="demo-cpu"))
    assert info.name.startswith("omniclinic-demo") and not info.untrained
    assert set(info.untrained_parts) == {"audio_head", "speech_decoder"}  # its own voice is untrained, and says so
    assert "not for clinical use" in info.caution


@pytest.fixture(scope="module")
def phantom_with_left_effusion(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("phantom")
    truth = write_ct_chest(folder, ChestFindings(effusion="left"), seed=424242)
    return [folder / name for name in truth.files]


def spoken(text: str) -> bytes:
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.tts import load_synthesizer, speak

    synthesizer = load_synthesizer("piper", deterministic=True)  # a voice the corpus was never spoken in
    return wav_bytes(speak(synthesizer, text), synthesizer.sample_rate)


def test_a_spoken_question_about_a_generated_study_is_answered_correctly_and_spoken(
    make_client, phantom_with_left_effusion: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = make_client(model_preset="demo-cpu", max_new_tokens=16)
    headers = login(client, "clinician")
    files = [("files", (path.name, path.read_bytes())) for path in phantom_with_left_effusion]
    uploaded = client.post("/api/v1/studies", files=files, headers=headers)
    assert uploaded.status_code == 201, uploaded.text
    uid = uploaded.json()["studies"][0]["study_uid"]

    asked = client.post(
        f"/api/v1/studies/{uid}/ask",
        files={"audio": ("q.wav", spoken("Is there a pleural effusion?"))},
        headers=headers,
    )
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert "effusion" in body["transcript"].lower()
    assert body["answer"].strip(" .").lower() == "yes"
    audio = client.get(body["audio_url"], headers=headers)
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF" and len(audio.content) > 8000

    side = client.post(
        f"/api/v1/studies/{uid}/ask",
        data={"text": "Which side is the pleural effusion on?"},  # a new conversation: it was trained on single turns
        headers=headers,
    )
    assert side.status_code == 200, side.text
    assert side.json()["answer"].strip(" .").lower() == "left"
