"""Speech-recognition adaptation: fine-tune Whisper on dictation audio and report text, serve it with
faster-whisper.

Data: conversations whose user turn holds the dictation (an ``audio`` part) and whose assistant turn
is its text. A held-out split (``data.validation`` or ``data.validation_fraction`` of the groups) is
never trained on: the word error rate on it is measured before (the starting model, through
faster-whisper) and after (the exported model, through faster-whisper, lexicon biasing off for
both), so the figures are the served path's.

- ``asr.whisper``: ``tiny.en``, ``base``, a CTranslate2 folder (converted losslessly to transformers
  with ``omni_core.whisper_ct2``) or a transformers Whisper folder.
- Labels are the tokenizer's ids without the start-of-transcript token (the model's decoder start);
  ``asr.freeze_encoder`` trains the decoder only.
- ``final/hf`` is the transformers folder; ``final/ct2`` the CTranslate2 folder made by ctranslate2's
  own ``TransformersConverter``, which ``OMNICLINIC_ASR_MODEL=final/ct2`` serves.

Plain torch (DDP under torchrun): Whisper fine-tuning fits one device for tiny to large-v3.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from omni_core.model_cache import building_folder
from omni_core.whisper_ct2 import export_ct2
from training.config import RecipeConfig
from training.conversations import Conversation, load_conversations
from training.data import ConversationStream, clean_as_configured, split_by_group
from training.runtime import (
    MetricsLog,
    TrainingDiverged,
    barrier,
    cosine_with_warmup,
    diverged,
    optimizer_step,
    read_checkpoint,
    reduce_sum,
    refuse_reused_run,
    restore_position,
    restore_trained_state,
    run_position,
    seed_everything,
    start_processes,
    stop_processes,
    trained_state,
    write_checkpoint,
)

CHECKPOINTS, STATE = "checkpoints", "asr.pt"


def dictation_pairs(conversations: list[Conversation]) -> list[Conversation]:
    """Conversations that are (dictation audio, its text) pairs."""
    pairs = []
    for conversation in conversations:
        audio = [p for t in conversation.turns if t.role == "user" for p in t.parts if p.kind == "audio"]
        if len(audio) == 1 and conversation.text(["assistant"]).strip():
            pairs.append(conversation)
    return pairs


def _audio_and_text(conversation: Conversation) -> tuple[str, str]:
    audio = next(p.value for t in conversation.turns if t.role == "user" for p in t.parts if p.kind == "audio")
    return audio, conversation.text(["assistant"]).strip()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """WER after Whisper's own English normaliser (numbers, spelling, punctuation)."""
    import jiwer
    from whisper_normalizer.english import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()
    return float(jiwer.wer([normalise(r) for r in references], [normalise(h) for h in hypotheses]))


def served_wer(ct2_folder: Path, pairs: list[Conversation]) -> float:
    """The word error rate of a faster-whisper folder on ``pairs`` (no lexicon biasing)."""
    from medical_data.audio import decode_audio
    from omni_core.speech.asr import RecognitionOptions, SpeechRecognizer
    from omni_core.speech.errors import NoSpeechDetected

    recognizer = SpeechRecognizer(ct2_folder, options=RecognitionOptions(vocabulary=(), word_timestamps=False))
    references, hypotheses = [], []
    for conversation in pairs:
        audio, text = _audio_and_text(conversation)
        try:
            heard = recognizer.transcribe(decode_audio(audio).samples).text
        except NoSpeechDetected:
            heard = ""
        references.append(text)
        hypotheses.append(heard)
    return word_error_rate(references, hypotheses)


