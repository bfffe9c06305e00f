"""``omniclinic eval``: the public formats read, the usual metrics computed, a model folder asked."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli
from training.benchmarks import (
    BenchmarkError,
    choice_of,
    closed_correct,
    open_recall,
    read_benchmark,
    report_findings,
    score,
    score_reports,
)


def png(path: Path | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_the_usual_metrics() -> None:
    assert closed_correct("Yes.", "yes") and not closed_correct("yes, left", "yes")
    assert open_recall("a small left pleural effusion", "left pleural effusion") == 1.0
    assert open_recall("right effusion", "left pleural effusion") == pytest.approx(1 / 3)
    options = {"A": "CT", "B": "MRI", "C": "X-ray"}
    assert (
        choice_of("B", options) == "B" and choice_of("(C) X-ray", options) == "C" and choice_of("mri", options) == "B"
    )
    assert choice_of("I cannot tell", options) == ""
    assert report_findings("Findings: A 12 mm solid nodule in the left upper lobe. Right pleural effusion.") == {
        ("lesion", "left"), ("effusion", "right")
    }  # fmt: skip
    assert report_findings("No lung nodule or mass, no pleural effusion, no pneumothorax.") == set()
    assert report_findings("Small right nodule, otherwise normal lungs.") == {("lesion", "right")}  # denial stays put
    assert report_findings("No effusion; left pneumothorax.") == {("pneumothorax", "left")}
    reports = score_reports([
        ("Left nodule. Right pneumothorax.", "A 10 mm solid nodule in the left lower lobe.", False),
        ("Normal study.", "No lung nodule or mass.", True),
        ("Small right effusion.", "No lung nodule or mass.", True),
    ])  # fmt: skip
    assert reports["report_findings_f1"] == pytest.approx(0.5)  # 1 of 3 named is right, 1 of 1 expected found
    assert reports["invented_findings_rate"] == 0.5


def test_public_formats_are_read_from_a_local_copy(tmp_path: Path) -> None:
    rad = tmp_path / "vqa-rad"
    png(rad / "images" / "synpic1.jpg")
    rows = [
        {"qid": 1, "image_name": "synpic1.jpg", "question": "Effusion?", "answer": "no", "answer_type": "CLOSED"},
        {"qid": 2, "image_name": "synpic1.jpg", "question": "Where?", "answer": "left lung", "answer_type": "OPEN"},
    ]
    (rad / "test.json").write_text(json.dumps(rows))
    items = read_benchmark("vqa-rad", rad, tmp_path / "work")
    assert [(i.closed, i.answer) for i in items] == [(True, "no"), (False, "left lung")]
    assert items[0].image == rad / "images" / "synpic1.jpg"

    slake = tmp_path / "slake"
    png(slake / "imgs" / "xmlab1" / "source.jpg")
    image = "xmlab1/source.jpg"
    rows = [
        {"img_name": image, "question": "Which organ?", "answer": "Lung", "answer_type": "OPEN", "q_lang": "en"},
        {"img_name": image, "question": "哪个器官?", "answer": "肺", "answer_type": "OPEN", "q_lang": "zh"},
    ]
    (slake / "test.json").write_text(json.dumps(rows, ensure_ascii=False))
    assert [i.question for i in read_benchmark("slake", slake, tmp_path / "work")] == ["Which organ?"]

    path = tmp_path / "pathvqa"
    (path / "test.json").parent.mkdir()
    (path / "test.json").write_text(json.dumps([{"image": "a.png", "question": "Is it benign?", "answer": "Yes"}]))
    assert read_benchmark("pathvqa", path, tmp_path / "work")[0].closed

    gmai = tmp_path / "gmai"
    gmai.mkdir()
    image = base64.b64encode(png()).decode()
    (gmai / "test.tsv").write_text(f"index\tquestion\tA\tB\tanswer\timage\n7\tWhich modality?\tCT\tMRI\tB\t{image}\n")
    [item] = read_benchmark("gmai-mmbench", gmai, tmp_path / "work")
    assert item.kind == "choice" and item.answer == "B" and item.image.read_bytes() == png()
    assert score([item], ["B"])["choice_accuracy"] == 1.0

    (rad / "test.json").write_text("{not json")
    with pytest.raises(BenchmarkError, match="not readable JSON"):
        read_benchmark("vqa-rad", rad, tmp_path / "work")
    (rad / "test.json").write_text(json.dumps([{"question": "no image"}]))
    with pytest.raises(BenchmarkError, match="image_name"):
        read_benchmark("vqa-rad", rad, tmp_path / "work")


def test_eval_asks_a_model_folder_the_phantom_questions_and_writes_metrics(tmp_path: Path) -> None:
    import torch

    from omni_core import OmniConfig, OmniForConditionalGeneration
    from omni_core.tokenization import character_tokenizer
    from training.phantom_corpus import build_corpus

    build_corpus(tmp_path / "corpus", studies=6, seed=4, spoken_fraction=1.0)
    torch.manual_seed(0)
    OmniForConditionalGeneration(OmniConfig.from_preset("tiny")).save_pretrained(tmp_path / "model")
    character_tokenizer().save_pretrained(str(tmp_path / "model"))

    arguments = ["eval", "--model", str(tmp_path / "model"), "--benchmark", "phantoms"]
    arguments += ["--data", str(tmp_path / "corpus" / "train"), "--out", str(tmp_path / "eval")]
    result = CliRunner().invoke(cli, [*arguments, "--limit", "12", "--max-new-tokens", "4"])

    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["questions"] == 12 and metrics["closed_questions"] + metrics["open_questions"] == 12
    for key in ("closed_accuracy", "report_findings_f1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["spoken_questions"] > 0 and 0.0 <= metrics["spoken_closed_accuracy"] <= 1.0
    assert 0.0 <= metrics["transcribed_closed_accuracy"] <= 1.0
    assert metrics["question_word_error_rate"] < 0.9  # it hears speech of the question (noise would be ~1)
    assert "| closed_accuracy |" in (tmp_path / "eval" / "metrics.md").read_text()
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 12
    refused = CliRunner().invoke(cli, ["eval", "--model", str(tmp_path), "--benchmark", "phantoms", "--data", "x"])
    assert refused.exit_code == 2 and "model folder" in refused.output


def test_closed_accuracy_comes_with_the_majority_answer_baseline() -> None:
    from training.benchmarks import Item

    items = [Item(str(n), Path("x"), "Is there a pneumothorax?", answer, "presence", True) for n, answer in
             enumerate(["no", "no", "no", "yes"])]  # fmt: skip
    metrics = score(items, ["no", "no", "no", "no"])  # a model that always says "no"
    assert metrics["closed_accuracy"] == metrics["closed_majority_baseline"] == 0.75


def test_closed_accuracy_is_also_given_by_question_kind() -> None:
    from training.benchmarks import Item, markdown_table

    asked = [("presence", "yes", "yes"), ("presence", "no", "no"), ("side", "left", "left"), ("side", "right", "left")]
    items = [Item(str(n), Path("x"), "?", answer, kind, True) for n, (kind, answer, _) in enumerate(asked)]
    metrics = score(items, [said for *_, said in asked])  # a model that says "left" to every side question
    assert metrics["closed_accuracy"] == 0.75
    assert metrics["closed_accuracy_by_kind"] == {"presence": 1.0, "side": 0.5}
    assert "| closed_accuracy_by_kind | presence 1.0, side 0.5 |" in markdown_table("phantoms", "m", metrics)
