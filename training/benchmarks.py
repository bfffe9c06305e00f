"""``omniclinic eval``: a model folder asked a benchmark's questions, scored with the benchmark's usual metrics.

Benchmarks and the formats read (a local copy the user provides; nothing is downloaded):

- ``phantoms``: a split of the synthetic corpus (``questions.jsonl``, ``training.phantom_corpus``);
  besides the usual metrics, side accuracy on studies stored as usual and reversed, and for each
  study a drafted report scored against its ground truth (findings F1, invented findings on normal
  studies).
- ``vqa-rad``: a JSON list of ``{"image_name", "question", "answer", "answer_type": CLOSED|OPEN}``,
  images in ``images/`` beside it (or the folder itself).
- ``slake``: a JSON list of ``{"img_name", "question", "answer", "answer_type", "q_lang"}`` (English
  questions scored), images under ``imgs/``.
- ``pathvqa``: a JSON list of ``{"image", "question", "answer"}``; yes/no answers are the closed ones.
- ``gmai-mmbench``: a TSV with ``question``, options ``A``..``E``, ``answer`` (a letter) and ``image``
  (a path, or the image base64-encoded); multiple-choice accuracy.

Metrics: closed-question accuracy (exact, case and punctuation aside), open-question recall (the share
of the reference answer's words the answer contains), multiple-choice accuracy. ``metrics.json`` and
``metrics.md`` are written to ``--out``, with every answer in ``predictions.jsonl``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS = ("phantoms", "vqa-rad", "slake", "pathvqa", "gmai-mmbench")
CHOICES = "ABCDE"
FINDING_WORDS = ("nodule", "mass", "effusion", "pneumothorax")


class BenchmarkError(ValueError):
    """A benchmark folder or file that cannot be read as its format (the message says which and why)."""


@dataclass
class Item:
    id: str
    image: Path
    question: str
    answer: str
    kind: str  # closed, open, choice (or a phantom question's kind)
    closed: bool
    options: dict[str, str] = field(default_factory=dict)
    reversed: bool = False
    audio: Path | None = None
    """The question spoken (phantoms with spoken questions)."""


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.casefold())


def closed_correct(answer: str, reference: str) -> bool:
    return words(answer) == words(reference)


def open_recall(answer: str, reference: str) -> float:
    expected = words(reference)
    got = set(words(answer))
    return sum(word in got for word in expected) / len(expected) if expected else 0.0


def choice_of(answer: str, options: dict[str, str]) -> str:
    """The option an answer picks: a leading letter ("B", "(B)", "B."), else the option whose text it is."""
    match = re.match(r"\s*\(?([A-E])\b", answer)
    if match and match.group(1) in options:
        return match.group(1)
    for letter, text in options.items():
        if words(text) and words(text) == words(answer):
            return letter
    return ""


# -- readers -----------------------------------------------------------------------------------------
def _json_list(path: Path) -> list[dict[str, Any]]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkError(f"{path.name} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(loaded, list) or not all(isinstance(row, dict) for row in loaded):
        raise BenchmarkError(f"{path.name} must be a JSON list of objects")
    return loaded


def _find(data: Path, *patterns: str) -> Path:
    """The first file in ``data`` a pattern matches, trying the patterns in order (a name is a pattern)."""
    for pattern in patterns:
        found = sorted(path for path in data.glob(pattern) if path.is_file())
        if found:
            return found[0]
    raise BenchmarkError(f"no {' or '.join(patterns)} in the data folder")


def read_vqa_rad(data: Path) -> list[Item]:
    rows = _json_list(data if data.is_file() else _find(data, "VQA_RAD Dataset Public.json", "test.json", "*.json"))
    base = data.parent if data.is_file() else data
    images = base / "images" if (base / "images").is_dir() else base
    return [
        Item(
            str(row.get("qid", number)),
            images / str(row["image_name"]),
            str(row["question"]),
            str(row["answer"]),
            str(row.get("answer_type", "")).lower() or "open",
            str(row.get("answer_type", "")).upper() == "CLOSED",
        )
        for number, row in enumerate(rows)
    ]


def read_slake(data: Path) -> list[Item]:
    rows = _json_list(data if data.is_file() else _find(data, "test.json", "*.json"))
    base = data.parent if data.is_file() else data
    return [
        Item(
            str(row.get("qid", number)),
            base / "imgs" / str(row["img_name"]),
            str(row["question"]),
            str(row["answer"]),
            str(row.get("answer_type", "")).lower() or "open",
            str(row.get("answer_type", "")).upper() == "CLOSED",
        )
        for number, row in enumerate(rows)
        if str(row.get("q_lang", "en")) == "en"
    ]


def read_pathvqa(data: Path) -> list[Item]:
    rows = _json_list(data if data.is_file() else _find(data, "test.json", "*.json"))
    base = data.parent if data.is_file() else data
    items = []
    for number, row in enumerate(rows):
        answer = str(row["answer"])
        closed = words(answer) in (["yes"], ["no"])
        image = base / "images" / str(row["image"]) if (base / "images").is_dir() else base / str(row["image"])
        items.append(
            Item(
                str(row.get("id", number)), image, str(row["question"]), answer, "closed" if closed else "open", closed
            )
        )
    return items


def read_gmai_mmbench(data: Path, work_dir: Path) -> list[Item]:
    path = data if data.is_file() else _find(data, "test.tsv", "GMAI_mm_bench_VAL.tsv", "*.tsv")
    base = path.parent
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise BenchmarkError(f"{path.name} is not a readable TSV ({type(exc).__name__})") from None
    items = []
    for number, row in enumerate(rows):
        options = {letter: row[letter] for letter in CHOICES if row.get(letter)}
        image_value = row.get("image_path") or row.get("image") or ""
        if image_value and (base / image_value).is_file():
            image = base / image_value
        else:  # base64-encoded image in the TSV
            try:
                raw = base64.b64decode(image_value, validate=True)
            except ValueError:
                raise BenchmarkError(f"row {number + 1}: the image is neither a file nor base64") from None
            image = work_dir / "images" / f"{number:06d}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(raw)
        listed = " ".join(f"{letter}. {text}" for letter, text in options.items())
        question = f"{row['question']} Options: {listed}. Answer with the letter."
        items.append(
            Item(str(row.get("index", number)), image, question, row["answer"].strip(), "choice", False, options)
        )
    return items


def read_phantoms(data: Path) -> list[Item]:
    split = data / "test" if (data / "test" / "questions.jsonl").is_file() else data
    path = split / "questions.jsonl"
    if not path.is_file():
        raise BenchmarkError("no questions.jsonl (give the corpus folder or one split of it)")
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        folder = split / record["study"]
        image = folder / "series" if record["modality"] == "CT" else folder / "0001.dcm"
        items.append(
            Item(
                record["id"], image, record["question"], record["answer"], record["kind"], record["closed"],
                reversed=record["reversed"], audio=split / record["audio"] if record.get("audio") else None,
            )
        )  # fmt: skip
    return items


# -- scoring -----------------------------------------------------------------------------------------
def report_findings(text: str) -> set[tuple[str, str]]:
    """(finding, side) pairs a report names ("A 12 mm solid nodule in the left upper lobe.", "Right
    pleural effusion."), phrase by phrase: a phrase that denies ("no ...", "otherwise normal") names
    none, and its denial reaches no other phrase."""
    named = set()
    for sentence in re.split(r"[.;,:\n]|\botherwise\b|\bbut\b|\bwith\b", text.casefold()):
        if re.search(r"\bno\b|\bwithout\b|\bnormal\b", sentence):  # a denial covers its own phrase only
            continue
        side = "left" if "left" in sentence else "right" if "right" in sentence else ""
        for word in FINDING_WORDS:
            if re.search(rf"\b{word}(es|s)?\b", sentence):
                named.add(("lesion" if word in ("nodule", "mass") else word, side))
    return named


def f1(predicted: set[Any], expected: set[Any]) -> float:
    if not predicted and not expected:
        return 1.0
    hits = len(predicted & expected)
    precision = hits / len(predicted) if predicted else 0.0
    recall = hits / len(expected) if expected else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def score(items: list[Item], answers: list[str]) -> dict[str, Any]:
    pairs = list(zip(items, answers, strict=True))
    closed = [closed_correct(a, i.answer) for i, a in pairs if i.closed]
    opened = [open_recall(a, i.answer) for i, a in pairs if not i.closed and i.kind != "choice"]
    choice = [choice_of(a, i.options) == i.answer for i, a in pairs if i.kind == "choice"]

    def mean(values: Iterable[float]) -> float | None:
        values = list(values)
        return round(sum(values) / len(values), 4) if values else None

    kinds = [i.kind for i in items if i.closed]
    references = [" ".join(words(i.answer)) for i in items if i.closed]
    majority = {
        kind: max(sorted(set(found)), key=found.count)
        for kind in set(kinds)
        for found in [[r for k, r in zip(kinds, references, strict=True) if k == kind]]
    }
    metrics: dict[str, Any] = {
        "questions": len(items),
        "closed_questions": len(closed),
        "closed_accuracy": mean(closed),
        "closed_majority_baseline": mean(r == majority[k] for k, r in zip(kinds, references, strict=True)),
        "open_questions": len(opened),
        "open_recall": mean(opened),
    }
    if choice:
        metrics |= {"choice_questions": len(choice), "choice_accuracy": mean(choice)}
    sides = [(i.reversed, closed_correct(a, i.answer)) for i, a in pairs if i.kind == "side"]
    if closed:
        metrics["closed_accuracy_by_kind"] = {
            kind: mean(closed_correct(a, i.answer) for i, a in pairs if i.closed and i.kind == kind)
            for kind in sorted(set(kinds))
        }
    if sides:
        metrics["side_accuracy_usual"] = mean(correct for reversed_, correct in sides if not reversed_)
        metrics["side_accuracy_reversed"] = mean(correct for reversed_, correct in sides if reversed_)
    return metrics


def score_reports(drafts: list[tuple[str, str, bool]]) -> dict[str, Any]:
    """(drafted text, reference report, normal) per study: findings F1 (micro, by (finding, side)) and the
    share of normal studies whose draft names a finding."""
    hits = predicted = expected = 0
    invented = normal = 0
    for draft, reference, is_normal in drafts:
        named, truth = report_findings(draft), report_findings(reference)
        hits, predicted, expected = hits + len(named & truth), predicted + len(named), expected + len(truth)
        if is_normal:
            normal += 1
            invented += bool(named)
    precision = hits / predicted if predicted else (1.0 if not expected else 0.0)
    recall = hits / expected if expected else 1.0
    return {
        "reports": len(drafts),
        "report_findings_f1": round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0,
        "invented_findings_rate": round(invented / normal, 4) if normal else None,
    }


def markdown_table(benchmark: str, model: str, metrics: dict[str, Any]) -> str:
    lines = [f"# {benchmark}: {model}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in metrics.items()]
    return "\n".join(lines) + "\n"


def _cell(value: object) -> str:
    if isinstance(value, dict):  # by question kind: "count 0.45, side 0.51"
        return ", ".join(f"{key} {_cell(item)}" for key, item in value.items())
    return "—" if value is None else str(value)


def read_benchmark(name: str, data: Path, work_dir: Path) -> list[Item]:
    readers: dict[str, Callable[[Path], list[Item]]] = {
        "phantoms": read_phantoms,
        "vqa-rad": read_vqa_rad,
        "slake": read_slake,
        "pathvqa": read_pathvqa,
        "gmai-mmbench": lambda path: read_gmai_mmbench(path, work_dir),
    }
    if name not in readers:
        raise BenchmarkError(f"benchmarks are {', '.join(BENCHMARKS)}")
    if not data.exists():
        raise BenchmarkError("the data path does not exist")
    try:
        return readers[name](data)
    except KeyError as exc:
        raise BenchmarkError(f"a row lacks the field {exc.args[0]!r} its format needs") from None


def score_spoken(
    items: list[Item], typed: list[str] | None, ask: Callable[..., str], recognizer_folder: Path | None = None
) -> dict[str, Any]:
    """The spoken closed questions asked both ways: the model hearing the audio itself, and the model
    reading the recognizer's transcript (what the clinician sees); beside them, the same questions typed,
    and the recognizer's word error rate on them. The recognizer is the app's: the one adapted with the
    model when it has one (``recognizer_folder``), else Whisper tiny.en, with the radiology lexicon."""
    import jiwer

    from medical_data.audio import decode_audio
    from omni_core.speech.asr import RecognitionOptions, SpeechRecognizer, resolve_model
    from omni_core.speech.errors import NoSpeechDetected

    typed_answers = typed if typed is not None else [""] * len(items)
    spoken = [(item, answer) for item, answer in zip(items, typed_answers, strict=True) if item.audio and item.closed]
    if not spoken:
        return {"spoken_questions": 0, "spoken_closed_accuracy": None, "transcribed_closed_accuracy": None}
    recognizer = SpeechRecognizer(
        recognizer_folder or resolve_model("tiny.en", Path.home()), options=RecognitionOptions()
    )
    heard, read, same_typed, transcripts = [], [], [], []
    for item, typed_answer in spoken:
        audio = item.audio or Path()
        heard.append(closed_correct(ask(item.image, item.question, audio), item.answer))
        try:
            transcript = recognizer.transcribe(decode_audio(audio).samples).text.strip()
        except NoSpeechDetected:
            transcript = ""
        transcripts.append(transcript)
        read.append(closed_correct(ask(item.image, transcript), item.answer) if transcript else False)
        same_typed.append(closed_correct(typed_answer, item.answer))
    references = [" ".join(words(item.question)) for item, _ in spoken]
    hypotheses = [" ".join(words(transcript)) or "-" for transcript in transcripts]
    return {
        "spoken_questions": len(spoken),
        "spoken_closed_accuracy": round(sum(heard) / len(heard), 4),
        "transcribed_closed_accuracy": round(sum(read) / len(read), 4),
        "typed_closed_accuracy_same_questions": round(sum(same_typed) / len(same_typed), 4) if typed else None,
        "question_word_error_rate": round(float(jiwer.wer(references, hypotheses)), 4),
    }


# -- running -----------------------------------------------------------------------------------------
def run(
    model_dir: Path,
    benchmark: str,
    data: Path,
    out: Path,
    *,
    limit: int | None = None,
    max_new_tokens: int = 48,
    report_tokens: int = 160,
    progress: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Ask ``model_dir`` every question of the benchmark (the first ``limit``); write and return metrics.
    Answers get ``max_new_tokens``, drafted reports ``report_tokens`` (the app's own answer limit)."""
    from medical_data.report_formats import DRAFT_REQUEST
    from omni_core.trained_parts import recognizer_folder
    from omniclinic_common.files import write_atomically
    from training.phantom_corpus import REFERENCE_REPORT

    out.mkdir(parents=True, exist_ok=True)
    items = read_benchmark(benchmark, data, out / ".work")[:limit]
    if not items:
        raise BenchmarkError("the benchmark holds no questions")
    cache = cache_dir or model_dir.parent / ".cache"
    ask = asker(model_dir, cache, max_new_tokens)

    answers = []
    for number, item in enumerate(items):
        answers.append(ask(item.image, item.question))
        if progress is not None:
            progress(number + 1, len(items))
    metrics = score(items, answers)
    if benchmark == "phantoms":
        studies = {item.image: item for item in items}
        drafts = []
        for image in studies:
            folder = image.parent  # the study: its series folder's, or its radiograph's
            reference = (folder / REFERENCE_REPORT).read_text(encoding="utf-8")
            truth = json.loads((folder / "ground_truth.json").read_text(encoding="utf-8"))
            drafts.append((ask(image, DRAFT_REQUEST, tokens=report_tokens), reference, bool(truth["normal"])))
        metrics |= score_reports(drafts)
        reports = [
            json.dumps({"study": str(i.parent.name), "draft": d, "reference": r})
            for i, (d, r, _) in zip(studies, drafts, strict=True)
        ]
        write_atomically(out / "reports.jsonl", "".join(line + "\n" for line in reports))
        metrics |= score_spoken(items, answers, ask, recognizer_folder(model_dir, cache))
    lines = [
        json.dumps({"id": i.id, "question": i.question, "answer": i.answer, "kind": i.kind, "prediction": a})
        for i, a in zip(items, answers, strict=True)
    ]
    write_atomically(out / "predictions.jsonl", "".join(line + "\n" for line in lines))
    write_atomically(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    write_atomically(out / "metrics.md", markdown_table(benchmark, model_dir.name, metrics))
    return metrics


def spoken_paths(model_dir: Path, split: Path, cache_dir: Path, *, limit: int | None = None) -> dict[str, Any]:
    """The first ``limit`` spoken closed questions of a phantom split asked both ways (heard, and read
    from the app's recognizer's transcript), and typed beside them: what chooses how the app gives the
    model a spoken question. On a training-phrased split the typed figure, against the held-out split's,
    tells what the model sees from what the held-out wording costs."""
    from omni_core.trained_parts import recognizer_folder

    items = [item for item in read_phantoms(split) if item.audio and item.closed][:limit]
    ask = asker(model_dir, cache_dir, 48)
    typed = [ask(item.image, item.question) for item in items]
    return score_spoken(items, typed, ask, recognizer_folder(model_dir, cache_dir))


def asker(model_dir: Path, cache_dir: Path, max_new_tokens: int) -> Callable[..., str]:
    """``ask(image, question, audio=None, tokens=max_new_tokens)``: the model folder's greedy answer
    about an image or series folder, to a typed question or (``audio``) a spoken one, as training asked."""
    import torch

    from omni_core import OmniProcessor
    from omni_core.modeling_omni import DecodingOptions
    from omni_core.prompts import SYSTEM_PROMPT
    from omni_core.trained_parts import load_model_folder
    from training.conversations import ContentPart, Conversation, Turn
    from training.data import MediaReader

    model, tokenizer = load_model_folder(model_dir, cache_dir)
    processor, reader = OmniProcessor(model.config, tokenizer), MediaReader(model.config)

    def options(tokens: int) -> DecodingOptions:
        plain = DecodingOptions(max_new_tokens=tokens, speech=False, temperature=0.0)
        return processor.decoding_options(plain, speak_sentences=False)

    @torch.no_grad()
    def ask(image: Path, question: str, audio: Path | None = None, tokens: int = max_new_tokens) -> str:
        media = ContentPart("series" if image.is_dir() else "image", str(image))
        system = Turn("system", (ContentPart("text", SYSTEM_PROMPT),))
        asked = ContentPart("audio", str(audio)) if audio is not None else ContentPart("text", question)
        turns = (system, Turn("user", (media, asked)))
        prompt = processor(reader.messages(Conversation(turns=turns, id="eval")), add_generation_prompt=True)
        result = model.generate(prompt.input_ids, options=options(tokens), **prompt.model_kwargs())
        return tokenizer.decode([t for t in result.token_ids if t not in processor.control_ids]).strip()

    return ask