class AsrRecipe:
    def __init__(self, cfg: RecipeConfig, *, resume: bool = False, fingerprints: Any = None) -> None:
        self.cfg = cfg
        self.settings = cfg.asr
        self.resume = resume
        self.fingerprints = fingerprints
        self.output_dir = Path(cfg.run.output_dir)
        self.step = 0

    def _source(self) -> tuple[Path, Path | None]:
        """(transformers folder to train, the CTranslate2 folder it came from, if any)."""
        from omni_core.speech.asr import resolve_model
        from omni_core.whisper_ct2 import convert_ct2_whisper

        name = self.settings.whisper  # type: ignore[union-attr]
        folder = Path(name).expanduser()
        if (folder / "config.json").is_file() and not (folder / "model.bin").is_file():
            return folder, None
        ct2 = resolve_model(name, self.output_dir / "models")
        converted = self.output_dir / "whisper-hf"
        if not (converted / "model.safetensors").is_file():
            if self.processes.main:
                shutil.rmtree(converted, ignore_errors=True)
                convert_ct2_whisper(ct2, converted)
            barrier()
        return converted, ct2

    def setup(self) -> None:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        cfg = self.cfg
        refuse_reused_run(self.output_dir, self.resume)
        self.processes = processes = start_processes(deepspeed=False)
        seed_everything(cfg.run.seed)
        self.hf_source, self.ct2_source = self._source()
        pairs = self._cleaned([c for s in cfg.data.train for c in load_conversations(s.path)])
        if cfg.data.validation:
            train, held_out = pairs, self._cleaned(load_conversations(cfg.data.validation))
        else:
            train, held_out = split_by_group(pairs, cfg.data.validation_fraction, seed=cfg.data.seed)
        if not train or not held_out:
            raise ValueError(f"{len(pairs)} dictation pairs are too few for a training and a held-out split")
        self.train_pairs, self.held_out = train, held_out
        self.stream = ConversationStream(
            train, rank=processes.rank, world_size=processes.world_size, seed=cfg.data.seed
        )
        self.processor = WhisperProcessor.from_pretrained(str(self.hf_source))
        whisper = WhisperForConditionalGeneration.from_pretrained(str(self.hf_source), dtype=torch.float32)
        model = whisper.to(processes.device).train()
        if self.settings.freeze_encoder:  # type: ignore[union-attr]
            model.model.encoder.requires_grad_(False)
        if self.settings.freeze_embeddings:  # type: ignore[union-attr]
            model.model.decoder.embed_tokens.requires_grad_(False)  # tied to the output layer
            model.model.decoder.embed_positions.requires_grad_(False)
        kept = self.settings.train_decoder_layers  # type: ignore[union-attr]
        if kept is not None:
            for layer in model.model.decoder.layers[:-kept]:
                layer.requires_grad_(False)
        self.model = model
        o = cfg.optim
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        schedule = cosine_with_warmup(o.warmup_steps, o.max_steps, o.min_lr_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.engine: Any = model
        if processes.world_size > 1:
            ids = [processes.local_rank] if processes.device.type == "cuda" else None
            self.engine = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        start = self._resume() if self.resume else None
        self.metrics = MetricsLog(self.output_dir, enabled=processes.main, resume_from_step=start)
        self._audio: dict[str, np.ndarray] = {}

    def _cleaned(self, conversations: list[Conversation]) -> list[Conversation]:
        """Dictation pairs after the same cleaning as every recipe: duplicates, lengths, identifiers
        (dictations name patients more often than anything else)."""
        return clean_as_configured(dictation_pairs(conversations), self.cfg.data, self.fingerprints)[0]

    def _batch(self, conversations: list[Conversation]) -> dict[str, torch.Tensor]:
        from medical_data.audio import decode_audio

        samples, texts = [], []
        for conversation in conversations:
            audio, text = _audio_and_text(conversation)
            if audio not in self._audio:
                self._audio[audio] = decode_audio(audio).samples
            samples.append(self._audio[audio])
            texts.append(text)
        features = self.processor.feature_extractor(samples, sampling_rate=16_000, return_tensors="pt").input_features
        start = self.model.config.decoder_start_token_id
        ids = [self.processor.tokenizer(text).input_ids for text in texts]
        ids = [row[1:] if row and row[0] == start else row for row in ids]  # the decoder start comes from the model
        longest = max(len(row) for row in ids)
        labels = torch.full((len(ids), longest), -100, dtype=torch.long)
        for index, row in enumerate(ids):
            labels[index, : len(row)] = torch.tensor(row)
        device = self.processes.device
        return {"input_features": features.to(device), "labels": labels.to(device)}

    def train(self, max_steps: int | None = None) -> None:
        cfg, processes = self.cfg, self.processes
        total = min(max_steps or cfg.optim.max_steps, cfg.optim.max_steps)
        accumulation = cfg.optim.gradient_accumulation_steps
        progress = tqdm(total=total, initial=self.step, desc=cfg.stage or "asr", disable=not processes.main)
        while self.step < total:
            started = time.perf_counter()
            loss_sum = 0.0
            for micro in range(accumulation):
                conversations = [self.stream.next() for _ in range(cfg.data.batch_size)]
                loss = self.engine(**self._batch(conversations)).loss
                if diverged(loss, processes):
                    where = f"step {self.step + 1}, micro-batch {micro + 1}"
                    raise TrainingDiverged(f"the loss is not a number at {where}; stopped without saving")
                (loss / accumulation).backward()
                loss_sum += loss.item()
            lr = self.scheduler.get_last_lr()[0]
            grad_norm = optimizer_step(self.model, self.optimizer, self.scheduler, cfg.optim.max_grad_norm)
            self.step += 1
            progress.update(1)
            mean = reduce_sum([loss_sum / accumulation], processes)[0] / processes.world_size
            progress.set_postfix(loss=f"{mean:.4f}")
            if self.step % cfg.run.log_every == 0 or self.step == total:
                elapsed = max(time.perf_counter() - started, 1e-9)
                self.metrics.write(
                    {
                        "step": self.step,
                        "split": "train",
                        "loss": mean,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "seconds_per_step": elapsed,
                    }
                )
            if cfg.run.save_every and self.step % cfg.run.save_every == 0 and self.step < total:
                self.save_checkpoint()
        progress.close()
        self.save_checkpoint()
        self.metrics.write({"step": self.step, "split": "validation", "loss": self._held_out_loss()})
        self.metrics.plot(f"{cfg.stage or 'asr'}: loss")

    @torch.no_grad()
    def _held_out_loss(self) -> float:
        self.model.eval()
        losses = [float(self.model(**self._batch([c])).loss) for c in self.held_out]
        self.model.train()
        return sum(losses) / len(losses)

    def save_checkpoint(self) -> None:
        state = run_position(self.stream, self.processes, self.step)
        if self.processes.main:
            state |= trained_state(self.model, self.optimizer, self.scheduler)
            root = self.output_dir / CHECKPOINTS
            write_checkpoint(root, f"step-{self.step}", STATE, state, self.cfg.run.keep_checkpoints)
        barrier()

    def _resume(self) -> int | None:
        state = read_checkpoint(self.output_dir / CHECKPOINTS, STATE, self.processes)
        if state is None:
            return None
        restore_trained_state(state, self.model, self.optimizer, self.scheduler)
        self.step = restore_position(state, self.stream, self.processes)
        return self.step

    def save_final(self) -> Path | None:
        """``final/hf``, ``final/ct2`` and ``final/asr_report.json`` with the held-out WER before and after."""
        final = self.output_dir / "final"
        if self.processes.main:
            with building_folder(final, replace=True) as staging:
                self._write_final(staging)
        barrier()
        return final if self.processes.main else None

    def _write_final(self, staging: Path) -> None:
        self.model.eval().save_pretrained(staging / "hf")
        self.processor.save_pretrained(str(staging / "hf"))
        export_ct2(staging / "hf", staging / "ct2")
        before_folder = self.ct2_source or export_ct2(self.hf_source, self.output_dir / "source-ct2")
        report = {
            "recipe": "asr",
            "stage": self.cfg.stage,
            "whisper": self.settings.whisper,  # type: ignore[union-attr]
            "steps": self.step,
            "train_pairs": len(self.train_pairs),
            "held_out_pairs": len(self.held_out),
            "encoder_frozen": self.settings.freeze_encoder,  # type: ignore[union-attr]
            "identifier_check": "ran" if self.fingerprints is not None else "not run (no fingerprints)",
            "wer_before": served_wer(before_folder, self.held_out),
            "wer_after": served_wer(staging / "ct2", self.held_out),
        }
        (staging / "asr_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    def cleanup(self) -> None:
        stop_processes()


def recipe_main(
    cfg: RecipeConfig, *, resume: bool = False, max_steps: int | None = None, fingerprints: Any = None
) -> Path | None:
    recipe = AsrRecipe(cfg, resume=resume, fingerprints=fingerprints)
    try:
        recipe.setup()
        recipe.train(max_steps)
        return recipe.save_final()
    finally:
        recipe.cleanup()
