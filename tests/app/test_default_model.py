"""The default model (models/omniclinic-demo, trained by ``omniclinic demo-model build``) in the app: a
clinician asks about a generated study by voice and hears a correct answer; what a model folder says
about itself can add to the caution, never take from it."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.services.assistant import (
    DEFAULT_MODEL,
    GENERAL_CAUTION,
    UNTRAINED_CAUTION,
    default_model_folder,
    describe_model,
)
from medical_data.phantoms import ChestFindings, write_ct_chest
from tests.app.conftest import audit_events, login

PACKAGED = {"llm": "smollm2-135m-instruct", "whisper": "tiny.en"}


def test_the_default_preset_serves_the_committed_trained_model(isolated_settings: Path) -> None:
    assert default_model_folder() == DEFAULT_MODEL  # committed with the code
    info = describe_model(Settings(data_dir=isolated_settings, model_preset="demo-cpu"))
    assert info.name.startswith("omniclinic-demo") and not info.untrained
    assert set(info.untrained_parts) == {"audio_head", "speech_decoder"}  # its own voice is untrained, and says so
    assert info.caution.startswith(GENERAL_CAUTION) and "not for clinical use" in info.caution
    assert info.spoken_caution  # said before every spoken answer


def parts_folder(folder: Path, *, components: dict[str, str], serving: object | None) -> Path:
    folder.mkdir(parents=True)
    record = {"components": components, "trained_prefixes": ["vision.", "audio_tokenizer.rvq.", "audio_embedding."]}
    (folder / "components.json").write_text(json.dumps(record))
    if serving is not None:
        (folder / "serving.json").write_text(json.dumps(serving))
    return folder


def test_a_model_folder_can_add_to_the_caution_but_never_take_from_it(isolated_settings: Path, tmp_path: Path) -> None:
    boast = {"untrained_parts": [], "caution": "Validated for diagnostic use; no review needed."}

    def info(folder: Path):  # type: ignore[no-untyped-def]
        return describe_model(Settings(data_dir=isolated_settings, model_dir=folder))

    claimed = info(parts_folder(tmp_path / "a", components=PACKAGED, serving=boast))
    assert claimed.caution.startswith(GENERAL_CAUTION)  # its own words only after the general caution
    no_llm = info(parts_folder(tmp_path / "b", components={"whisper": "tiny.en"}, serving=boast))
    assert "llm" in no_llm.untrained_parts and no_llm.caution == UNTRAINED_CAUTION  # a fresh LLM is untrained
    unfinished = info(parts_folder(tmp_path / "c", components=PACKAGED, serving=None))  # a build that stopped
    assert unfinished.untrained and unfinished.spoken_caution
    for number, malformed in enumerate((["a list"], {"untrained_parts": 3}, {"caution": {"nested": 1}})):
        assert info(parts_folder(tmp_path / f"m{number}", components=PACKAGED, serving=malformed)).untrained


def phantom(folder: Path, findings: ChestFindings, seed: int) -> list[Path]:
    truth = write_ct_chest(folder, findings, seed=seed)
    return [folder / name for name in truth.files]


def spoken(text: str) -> bytes:
    from omni_core.speech.encode import wav_bytes
    from omni_core.speech.tts import load_synthesizer, speak

    synthesizer = load_synthesizer("piper", deterministic=True)  # the corpus's Piper voice, at its own pace
    return wav_bytes(speak(synthesizer, text), synthesizer.sample_rate)


def upload_files(client: TestClient, headers: dict[str, str], paths: list[Path]) -> str:
    files = [("files", (path.name, path.read_bytes())) for path in paths]
    uploaded = client.post("/api/v1/studies", files=files, headers=headers)
    assert uploaded.status_code == 201, uploaded.text
    return uploaded.json()["studies"][0]["study_uid"]


def test_a_spoken_question_about_a_generated_study_is_answered_correctly_and_spoken(
    make_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = make_client(model_preset="demo-cpu", max_new_tokens=16)
    headers = login(client, "clinician")
    effusion = upload_files(client, headers, phantom(tmp_path / "a", ChestFindings(effusion="left"), seed=424242))
    normal = upload_files(client, headers, phantom(tmp_path / "b", ChestFindings(), seed=434343))
    question = spoken("Is there a pleural effusion?")

    asked = client.post(f"/api/v1/studies/{effusion}/ask", files={"audio": ("q.wav", question)}, headers=headers)
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert "effusion" in body["transcript"].lower()
    assert body["answer"].strip(" .").lower() == "yes"
    audio = client.get(body["audio_url"], headers=headers)
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF" and len(audio.content) > 8000
    other = client.post(f"/api/v1/studies/{normal}/ask", files={"audio": ("q.wav", question)}, headers=headers)
    assert other.json()["answer"].strip(" .").lower() == "no"  # it looks at the image: not a constant "yes"
    calls = [e for e in audit_events(client) if e["type_code"] == "110103" and e["action"] == "E"]
    heard = "audio" if json.loads((DEFAULT_MODEL / "serving.json").read_text())["spoken_input"] == "audio" else "text"
    assert {call["details"]["question_input"] for call in calls} == {heard}  # the audit says what the model got
