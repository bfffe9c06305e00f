"""The vocoder's recipe: HiFi-GAN training of the speech decoder's vocoder on speech audio.

The generator is the omni model's ``speech_decoder.vocoder`` (mel -> waveform); the judges are
HiFi-GAN's multi-period and multi-scale discriminators (``omni_core.modeling_discriminators``).
Each step: random windows of speech audio (``vocoder.segment_seconds``) at the decoder's rate, their
mel by ``speech_log_mel`` (the same front end the flow decoder's targets use), then

- discriminators: least-squares loss on real audio against the generator's (detached) audio;
- generator: adversarial loss + ``feature_weight`` x feature matching + ``mel_weight`` x mel L1.

Two optimizers and two losses per step do not fit DeepSpeed's one-engine model; the recipe runs
plain torch (DDP under torchrun). Checkpoints hold both networks, both optimizers, the data
position and the RNG; ``final/`` is the whole omni model folder with the trained vocoder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from omni_core.model_cache import building_folder
from omni_core.modeling_discriminators import (
    HifiGanDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from omni_core.modeling_speech_decoder import speech_log_mel
from training.config import RecipeConfig
from training.conversations import Conversation, load_conversations
from training.data import ConversationStream
from training.models import load_for_training, save_model_folder
from training.runtime import (
    MetricsLog,
    TrainingDiverged,
    barrier,
    cosine_with_warmup,
    diverged,
    read_checkpoint,
    reduce_sum,
    refuse_reused_run,
    restore_position,
    run_position,
    seed_everything,
    start_processes,
    stop_processes,
    write_checkpoint,
)

CHECKPOINTS, STATE = "checkpoints", "vocoder.pt"
LOSSES = ("mel", "adversarial", "feature_matching", "discriminator")


def speech_files(conversation: Conversation) -> list[str]:
    """The audio the vocoder learns from: answers' speech, else any audio in the conversation."""
    parts = [p for t in conversation.turns for p in t.parts]
    speech = [p.value for p in parts if p.kind == "speech"]
    return speech or [p.value for p in parts if p.kind == "audio"]


