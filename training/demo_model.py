"""``omniclinic demo-model build``: the default model, trained on this machine through the paper's stages.

No vision-language or omni weights install offline, so the default model is trained here, on the
``demo-cpu`` architecture, from the parts that do install: SmolLM2-135M-Instruct as the LLM and
Whisper tiny.en's encoder as the audio tokenizer's encoder. The data is the synthetic phantom corpus
(``training.phantom_corpus``): chest CTs and radiographs with controlled findings, their questions
typed and spoken, and reference reports. The stages follow Baichuan-Omni-1.5 at small scale:

0. audio tokenizer: the residual VQ codebooks set by k-means on the Whisper encoder's pooled features
   of the corpus's speech, layer by layer on the residuals (the initialisation EnCodec and SoundStream
   use; the paper goes on to train its tokenizer with reconstruction losses, which this budget skips);
1a. vision pretraining: the paper starts from a pretrained vision encoder, which does not install
   offline, so the encoder and merger are pretrained here on the training studies' ground truth
   (``training.vision_pretrain``);
1. image-text: the projector learns to carry the pretrained encoder's tokens to the frozen LLM
   (study conversations, ``study_conversations``, and reports), as the paper's first image-text stage
   trains the projector alone;
2. audio-text: the audio embedding learns to carry speech to the frozen LLM (each spoken question
   repeated as text, and answered);
3. omni SFT: LoRA adapters on the LLM with the projector and audio embedding, on every kind of
   conversation (study conversations, typed and spoken questions, reports, repetition); the pretrained
   encoder stays as stage 1a left it.

The speech head and flow decoder are not trained here (the app speaks with Piper or espeak-ng), and
say so in the folder's serving record. The result is a trained-parts folder (``omni_core.trained_parts``)
with a model card; ``omniclinic eval`` on the held-out split measures it, and the card reports that.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from medical_data.phantoms import HELD_OUT_PHRASINGS, TRAINING_PHRASINGS
from omni_core.prompts import SYSTEM_PROMPT
from training.config import DataConfig, DataSource, LoraConfig, ModelConfig, OptimConfig, RecipeConfig, RunConfig
from training.conversations import ContentPart, Conversation, Turn, load_conversations, write_conversations

MODEL_CARD = "MODEL_CARD.md"
SERVING_RECORD = "serving.json"
TRAINING_RECORD = "training.json"
METRICS = "metrics-phantoms.json"
STAGE_KEY = "stage.json"
"""Beside a stage's run: what it was made from (``_stage_key``), so a later build knows whether to reuse it."""
REPEAT_REQUEST = "Repeat what was said."
TRAINED_PREFIXES = ("vision.", "audio_tokenizer.rvq.", "audio_embedding.")
UNTRAINED = ("audio_head", "speech_decoder")
SPOKEN_CAUTION = "Demonstration model, not for clinical use."
CAUTION = (
    "Demonstration model trained only on synthetic chest phantoms: not for clinical use. "
    "A qualified clinician must read the study."
)
PARTS_OFF = dict.fromkeys(
    ("vision", "projector", "audio_tokenizer", "audio_embedding", "llm", "audio_head", "speech_decoder"), False
)


@dataclass
class StagePlan:
    name: str
    description: str
    trainable: tuple[str, ...]
    steps: int
    lr: float
    sources: tuple[str, ...]
    """Conversation kinds mixed in: study, typed, spoken, report, repeat."""
    weights: tuple[float, ...] = ()
    """Each source's share of the mixture, by conversation count (``training.data.mix``); equal when empty."""
    lora: bool = False

    def __post_init__(self) -> None:
        if self.weights and (
            len(self.weights) != len(self.sources) or not all(w > 0 and math.isfinite(w) for w in self.weights)
        ):
            raise ValueError(f"stage {self.name}: one weight > 0 for each source, or none")


@dataclass
class DemoPlan:
    studies: int = 1500
    seed: int = 0
    spoken_fraction: float = 0.35
    preset: str = "demo-cpu"
    max_tokens: int = 640
    """Conversations packed per row (segment-masked): about five single questions, or two studies' conversations."""
    validation_conversations: int = 48
    eval_limit: int | None = None
    vision_steps: int = 1000
    """Stage 1a: steps of supervised vision pretraining (batches of 16 studies)."""
    asr_steps: int = 80
    """Steps of Whisper tiny.en's decoder layers on the training split's spoken questions (batches of 8)."""
    asr_validation_pairs: int | None = 150
    """Validation recordings (a seeded sample) on which the adapted recognizer is kept or not."""
    choice_limit: int | None = 150
    """Spoken validation questions asked both ways to choose how the app gives spoken questions to the model."""
    stages: list[StagePlan] = field(
        default_factory=lambda: [
            StagePlan(
                "1-image-text",
                "Image-text alignment: the projector carries the pretrained vision encoder's tokens to the frozen LLM.",
                ("projector",),
                steps=200,
                lr=1e-3,
                sources=("study", "report"),
                weights=(3.0, 2.0),
            ),
            StagePlan(
                "2-audio-text",
                "Audio-text alignment: the audio embedding carries speech to the frozen LLM.",
                ("audio_embedding",),
                steps=120,
                lr=2e-3,
                sources=("repeat", "spoken"),
            ),
            StagePlan(
                "3-omni-sft",
                "Omni SFT: LoRA on the LLM with the projector and audio embedding, on every kind of conversation.",
                ("projector", "audio_embedding"),
                steps=600,
                lr=5e-4,
                sources=("study", "typed", "spoken", "report", "repeat"),
                weights=(3.0, 1.0, 1.5, 2.0, 1.0),
                lora=True,
            ),
        ]
    )

    @classmethod
    def quick(cls, preset: str = "tiny") -> DemoPlan:
        """A few steps of every stage on a few studies: the pipeline end to end, in a minute (tests)."""
        plan = cls(studies=12, spoken_fraction=0.5, preset=preset, max_tokens=512, validation_conversations=4)
        for stage in plan.stages:
            stage.steps = 2
        plan.eval_limit = 6
        plan.vision_steps = 2
        plan.asr_steps = 2
        plan.choice_limit = 4
        return plan


