"""``omniclinic demo-model build``: every stage runs, the folder is small, loads, and says what it is."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from app.cli import cli
from omni_core import OmniConfig, OmniForConditionalGeneration
from omni_core.trained_parts import COMPONENTS, load_model_folder
from training.demo_model import DemoPlan, kmeans_codebooks, model_card
from training.phantom_corpus import build_corpus


def test_the_quick_build_runs_every_stage_and_writes_a_loadable_model_with_its_card(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["demo-model", "build", "--quick", "--out", str(tmp_path / "model"), "--work", str(tmp_path / "work")]
    )
    assert result.exit_code == 0, result.output

    folder = tmp_path / "model"
    record = json.loads((folder / "training.json").read_text())
    assert [stage["stage"] for stage in record["stages"]] == [
        "0-audio-tokenizer",
        "1a-vision-pretraining",
        "1-image-text",
        "2-audio-text",
        "3-omni-sft",
    ]
    assert all(stage["final_train_loss"] is not None for stage in record["stages"][1:])
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()  # LoRA kept apart, not merged in
    assert json.loads((folder / COMPONENTS).read_text())["components"] == {}  # tiny: nothing packaged
    metrics = json.loads((folder / "metrics-phantoms.json").read_text())
    assert {"closed_accuracy", "closed_majority_baseline", "spoken_closed_accuracy", "report_findings_f1"} <= set(
        metrics
    )
    card = (folder / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "3-omni-sft" in card
    assert f"| closed_accuracy | {metrics['closed_accuracy']:.4g} | >= 0.90 |" in card  # the measured figure
    serving = json.loads((folder / "serving.json").read_text())
    assert serving["untrained_parts"] == ["audio_head", "speech_decoder"]
    assert "not for clinical use" in serving["caution"]
    choice = record["spoken_input_choice"]  # chosen on the validation split, ties go to the transcript
    heard, read = choice["spoken_closed_accuracy"], choice["transcribed_closed_accuracy"]
    assert serving["spoken_input"] == ("audio" if heard > read else "transcript")
    typed = choice["typed_closed_accuracy_same_questions"]  # the same questions typed, in training words
    assert f"questions typed: {typed:.2f} in the training phrasings" in card
    recognizer = record["recognizer"]  # tiny.en's adaptation, kept only when it measured better on validation
    kept = recognizer["validation_wer_adapted"] < recognizer["validation_wer_tiny_en"]
    assert recognizer["used"] == kept == (folder / "recognizer").is_dir()
    model, _ = load_model_folder(folder, tmp_path / "cache")
    assert not model.training


def test_the_card_sets_the_training_wording_beside_the_held_out_one_only_when_both_were_measured() -> None:
    from dataclasses import asdict

    record = {"plan": asdict(DemoPlan()), "corpus": {"studies": {}, "questions": {}}, "stages": []}
    typed = {"spoken_questions": 150, "typed_closed_accuracy_same_questions": 0.82}
    held_out = {"closed_accuracy": 0.67, "spoken_questions": 430, "typed_closed_accuracy_same_questions": 0.68}
    card = model_card(record | {"spoken_input_choice": typed, "metrics": held_out})
    assert "0.82 in the training phrasings" in card and "0.68 in the held-out phrasings" in card
    assert "a gap of +0.14, more than two standard errors: the held-out wording costs" in card
    close = model_card(record | {"spoken_input_choice": typed | {"spoken_questions": 8}, "metrics": held_out})
    assert "a gap of +0.14, within two standard errors" in close  # eight questions tell nothing apart
    unmeasured = model_card(record | {"spoken_input_choice": typed, "metrics": held_out | {"spoken_questions": 0}})
    assert "training phrasings" not in unmeasured


def test_kmeans_codebooks_take_up_the_speech_features_layer_by_layer(tmp_path: Path) -> None:
    build_corpus(tmp_path / "corpus", studies=6, seed=2, spoken_fraction=1.0)
    audio = sorted((tmp_path / "corpus").glob("*/audio/*.wav"))
    torch.manual_seed(0)
    model = OmniForConditionalGeneration(OmniConfig.from_preset("tiny")).eval()
    before = model.audio_tokenizer.rvq.layers[0]._codebook.embed.clone()

    left = kmeans_codebooks(model, audio, seed=0)

    energies = list(left.values())
    assert len(energies) == len(model.audio_tokenizer.rvq.layers)
    assert energies[0] < 0.5 and all(b <= a + 1e-6 for a, b in itertools.pairwise(energies))
    assert not torch.equal(before, model.audio_tokenizer.rvq.layers[0]._codebook.embed)


def test_study_conversations_ask_a_studys_questions_after_one_look_and_give_no_answer_away() -> None:
    from training.conversations import ContentPart, Conversation, Turn
    from training.demo_model import study_conversations

    questions = {  # question: (kind, answer)
        "Is there a pleural effusion?": ("presence_effusion", "yes"),
        "How many nodules?": ("count", "0"),
        "What modality?": ("modality", "CT"),
        "Which side is the mass on?": ("side", "left"),
        "Nodule or mass?": ("size_class", "mass"),
        "Is there a lung nodule or mass?": ("presence_lesion", "yes"),
        "Describe the findings.": ("findings", "A 31 mm mass in the left lower lobe. Left pleural effusion."),
    }
    typed, kinds = [], {}
    for study in range(12):
        for number, (question, (kind, answer)) in enumerate(questions.items()):
            media = (
                ContentPart("series", f"/corpus/s{study}/series") if study % 2 else ContentPart("image", f"/s{study}")
            )
            typed.append(
                Conversation(
                    turns=(
                        Turn("system", (ContentPart("text", "system"),)),
                        Turn("user", (media, ContentPart("text", question))),
                        Turn("assistant", (ContentPart("text", f"{answer} ({study})"),)),
                    ),
                    id=f"s{study}-q{number}",
                    group=f"s{study}",
                )
            )
            kinds[f"s{study}-q{number}"] = kind
    studies = study_conversations(typed, kinds, seed=0)
    assert [c.group for c in studies] == [f"s{study}" for study in range(12)]
    # the open answer states them all, and presence is the count's answer in other words
    closed = {q: a for q, (kind, a) in questions.items() if kind not in ("findings", "presence_lesion")}
    firsts = set()
    for study, conversation in enumerate(studies):
        roles = [turn.role for turn in conversation.turns]
        assert roles == ["system"] + ["user", "assistant"] * len(closed)
        media = [part for turn in conversation.turns for part in turn.parts if part.kind != "text"]
        assert len(media) == 1 and conversation.turns[1].parts[0] == media[0]  # the study, before the first question
        pairs = zip(conversation.turns[1::2], conversation.turns[2::2], strict=True)
        asked = [(user.parts[-1].value, answer.parts[0].value) for user, answer in pairs]
        assert sorted(asked) == sorted((q, f"{a} ({study})") for q, a in closed.items())  # each with its answer
        # asked only of a study with the finding: last, and the side (which names the mass) after the size class
        assert [question for question, _ in asked[-2:]] == ["Nodule or mass?", "Which side is the mass on?"]
        firsts.add(asked[0][0])
    assert firsts == set(closed) - {"Nodule or mass?", "Which side is the mass on?"}  # the others lead in some
    mixed = [typed[0], Conversation(turns=typed[len(questions)].turns, id="other", group="s0")]  # study 1 in s0
    with pytest.raises(ValueError, match="more than one image"):
        study_conversations(mixed, kinds | {"other": "count"}, seed=0)
    with pytest.raises(ValueError, match="no question kind"):
        study_conversations(typed, {}, seed=0)


def test_a_finished_stage_is_reused_only_with_the_same_conversations(tmp_path: Path) -> None:
    from training.demo_model import STAGE_KEY, DemoPlan, _stage_done, _stage_key

    plan = DemoPlan()
    stage, base = plan.stages[0], tmp_path / "base"
    base.mkdir()
    (base / "training.json").write_text("{}")
    data = {kind: tmp_path / f"{kind}.jsonl" for kind in (*stage.sources, "validation")}
    for path in data.values():
        path.write_text('{"id": "one"}\n')
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "model.safetensors").write_bytes(b"weights")
    (run / STAGE_KEY).write_text(json.dumps(_stage_key(stage, base, plan, data)))
    assert _stage_done(run, _stage_key(stage, base, plan, data))  # as a resumed build reads it back
    data["study"].write_text('{"id": "two"}\n')
    assert not _stage_done(run, _stage_key(stage, base, plan, data))