class VocoderRecipe:
    def __init__(self, cfg: RecipeConfig, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.resume = resume
        self.output_dir = Path(cfg.run.output_dir)
        self.step = 0
        self._audio: dict[str, np.ndarray] = {}

    def setup(self) -> None:
        cfg = self.cfg
        refuse_reused_run(self.output_dir, self.resume)
        self.processes = processes = start_processes(deepspeed=False)
        seed_everything(cfg.run.seed)
        self.model, self.tokenizer = load_for_training(cfg.model, device=processes.device, seed=cfg.run.seed)
        if self.model.speech_decoder is None:
            raise ValueError("this model has no speech branch, so no vocoder to train")
        self.model.requires_grad_(False)
        self.vocoder = self.model.speech_decoder.vocoder.train().requires_grad_(True)
        settings = cfg.vocoder
        width = settings.discriminator_width  # type: ignore[union-attr]
        self.discriminator = HifiGanDiscriminator(width, max(1, width // 2)).to(processes.device).train()
        conversations = [c for s in cfg.data.train for c in load_conversations(s.path) if speech_files(c)]
        if not conversations:
            raise ValueError("no conversation holds speech or audio to train the vocoder on")
        self.stream = ConversationStream(
            conversations, rank=processes.rank, world_size=processes.world_size, seed=cfg.data.seed
        )
        o = cfg.optim
        betas = (0.8, 0.99)  # HiFi-GAN's
        schedule = cosine_with_warmup(o.warmup_steps, o.max_steps, o.min_lr_ratio)
        self.g_optimizer = torch.optim.AdamW(
            self.vocoder.parameters(), lr=o.lr, betas=betas, weight_decay=o.weight_decay
        )
        self.d_optimizer = torch.optim.AdamW(self.discriminator.parameters(), lr=o.lr, betas=betas)
        self.schedulers = [
            torch.optim.lr_scheduler.LambdaLR(opt, schedule) for opt in (self.g_optimizer, self.d_optimizer)
        ]
        self.generator, self.judge = self.vocoder, self.discriminator
        if processes.world_size > 1:
            ddp = torch.nn.parallel.DistributedDataParallel
            ids = [processes.local_rank] if processes.device.type == "cuda" else None
            self.generator, self.judge = ddp(self.vocoder, device_ids=ids), ddp(self.discriminator, device_ids=ids)
        start = self._resume() if self.resume else None
        self.metrics = MetricsLog(self.output_dir, enabled=processes.main, resume_from_step=start)

    def _samples(self, path: str) -> np.ndarray:
        if path not in self._audio:
            from medical_data.audio import decode_audio

            rate = self.model.config.speech.sampling_rate
            self._audio[path] = decode_audio(path, sample_rate=rate).samples
        return self._audio[path]

    def _segments(self) -> torch.Tensor:
        """(B, samples) random windows, a whole number of mel hops long (shorter audio is zero-padded)."""
        speech = self.model.config.speech
        length = max(1, round(self.cfg.vocoder.segment_seconds * speech.sampling_rate / speech.hop_length))  # type: ignore[union-attr]
        length *= speech.hop_length
        windows = []
        for _ in range(self.cfg.data.batch_size):
            files = speech_files(self.stream.next())
            audio = self._samples(files[int(torch.randint(len(files), (1,)))])
            if len(audio) <= length:
                window = np.pad(audio, (0, length - len(audio)))
            else:
                start = int(torch.randint(len(audio) - length + 1, (1,)))
                window = audio[start : start + length]
            windows.append(torch.from_numpy(np.ascontiguousarray(window)))
        return torch.stack(windows).to(self.processes.device)

    def _mel(self, waves: torch.Tensor) -> torch.Tensor:
        return torch.stack([speech_log_mel(wave, self.model.config.speech) for wave in waves])  # (B, frames, mel)

    def train(self, max_steps: int | None = None) -> None:
        cfg, settings, processes = self.cfg, self.cfg.vocoder, self.processes
        total = min(max_steps or cfg.optim.max_steps, cfg.optim.max_steps)
        progress = tqdm(total=total, initial=self.step, desc=cfg.stage or "vocoder", disable=not processes.main)
        clip = cfg.optim.max_grad_norm or float("inf")
        while self.step < total:
            started = time.perf_counter()
            real = self._segments()
            mel = self._mel(real)
            fake = self.generator(mel).reshape(real.shape[0], -1)[:, : real.shape[1]]
            real_scores, _ = self.judge(real)
            fake_scores, _ = self.judge(fake.detach())
            d_loss = discriminator_loss(real_scores, fake_scores)
            self.d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), clip)
            self.d_optimizer.step()
            fake_scores, fake_maps = self.judge(fake)
            with torch.no_grad():
                _, real_maps = self.judge(real)
            mel_loss = F.l1_loss(self._mel(fake), mel)
            adversarial = generator_adversarial_loss(fake_scores)
            features = feature_matching_loss(real_maps, fake_maps)
            g_loss = adversarial + settings.feature_weight * features + settings.mel_weight * mel_loss  # type: ignore[union-attr]
            if diverged(g_loss + d_loss, processes):
                raise TrainingDiverged(f"the loss is not a number at step {self.step + 1}; stopped without saving")
            self.g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.vocoder.parameters(), clip))
            self.g_optimizer.step()
            for scheduler in self.schedulers:
                scheduler.step()
            self.step += 1
            progress.update(1)
            values = reduce_sum(
                [g_loss.item(), mel_loss.item(), adversarial.item(), features.item(), d_loss.item()], processes
            )
            values = [v / processes.world_size for v in values]
            record = {
                "step": self.step,
                "split": "train",
                "loss": values[0],
                "losses": dict(zip(LOSSES, values[1:], strict=True)),
                "grad_norm": grad_norm,
                "samples_per_s": real.numel() * processes.world_size / max(time.perf_counter() - started, 1e-9),
            }
            progress.set_postfix(mel=f"{values[1]:.3f}")
            if self.step % cfg.run.log_every == 0 or self.step == total:
                self.metrics.write(record)
            if cfg.run.save_every and self.step % cfg.run.save_every == 0 and self.step < total:
                self.save_checkpoint()
        progress.close()
        self.save_checkpoint()
        self.metrics.plot(f"{cfg.stage or 'vocoder'}: generator loss")

    def save_checkpoint(self) -> None:
        state = run_position(self.stream, self.processes, self.step)
        if self.processes.main:
            state |= {
                "vocoder": self.vocoder.state_dict(),
                "discriminator": self.discriminator.state_dict(),
                "g_optimizer": self.g_optimizer.state_dict(),
                "d_optimizer": self.d_optimizer.state_dict(),
                "schedulers": [s.state_dict() for s in self.schedulers],
            }
            root = self.output_dir / CHECKPOINTS
            write_checkpoint(root, f"step-{self.step}", STATE, state, self.cfg.run.keep_checkpoints)
        barrier()

    def _resume(self) -> int | None:
        state = read_checkpoint(self.output_dir / CHECKPOINTS, STATE, self.processes)
        if state is None:
            return None
        self.vocoder.load_state_dict(state["vocoder"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_optimizer.load_state_dict(state["g_optimizer"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        self.step = restore_position(state, self.stream, self.processes)
        return self.step

    def save_final(self) -> Path | None:
        final = self.output_dir / "final"
        if self.processes.main:
            records = [r for r in self.metrics.records() if r.get("split") == "train"]
            record: dict[str, Any] = {
                "recipe": "vocoder",
                "stage": self.cfg.stage,
                "steps": self.step,
                "base": self.cfg.model.base or self.cfg.model.preset,
                "final_losses": records[-1]["losses"] if records else None,
            }
            with building_folder(final, replace=True) as staging:
                save_model_folder(self.model.eval(), self.tokenizer, staging, record)
        barrier()
        return final if self.processes.main else None

    def cleanup(self) -> None:
        stop_processes()


def recipe_main(cfg: RecipeConfig, *, resume: bool = False, max_steps: int | None = None) -> Path | None:
    recipe = VocoderRecipe(cfg, resume=resume)
    try:
        recipe.setup()
        recipe.train(max_steps)
        return recipe.save_final()
    finally:
        recipe.cleanup()