def _kind(conversation: Conversation) -> str:
    if conversation.id.endswith("-report"):
        return "report"
    if any(part.kind == "audio" for turn in conversation.turns for part in turn.parts):
        return "spoken"
    return "typed"


def repeat_conversations(split_dir: Path) -> list[Conversation]:
    """Each spoken question of a split, to be repeated as text (what the audio embedding must carry)."""
    conversations = []
    for line in (split_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("audio"):
            asked = (ContentPart("audio", str(split_dir / record["audio"])), ContentPart("text", REPEAT_REQUEST))
            conversations.append(
                Conversation(
                    turns=(
                        Turn("system", (ContentPart("text", SYSTEM_PROMPT),)),
                        Turn("user", asked),
                        Turn("assistant", (ContentPart("text", record["question"]),)),
                    ),
                    id=f"{record['id']}-repeat",
                    group=record["study"],
                )
            )
    return conversations


STUDY_LEAVES_OUT = ("findings", "presence_lesion")
"""Question kinds kept out of study conversations: the open "findings" answer states every closed one,
and a lesion's presence is its count's answer in other words (both are still asked alone)."""
STUDY_ASKS_LAST = ("size_class", "side")
"""Question kinds a study conversation asks after the others, in this order: they are asked only of a
study with the finding, so asked first they would give the presence and count answers away, and a
lesion's side question names it a nodule or a mass."""


def study_conversations(typed: list[Conversation], kinds: dict[str, str], *, seed: int) -> list[Conversation]:
    """Each study's closed typed questions asked one after another in one conversation.

    The study's tokens are then read once for all its answers: a step holds several times the closed
    answers it would with one conversation per question (a question alone is about 115 tokens, the
    study and system turn 95 of them, its answer 2). The order is shuffled, so that most kinds of
    question come first in some studies, as a single question does when the model is asked; an answer
    that would give later ones away is not there to copy (``STUDY_LEAVES_OUT``, ``STUDY_ASKS_LAST``).
    ``kinds`` maps a conversation's id to its question's kind (the corpus's ``questions.jsonl``); a
    study is one group with one image or series, and a group holding two is refused."""
    rng = random.Random(seed)
    unknown = [conversation.id for conversation in typed if conversation.id not in kinds]
    if unknown:
        raise ValueError(f"{len(unknown)} typed conversations have no question kind, the first {unknown[0]!r}")
    by_study: dict[str, list[Conversation]] = {}
    for conversation in typed:
        if kinds[conversation.id] not in STUDY_LEAVES_OUT:
            by_study.setdefault(conversation.group or conversation.id, []).append(conversation)
    studies = []
    for study, asked in by_study.items():
        if len({tuple(conversation.media()) for conversation in asked}) != 1:
            raise ValueError(f"the questions of group {study!r} are about more than one image or series")
        asked = list(asked)
        rng.shuffle(asked)
        asked.sort(key=lambda conversation: _asked_at(kinds[conversation.id]))  # stable: shuffled within a rank
        turns = list(asked[0].turns)  # system, user (the study and a question), assistant
        for conversation in asked[1:]:
            for turn in conversation.turns:
                if turn.role == "user":  # the question without the study, which the first turn shows
                    turns.append(Turn("user", tuple(part for part in turn.parts if part.kind == "text")))
                elif turn.role == "assistant":
                    turns.append(turn)
        studies.append(Conversation(turns=tuple(turns), id=f"{study}-study", group=study))
    return studies


def _asked_at(kind: str) -> int:
    return STUDY_ASKS_LAST.index(kind) + 1 if kind in STUDY_ASKS_LAST else 0


def stage_data(corpus: Path, data_dir: Path, plan: DemoPlan) -> tuple[dict[str, Path], Path]:
    """One conversations file per kind (train split) and a small validation file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    by_kind: dict[str, list[Conversation]] = {"typed": [], "spoken": [], "report": []}
    for conversation in load_conversations(corpus / "train" / "conversations.jsonl"):
        by_kind[_kind(conversation)].append(conversation)
    by_kind["repeat"] = repeat_conversations(corpus / "train")
    questions = (corpus / "train" / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    kinds = {record["conversation"]: record["kind"] for record in map(json.loads, questions)}
    by_kind["study"] = study_conversations(by_kind["typed"], kinds, seed=plan.seed)
    files = {}
    for kind, conversations in by_kind.items():
        files[kind] = data_dir / f"{kind}.jsonl"
        write_conversations(files[kind], conversations)
    validation = load_conversations(corpus / "validation" / "conversations.jsonl")
    validation += repeat_conversations(corpus / "validation")
    random.Random(plan.seed).shuffle(validation)
    validation_file = data_dir / "validation.jsonl"
    write_conversations(validation_file, validation[: plan.validation_conversations])
    return files, validation_file


# -- stage 0: the audio tokenizer's codebooks ---------------------------------------------------------------
@torch.no_grad()
def kmeans_codebooks(model: Any, audio_files: list[Path], *, seed: int, iterations: int = 12) -> dict[str, float]:
    """Set each RVQ layer's codebook by k-means on the residual the layers before it leave; returns
    the share of the pooled features' energy each layer's residual still holds."""
    from medical_data.audio import decode_audio
    from omni_core.modeling_audio import log_mel, pad_mels

    if not audio_files:
        raise ValueError("no speech to fit the codebooks to: build the corpus with spoken questions")
    tokenizer = model.audio_tokenizer
    config = tokenizer.config
    features = []
    window = config.max_audio_seconds * config.sampling_rate  # a longer clip counts by its first window
    for start in range(0, len(audio_files), 16):
        mels = [
            torch.from_numpy(log_mel(decode_audio(path).samples[:window], config))
            for path in audio_files[start : start + 16]
        ]
        batch, frames = pad_mels(mels)
        pooled, mask = tokenizer.pooled(batch, frames)
        features.append(pooled[mask])
    residual = torch.cat(features).float()
    total = float(residual.pow(2).sum())
    generator = torch.Generator().manual_seed(seed)
    left = {}
    for index, layer in enumerate(tokenizer.rvq.layers):
        codebook = layer._codebook.embed  # (1, K, D)
        size = codebook.shape[1]
        centres = residual[torch.randperm(len(residual), generator=generator)[:size]].clone()
        if len(centres) < size:  # fewer vectors than codes: the rest repeat, jittered
            extra = centres[torch.randint(len(centres), (size - len(centres),), generator=generator)]
            centres = torch.cat([centres, extra + 1e-3 * torch.randn(extra.shape, generator=generator)])
        for _ in range(iterations):
            nearest = torch.cdist(residual, centres).argmin(dim=1)
            sums = torch.zeros_like(centres).index_add_(0, nearest, residual)
            counts = torch.bincount(nearest, minlength=size).float()[:, None]
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        codebook.copy_(centres[None].to(codebook.dtype))
        residual = residual - centres[torch.cdist(residual, centres).argmin(dim=1)]
        left[f"layer_{index}"] = round(float(residual.pow(2).sum()) / total, 4)
    return left


# -- the build ---------------------------------------------------------------------------------------------
def build_demo_model(
    out: Path,
    *,
    work: Path,
    cache_dir: Path,
    plan: DemoPlan | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Corpus, stages 0-3, the trained-parts folder in ``out`` (replaced when it exists), evaluation and
    model card. ``work`` keeps the corpus and each stage's run. Returns the training record."""
    from omni_core import OmniConfig, OmniForConditionalGeneration
    from omni_core.model_cache import building_folder
    from omni_core.tokenization import character_tokenizer, load_tokenizer
    from omni_core.trained_parts import component_folders, save_trained_parts
    from training.models import save_model_folder
    from training.phantom_corpus import build_corpus
    from training.recipes.omni import recipe_main

    plan = plan or DemoPlan()
    started = time.monotonic()
    record: dict[str, Any] = {
        "plan": asdict(plan),
        "stages": [],
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    work.mkdir(parents=True, exist_ok=True)

    corpus = work / "corpus"
    made_with = {
        "studies": plan.studies,
        "seed": plan.seed,
        "spoken_fraction": plan.spoken_fraction,
        "phrasings": _digest(json.dumps([TRAINING_PHRASINGS, HELD_OUT_PHRASINGS]).encode()),
    }
    marker = corpus / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8"))["made_with"] == made_with:
        log(f"corpus: reusing {corpus} (the same studies, seed, spoken fraction and phrasings)")
        record["corpus"] = json.loads(marker.read_text(encoding="utf-8"))["counts"]
    else:
        log(f"corpus: {plan.studies} phantom studies (seed {plan.seed}) ...")
        marker.unlink(missing_ok=True)
        counts = build_corpus(corpus, studies=plan.studies, seed=plan.seed, spoken_fraction=plan.spoken_fraction)
        record["corpus"] = asdict(counts)
        marker.write_text(json.dumps({"made_with": made_with, "counts": record["corpus"]}) + "\n", encoding="utf-8")
    files, validation_file = stage_data(corpus, work / "data", plan)

    log("stage 0: the audio tokenizer's codebooks by k-means ...")
    components = {"llm": "smollm2-135m-instruct", "whisper": "tiny.en"} if plan.preset == "demo-cpu" else {}
    sources = component_folders(components, cache_dir)
    torch.manual_seed(0)
    config = OmniConfig.from_preset(plan.preset)
    model = OmniForConditionalGeneration.from_components(config, llm=sources.get("llm"), whisper=sources.get("whisper"))
    tokenizer = load_tokenizer(sources["llm"]) if "llm" in sources else character_tokenizer()
    audio = sorted((corpus / "train" / "audio").glob("*.wav"))
    stage0 = work / "stage0"
    made = {
        "stage": "0-audio-tokenizer",
        "clips": len(audio),
        "corpus": made_with,
        "preset": plan.preset,
        "window_s": config.audio.max_audio_seconds,
    }
    if _reusable(stage0, made):
        log("stage 0: reusing the codebooks of an earlier run (the same corpus)")
        residual = json.loads((stage0 / "training.json").read_text(encoding="utf-8"))["residual_energy"]
    else:
        residual = kmeans_codebooks(model.eval(), audio, seed=plan.seed)
        with building_folder(stage0, replace=True) as staging:
            save_model_folder(model, tokenizer, staging, made | {"residual_energy": residual})
    record["stages"].append({"stage": "0-audio-tokenizer", "clips": len(audio), "residual_energy": residual})
    del model

    base = pretrain_vision_stage(corpus, stage0, work / "stage1a", made_with, tokenizer, plan, record, log)
    adapter = None
    for stage in plan.stages:
        log(f"stage {stage.name}: {stage.steps} steps ...")
        stage_started = time.monotonic()
        run_dir = work / "runs" / stage.name
        cfg = RecipeConfig(
            recipe="omni",
            stage=stage.name,
            description=stage.description,
            trainable=PARTS_OFF | dict.fromkeys(stage.trainable, True),
            losses=["text"],
            model=ModelConfig(preset=plan.preset, base=str(base)),
            data=DataConfig(
                train=[
                    DataSource(str(files[kind]), weight)
                    for kind, weight in zip(stage.sources, stage.weights or (1.0,) * len(stage.sources), strict=True)
                ],
                validation=str(validation_file),
                max_tokens=plan.max_tokens,
                pack=True,
                seed=plan.seed,
            ),
            optim=OptimConfig(lr=stage.lr, warmup_steps=max(1, stage.steps // 20), max_steps=stage.steps),
            run=RunConfig(output_dir=str(run_dir), log_every=5, seed=plan.seed),
            lora=LoraConfig(rank=16, alpha=32, dropout=0.0, merge=False) if stage.lora else None,
        )
        final = run_dir / "final"
        key = _stage_key(
            stage, base, plan, {kind: files[kind] for kind in stage.sources} | {"validation": validation_file}
        )
        if _stage_done(run_dir, key):
            log(f"stage {stage.name}: reusing the run in {run_dir} (the same stage on the same base)")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
            if recipe_main(cfg) is None:
                raise RuntimeError(f"stage {stage.name} ended without a model folder")
            (run_dir / STAGE_KEY).write_text(json.dumps(key) + "\n", encoding="utf-8")
        summary = json.loads((final / "training.json").read_text(encoding="utf-8"))
        record["stages"].append(
            {
                "stage": stage.name,
                "description": stage.description,
                "trainable": list(stage.trainable) + (["llm (LoRA r16)"] if stage.lora else []),
                "data": list(stage.sources),
                "weights": list(stage.weights),
                "steps": stage.steps,
                "lr": stage.lr,
                "train_conversations": summary["data"]["train_conversations"],
                "final_train_loss": summary["final_train_loss"],
                "final_validation_loss": summary["final_validation_loss"],
                "minutes": round(_stage_minutes(run_dir, time.monotonic() - stage_started), 1),
            }
        )
        if stage.lora:
            adapter = run_dir / "adapter"
        base = final

    # everything below is written into a staging folder that becomes ``out`` in one rename at the
    # end: a build that stops half-way never replaces a working model, nor is it served
    with building_folder(out, replace=True) as staging:
        log("packaging the trained parts ...")
        trained = OmniForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
        prefixes = TRAINED_PREFIXES if "llm" in components else (*TRAINED_PREFIXES, "llm.")
        weight_bytes = save_trained_parts(trained, staging, prefixes=prefixes, components=components, adapter=adapter)
        if "llm" not in components:  # no packaged LLM: its tokenizer goes with the model
            load_tokenizer(base).save_pretrained(str(staging))
        record["weights_megabytes"] = round(weight_bytes / 2**20, 1)
        record["build_minutes_training"] = round((time.monotonic() - started) / 60, 1)
        _check_packaged(staging, trained, adapter, cache_dir, corpus, record)
        del trained

        if plan.asr_steps:
            log(f"speech recognizer: Whisper tiny.en's top decoder layers, {plan.asr_steps} steps ...")
            record["recognizer"] = adapt_recognizer(staging, corpus, work, plan, cache_dir)

        from training.benchmarks import run as run_benchmark
        from training.benchmarks import spoken_paths

        log("choosing how spoken questions reach the model, on the validation split ...")
        record["spoken_input_choice"] = spoken_paths(staging, corpus / "validation", cache_dir, limit=plan.choice_limit)
        record["spoken_input"] = spoken_input(record["spoken_input_choice"])

        log("evaluating on the held-out test split ...")
        metrics = run_benchmark(
            staging, "phantoms", corpus / "test", work / "eval", limit=plan.eval_limit, cache_dir=cache_dir
        )
        record["metrics"] = metrics
        record["build_minutes"] = round((time.monotonic() - started) / 60, 1)
        record["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_records(staging, record)
    return record


def pretrain_vision_stage(
    corpus: Path,
    base: Path,
    folder: Path,
    corpus_made: dict[str, Any],
    tokenizer: Any,
    plan: DemoPlan,
    record: dict[str, Any],
    log: Callable[[str], None],
) -> Path:
    """Stage 1a: ``base``'s vision encoder and merger pretrained on the training split's ground truth
    (``training.vision_pretrain``), saved in ``folder`` (reused when made the same way); returns it."""
    from omni_core import OmniForConditionalGeneration
    from omni_core.model_cache import building_folder
    from training.models import save_model_folder
    from training.vision_pretrain import load_studies, pretrain_vision

    if plan.vision_steps < 1:
        return base
    made = {
        "stage": "1a-vision-pretraining",
        "steps": plan.vision_steps,
        "corpus": corpus_made,
        "base": str(base),
        "base_record": _record_digest(base),
        "preset": plan.preset,
        "seed": plan.seed,
    }
    if _reusable(folder, made):
        log("stage 1a: reusing the pretrained vision encoder of an earlier run")
        result = json.loads((folder / "training.json").read_text(encoding="utf-8"))["pretraining"]
    else:
        log(f"stage 1a: the vision encoder pretrained on the training studies' truth, {plan.vision_steps} steps ...")
        model = OmniForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
        train = load_studies(corpus / "train", model.config)
        validation = load_studies(corpus / "validation", model.config)
        result = pretrain_vision(model.vision, train, validation, steps=plan.vision_steps, seed=plan.seed, log=log)
        with building_folder(folder, replace=True) as staging:
            save_model_folder(model, tokenizer, staging, made | {"pretraining": result})
        del model
    record["stages"].append({"stage": "1a-vision-pretraining", **result})
    return folder


def _reusable(folder: Path, made: dict[str, Any]) -> bool:
    """Was ``folder`` (a model folder with ``training.json``) made exactly as ``made`` says?"""
    try:
        saved = json.loads((folder / "training.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(saved.get(key) == value for key, value in made.items()) and any(folder.glob("*.safetensors"))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _record_digest(folder: Path) -> str | None:
    """The digest of a stage folder's ``training.json``: a stage made again changes it, so every
    stage keyed on it is made again too."""
    try:
        return _digest((folder / "training.json").read_bytes())
    except OSError:
        return None


def _stage_key(stage: StagePlan, base: Path, plan: DemoPlan, data: dict[str, Path]) -> dict[str, Any]:
    """What a stage's run depends on: its plan, the packing and seed, the exact base it started from, and
    the very conversations it read (``data``: each source's file and the validation file), as it is stored
    (JSON: tuples become lists)."""
    key = asdict(stage) | {
        "data_digests": {name: _digest(path.read_bytes()) for name, path in sorted(data.items())},
        "base": str(base),
        "base_record": _record_digest(base),
        "max_tokens": plan.max_tokens,
        "seed": plan.seed,
        "validation_conversations": plan.validation_conversations,
    }
    return json.loads(json.dumps(key))


def _stage_done(run_dir: Path, key: dict[str, Any]) -> bool:
    """A finished run made from ``key`` (``_stage_key``: the stage, its plan, base and data): an
    interrupted build picks up after its last finished stage, and a stage made again makes every later
    stage again."""
    try:
        stored = json.loads((run_dir / STAGE_KEY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return stored == key and (run_dir / "final" / "model.safetensors").is_file()


def _stage_minutes(run_dir: Path, fallback_s: float) -> float:
    """How long the stage trained: from its run record to its final folder (a reused stage's own
    time, not the reuse's)."""
    try:
        return ((run_dir / "final" / "training.json").stat().st_mtime - (run_dir / "run.json").stat().st_mtime) / 60
    except OSError:
        return fallback_s / 60


def adapt_recognizer(out: Path, corpus: Path, work: Path, plan: DemoPlan, cache_dir: Path) -> dict[str, Any]:
    """Whisper tiny.en's top two decoder layers fine-tuned on the training split's spoken questions
    (the training issue's ASR recipe, the rest frozen so that the change ships small). It is chosen on
    the validation split (new recordings of the training phrasings): kept in ``out/recognizer`` only
    when its word error rate there is lower than tiny.en's. Both are then measured, through
    faster-whisper, on the test split's spoken questions, whose sentences no training text holds."""
    from omni_core.speech.asr import resolve_model
    from omni_core.trained_parts import save_recognizer_delta
    from training.config import AsrConfig
    from training.recipes.asr import dictation_pairs, served_wer
    from training.recipes.asr import recipe_main as asr_recipe

    held_out = work / "data" / "asr_validation.jsonl"
    validation = repeat_conversations(corpus / "validation")
    random.Random(plan.seed).shuffle(validation)
    write_conversations(held_out, validation[: plan.asr_validation_pairs])
    run_dir = work / "runs" / "asr"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = RecipeConfig(
        recipe="asr",
        stage="asr-tiny.en",
        description="Whisper tiny.en's decoder layers on spoken questions about the phantoms.",
        asr=AsrConfig(whisper="tiny.en", freeze_encoder=True, freeze_embeddings=True, train_decoder_layers=2),
        data=DataConfig(
            train=[DataSource(str(work / "data" / "repeat.jsonl"))],
            validation=str(held_out),
            batch_size=8,
            seed=plan.seed,
        ),
        optim=OptimConfig(lr=3e-5, warmup_steps=10, max_steps=plan.asr_steps),
        run=RunConfig(output_dir=str(run_dir), log_every=10, seed=plan.seed),
    )
    started = time.monotonic()
    final = asr_recipe(cfg)
    if final is None:
        raise RuntimeError("the recognizer's stage ended without a model")
    report = json.loads((final / "asr_report.json").read_text(encoding="utf-8"))
    test = dictation_pairs(repeat_conversations(corpus / "test"))
    result = {
        "steps": report["steps"],
        "train_pairs": report["train_pairs"],
        "validation_pairs": report["held_out_pairs"],
        "validation_wer_tiny_en": round(report["wer_before"], 4),
        "validation_wer_adapted": round(report["wer_after"], 4),
        "held_out_pairs": len(test),
        "wer_tiny_en": round(served_wer(resolve_model("tiny.en", cache_dir), test), 4) if test else None,
        "wer_adapted": round(served_wer(final / "ct2", test), 4) if test else None,
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    result["used"] = result["validation_wer_adapted"] < result["validation_wer_tiny_en"]
    if result["used"]:
        result["megabytes"] = round(save_recognizer_delta(final / "hf", out, result, cache_dir) / 2**20, 1)
    return result


def spoken_input(measured: dict[str, Any]) -> str:
    """How the app gives the model a spoken question: as audio only when hearing it measured better
    than reading the recognizer's transcript (the text the clinician sees and the audit records),
    else as the transcript."""
    heard, read = measured.get("spoken_closed_accuracy"), measured.get("transcribed_closed_accuracy")
    return "audio" if heard is not None and read is not None and heard > read else "transcript"


def write_records(out: Path, record: dict[str, Any]) -> None:
    """The serving record, training record, metrics and model card of a built folder."""
    metrics = record.get("metrics", {})
    from omni_core.trained_parts import PARTS_WEIGHTS

    digest = _digest((out / PARTS_WEIGHTS).read_bytes())[:12]
    serving = {
        "name": f"omniclinic-demo ({record['plan']['preset']}, phantoms)",
        "version": f"{str(record.get('finished', ''))[:10]}+{digest}",  # the weights' digest tells builds apart
        "untrained_parts": list(UNTRAINED),
        "caution": CAUTION,
        "spoken_input": record.get("spoken_input", "transcript"),
        "spoken_caution": SPOKEN_CAUTION,
    }
    (out / SERVING_RECORD).write_text(json.dumps(serving, indent=2) + "\n", encoding="utf-8")
    (out / TRAINING_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / METRICS).write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    (out / MODEL_CARD).write_text(model_card(record), encoding="utf-8")


@torch.no_grad()
def _check_packaged(
    out: Path, trained: Any, adapter: Path | None, cache_dir: Path, corpus: Path, record: dict[str, Any]
) -> None:
    """The packaged folder, loaded as serving loads it, must give the trained model's logits (float16
    storage of the trained parts aside) on a validation conversation with a study and a spoken
    question, so every trained part runs: a component that changed, or a part left out, fails here."""
    from omni_core.lora import load_lora, merge_lora
    from omni_core.processing_omni import OmniProcessor
    from omni_core.trained_parts import load_model_folder
    from training.data import MediaReader

    if adapter is not None:
        load_lora(trained, adapter)
        merge_lora(trained)
    packaged, tokenizer = load_model_folder(out, cache_dir)
    spoken = [c for c in load_conversations(corpus / "validation" / "conversations.jsonl") if _kind(c) == "spoken"]
    if not spoken:
        raise RuntimeError("the validation split holds no spoken question to check the packaged model with")
    inputs = OmniProcessor(trained.config, tokenizer)(MediaReader(trained.config).messages(spoken[0]))
    expected = trained.eval()(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
    got = packaged(input_ids=inputs.input_ids, **inputs.model_kwargs()).logits
    difference = float((expected - got).abs().max())
    record["packaged_max_logit_difference"] = round(difference, 5)
    if difference > 0.05 * float(expected.abs().max()):
        raise RuntimeError(f"the packaged model differs from the trained one (logits differ by {difference:.3g})")


def model_card(record: dict[str, Any]) -> str:
    plan, metrics = record["plan"], record.get("metrics", {})
    corpus = record["corpus"]
    lines = [
        "# omniclinic demo model (demo-cpu, trained on synthetic phantoms)",
        "",
        "**Not for clinical use.** A demonstration model trained on two CPU cores (build times below), on",
        "synthetic chest phantoms only. It has never seen a real patient's study; on real studies its",
        "answers are not findings. A qualified clinician must read every study.",
        "",
        "## What it is",
        f"- Architecture: `{plan['preset']}` (Baichuan-Omni-1.5's layout at small scale): a NaViT-style vision",
        "  encoder (6 layers, width 256, thick-slab MIP over series; pretrained here on the training studies'",
        "  ground truth, as no pretrained encoder installs offline), SmolLM2-135M-Instruct as the LLM (frozen,",
        "  LoRA rank 16 on its attention), Whisper tiny.en's encoder with a 4-layer residual VQ at 12.5 Hz",
        "  as the audio tokenizer. The speech head and flow decoder are untrained: the app speaks with Piper",
        "  or espeak-ng.",
        f"- This folder stores what was trained ({record.get('weights_megabytes')} MB in float16: vision",
        "  encoder, projector, codebooks, audio embedding, LoRA adapters); the LLM and Whisper encoder come",
        "  from their packages at load time (`components.json`).",
        "",
        "## Data",
        f"- {plan['studies']} phantom studies (seed {plan['seed']}, `omniclinic phantoms`): axial chest CTs and PA",
        "  radiographs, a quarter stored with reversed column order, with nodules and masses (side, lobe,",
        "  diameter in mm, density in HU), pleural effusions, pneumothoraces, and normal studies.",
        f"- Studies per split: {corpus['studies']}; questions: {corpus['questions']}.",
        f"- Spoken questions: {plan['spoken_fraction']:.0%} of closed questions also spoken, a third by Piper's",
        "  en_US joe voice at varied paces, the rest by espeak-ng (six voices, rates, pitches), over noise at",
        "  15-35 dB SNR.",
        "- Training conversations: each typed question alone, and each study's closed typed questions asked one",
        "  after another in one conversation (`study`: the study read once for all of them, in a shuffled order,",
        "  side and nodule-or-mass last);",
        "  reports; spoken questions; spoken questions to repeat as text (`repeat`). The stage table gives each",
        "  stage's mixture as weights by conversation count (a study conversation holds about seven answers).",
        "- The test split is held out: never trained on, and asked in phrasings training never uses. Choices",
        "  (keeping the adapted recognizer, hearing or reading spoken questions) are made on the validation split.",
        "",
        "## Stages",
        "| stage | trained | data | steps | lr | final train loss | validation loss | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in record["stages"]:
        if stage["stage"].startswith("1a"):
            accuracy = stage["validation_accuracy"] or {}
            heads = ", ".join(f"{name} {value:.2f}" for name, value in accuracy.items()) or "no validation studies"
            lines.append(
                f"| 1a-vision-pretraining | vision encoder, merger (probe heads on {stage['train_studies']} studies;"
                f" validation accuracy: {heads}) | ground truth | {stage['steps']} | {stage['lr']:g}"
                f" | {_num(stage['final_train_loss'])} | — | {stage['minutes']} |"
            )
            continue
        if stage["stage"].startswith("0"):
            energy = ", ".join(f"{v:.2f}" for v in stage["residual_energy"].values())
            trained = f"RVQ codebooks (k-means on {stage['clips']} clips; residual energy by layer {energy})"
            lines.append(f"| 0-audio-tokenizer | {trained} | spoken questions | — | — | — | — | — |")
            continue
        lines.append(
            f"| {stage['stage']} | {', '.join(stage['trainable'])} | {_mixture(stage)} | {stage['steps']} "
            f"| {stage['lr']:g} | {_num(stage['final_train_loss'])} | {_num(stage['final_validation_loss'])} "
            f"| {stage['minutes']} |"
        )
    recognizer = record.get("recognizer")
    if recognizer:
        verdict = "kept: the app transcribes with it" if recognizer["used"] else "not kept: tiny.en measured better"
        lines.append(
            f"| asr | Whisper tiny.en decoder layers | {recognizer['train_pairs']} spoken questions | "
            f"{recognizer['steps']} | 3e-05 | — | — | {recognizer['minutes']} |"
        )
        lines += [
            "",
            f"Speech recognition on the test split's {recognizer['held_out_pairs']} spoken questions (sentences in no"
            f" training text), through faster-whisper: word error rate {recognizer['wer_tiny_en']:.1%} with tiny.en,"
            f" {recognizer['wer_adapted']:.1%} adapted ({verdict}; chosen on {recognizer['validation_pairs']}"
            f" validation recordings, new recordings of training phrasings:"
            f" {recognizer['validation_wer_tiny_en']:.1%} against {recognizer['validation_wer_adapted']:.1%}).",
        ]
    lines += [
        "",
        f"This invocation of `omniclinic demo-model build` took {record.get('build_minutes')} minutes on 2 CPU cores"
        " (a stage finished by an earlier invocation is reused; the table gives each stage's own minutes).",
        "",
        "## Figures (held-out split, `omniclinic eval --benchmark phantoms`)",
        "| metric | value | aim |",
        "|---|---|---|",
    ]
    aims = {
        "closed_accuracy": ">= 0.90",
        "spoken_closed_accuracy": "within 0.05 of typed",
        "transcribed_closed_accuracy": "within 0.05 of typed",
        "side_accuracy_reversed": "within 0.05 of usual",
        "report_findings_f1": ">= 0.85",
        "invented_findings_rate": "<= 0.05",
    }
    for name, value in metrics.items():
        lines.append(f"| {name} | {_num(value)} | {aims.get(name, '')} |")
    met = _aims_met(metrics)
    missed = ", ".join(name for name, ok in met.items() if not ok) or "none"
    lines += ["", f"**Aims met: {sum(met.values())} of {len(met)}** (not met: {missed})."]
    lines += _wording_gap(record.get("spoken_input_choice", {}), metrics)
    usual = metrics.get("side_accuracy_usual")
    if isinstance(usual, int | float) and usual < 0.6:  # two answers: about 0.5 is a coin's
        lines.append(
            f"Side answers are near chance in both orientations ({usual:.2f} usual), so the reversed-orientation"
            " aim is met only in the sense that both are equally poor."
        )
    lines += [
        "",
        "## Limits",
        "- Chest phantoms only (CT and radiographs): no abdomen, head, MR or ultrasound, no real anatomy.",
        "- Closed answers are short words; reports follow one template.",
        "- Spoken questions: both paths are measured above, the model hearing the audio through its own audio",
        "  tokenizer (`spoken_closed_accuracy`) and reading the app's recognizer's transcript",
        "  (`transcribed_closed_accuracy`). On the validation split the app's choice was:",
        f"  **{record.get('spoken_input', 'transcript')}** ({_choice(record.get('spoken_input_choice', {}))}).",
        "  The clinician always sees the recognizer's transcript, and the audit records which the model got.",
        "- The findings F1 counts (finding, side) pairs; lobe, size and density are not scored.",
        "- The slab MIP that thins a CT series hides what is darker than its slab (air): pneumothorax is",
        "  seen where it spans the slab.",
        "- Its own speech output is untrained.",
        "",
    ]
    return "\n".join(lines)


def _wording_gap(validation: dict[str, Any], test: dict[str, Any]) -> list[str]:
    """The spoken closed questions typed, in the training phrasings (validation) and in the held-out ones
    (test): the gap, and whether it is more than two standard errors of the two samples."""
    key = "typed_closed_accuracy_same_questions"
    seen, held = validation.get(key), test.get(key)
    seen_n, held_n = validation.get("spoken_questions") or 0, test.get("spoken_questions") or 0
    if not (isinstance(seen, int | float) and isinstance(held, int | float) and seen_n and held_n):
        return []
    gap, noise = seen - held, 2 * math.sqrt(seen * (1 - seen) / seen_n + held * (1 - held) / held_n)
    if abs(gap) <= noise:
        verdict = "within two standard errors of these samples"
    elif gap > 0:
        verdict = "more than two standard errors: the held-out wording costs answers the model gives in training words"
    else:
        verdict = "more than two standard errors, the held-out phrasings scoring higher"
    return [
        "",
        f"The same kind of questions typed: {seen:.2f} in the training phrasings (the validation split's first"
        f" {seen_n} spoken closed questions), {held:.2f} in the held-out phrasings (the test split's {held_n}); a"
        f" gap of {gap:+.2f}, {verdict} ({noise:.2f}).",
    ]


def _aims_met(metrics: dict[str, Any]) -> dict[str, bool]:
    def get(name: str) -> float:
        value = metrics.get(name)
        return float(value) if isinstance(value, int | float) else float("nan")

    typed = get("typed_closed_accuracy_same_questions")
    return {
        "closed accuracy": get("closed_accuracy") >= 0.90,
        "spoken within 5 points": abs(get("transcribed_closed_accuracy") - typed) <= 0.05,
        "reversed side within 5 points": abs(get("side_accuracy_reversed") - get("side_accuracy_usual")) <= 0.05,
        "findings F1": get("report_findings_f1") >= 0.85,
        "invented findings": get("invented_findings_rate") <= 0.05,
    }


def _mixture(stage: dict[str, Any]) -> str:
    """A stage's sources with their shares of the mixture ("study 3, report 1"), or plainly when equal."""
    weights = stage.get("weights") or []
    if not weights:
        return ", ".join(stage["data"])
    return ", ".join(f"{kind} {weight:g}" for kind, weight in zip(stage["data"], weights, strict=True))


def _choice(measured: dict[str, Any]) -> str:
    heard, read = measured.get("spoken_closed_accuracy"), measured.get("transcribed_closed_accuracy")
    count, typed = measured.get("spoken_questions", 0), measured.get("typed_closed_accuracy_same_questions")
    typed_part = f", typed {_num(typed)}" if typed is not None else ""
    return f"heard {_num(heard)} vs read {_num(read)}{typed_part} on {count} spoken questions"


def _num(value: object) -> str:
    if isinstance(value, dict):  # by question kind
        return ", ".join(f"{key} {_num(item)}" for key, item in value.items())
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
