"""The omni model's recipe: every stage of the paper, the audio tokenizer, the flow decoder, medical SFT.

One loop (torchtune's ``setup / train / save_checkpoint / cleanup``); a stage is its config: which
parts train (``trainable``, ``freeze``), which losses by name (``losses``), LoRA or not, and the
data. Plain torch (DDP under torchrun) or DeepSpeed ZeRO (``--deepspeed``), the same code path on
one process, several, or several machines.

Checkpoints (``OUTPUT/checkpoints/step-N``) hold the model (DeepSpeed: all of it, sharded; plain
torch: the trained parameters), optimizer, scheduler, each rank's data position and RNG state, so a
resumed run continues exactly as the uninterrupted one. ``OUTPUT/final`` is a model folder with the
tokenizer that ``from_pretrained`` and the app load (LoRA merged into it unless ``lora.merge`` is off).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from omni_core.model_cache import building_folder
from omni_core.modeling_omni import OmniForConditionalGeneration
from omni_core.processing_omni import ModelInputs, OmniCollator, OmniProcessor
from training.config import RecipeConfig
from training.conversations import Conversation, load_conversations
from training.data import (
    UNUSABLE,
    CleaningReport,
    ConversationStream,
    MediaReader,
    clean_as_configured,
    mix,
    next_batch,
    split_by_group,
)
from training.models import load_for_training, save_model_folder
from training.runtime import (
    MetricsLog,
    TrainingDiverged,
    barrier,
    cosine_with_warmup,
    diverged,
    gather_objects,
    latest_tag,
    mark_latest,
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
    training_dtype,
    write_checkpoint,
)

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer.pt"


class OmniRecipe:
    def __init__(
        self,
        cfg: RecipeConfig,
        *,
        deepspeed_config: dict[str, Any] | None = None,
        resume: bool = False,
        fingerprints: Any = None,
    ) -> None:
        self.cfg = cfg
        self.ds_config = deepspeed_config
        self.resume = resume
        self.fingerprints = fingerprints
        self.output_dir = Path(cfg.run.output_dir)
        self.step = 0
        self.cleaning = CleaningReport()

    # -- setup --------------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        refuse_reused_run(self.output_dir, self.resume)
        self.processes = processes = start_processes(deepspeed=self.ds_config is not None)
        seed_everything(cfg.run.seed)
        model, self.tokenizer = load_for_training(cfg.model, device=processes.device, seed=cfg.run.seed)
        model.set_trainable(**cfg.trainable)
        for path in cfg.freeze:
            model.get_submodule(path).requires_grad_(False)
        self.lora_settings = None
        if cfg.lora is not None:
            from omni_core.lora import add_lora

            self.lora_settings = add_lora(model, cfg.lora.settings())
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = model
        self.dtype = training_dtype(cfg.model.dtype, processes.device)
        self.processor = OmniProcessor(model.config, self.tokenizer)
        self.collate = OmniCollator(pad_token_id=model.config.text.pad_token_id)
        self.reader = MediaReader(model.config, flow_targets=bool({"flow", "flow_prenet"} & set(cfg.losses)))
        self._setup_data()
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("no parameter trains in this stage")
        o = cfg.optim
        optimizer = torch.optim.AdamW(trainable, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        schedule = cosine_with_warmup(o.warmup_steps, o.max_steps, o.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.engine: Any = model
        if self.ds_config is not None:
            import deepspeed

            ds = dict(self.ds_config)
            ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
            ds["gradient_accumulation_steps"] = o.gradient_accumulation_steps
            ds["train_batch_size"] = cfg.data.batch_size * o.gradient_accumulation_steps * processes.world_size
            ds.setdefault("gradient_clipping", o.max_grad_norm)
            ds.setdefault("bf16", {"enabled": self.dtype == torch.bfloat16})
            ds.setdefault("zero_allow_untested_optimizer", True)
            ds.setdefault("steps_per_print", 10**9)
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds
            )
            self.zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        else:
            self.optimizer, self.scheduler = optimizer, scheduler
            self.zero_stage = 0
            if processes.world_size > 1:
                self.engine = torch.nn.parallel.DistributedDataParallel(
                    model,
                    device_ids=[processes.local_rank] if processes.device.type == "cuda" else None,
                    find_unused_parameters=True,
                )
        start = self._resume() if self.resume else None
        self.metrics = MetricsLog(self.output_dir, enabled=processes.main, resume_from_step=start)
        if processes.main and start is None:
            self._write_run_record()

    def _setup_data(self) -> None:
        cfg, processes = self.cfg, self.processes
        sources = []
        for source in cfg.data.train:
            sources.append((self._cleaned(load_conversations(source.path)), source.weight))
        train = mix(sources, seed=cfg.data.seed)
        if cfg.data.validation:
            validation = self._cleaned(load_conversations(cfg.data.validation))
        else:
            train, validation = split_by_group(train, cfg.data.validation_fraction, seed=cfg.data.seed)
        if not train:
            raise ValueError("no training conversation is left after cleaning and the validation split")
        self.train_size, self.validation = len(train), validation
        self.stream = ConversationStream(
            train, rank=processes.rank, world_size=processes.world_size, seed=cfg.data.seed
        )

    def _cleaned(self, conversations: list[Conversation]) -> list[Conversation]:
        kept, report = clean_as_configured(conversations, self.cfg.data, self.fingerprints)
        self.cleaning.add(report)
        return kept

    # -- batches ------------------------------------------------------------------------------------
    def prepare(self, conversation: Conversation) -> ModelInputs:
        return self.processor(self.reader.messages(conversation))

    def _batch_inputs(self, rows: list[ModelInputs]) -> dict[str, Any]:
        return self.collate(rows).forward_kwargs()

    def _modalities(self, inputs: dict[str, Any]) -> tuple[bool, ...]:
        return tuple(
            bool(inputs.get(key) is not None and (not isinstance(inputs[key], list) or inputs[key]))
            for key in ("pixel_patches", "audio_mel", "speech_codes", "speech_audio_mel", "speech_mel")
        )

    def _check_same_parts(self, inputs: dict[str, Any]) -> None:
        """ZeRO-3 gathers a part's weights with a collective when it runs: every process must run the
        same parts in a step, or they wait for each other forever. Refuse clearly instead."""
        if self.zero_stage == 3 and self.processes.world_size > 1:
            seen = gather_objects(self._modalities(inputs), self.processes)
            if len(set(seen)) > 1:
                raise ValueError(
                    "under ZeRO-3 every process must see the same kinds of media in a step (images, audio, "
                    "speech): give this stage sources of one kind, or use ZeRO-2"
                )

    def _available_losses(self, inputs: dict[str, Any]) -> list[str]:
        """The stage's losses this batch has inputs for (a text-only item in an omni mix has no speech)."""
        has = {
            "text": bool((inputs["labels"] != -100).any()),
            "audio_head": inputs.get("speech_codes") is not None or bool(inputs.get("speech_audio_mel")),
            "commitment": bool(inputs.get("audio_mel")),
            "mel_reconstruction": bool(inputs.get("audio_mel")),
            "flow": bool(inputs.get("speech_mel")),
            "flow_prenet": bool(inputs.get("speech_mel")),
        }
        return [name for name in self.cfg.losses if has[name]]

    def _forward(self, inputs: dict[str, Any], losses: list[str]) -> Any:
        autocast = (
            torch.autocast(self.processes.device.type, dtype=torch.bfloat16)
            if self.dtype == torch.bfloat16 and self.ds_config is None
            else nullcontext()
        )
        with autocast:
            return self.engine(**inputs, losses=losses)

    def _next_inputs(self, skipped: Counter[str]) -> tuple[Any, dict[str, Any], list[str]]:
        """The next batch that has inputs for at least one of the stage's losses."""
        cfg = self.cfg
        for _ in range(1000):
            batch = next_batch(
                self.stream,
                self.prepare,
                batch_size=cfg.data.batch_size,
                max_tokens=cfg.data.max_tokens,
                pack=cfg.data.pack,
            )
            skipped += batch.skipped
            inputs = self._batch_inputs(batch.rows)
            wanted = self._available_losses(inputs)
            if wanted:
                return batch, inputs, wanted
            skipped["no_inputs_for_this_stage"] += len(batch.ids)
        raise ValueError(f"no batch has inputs for this stage's losses ({', '.join(cfg.losses)}): check the data")

    # -- train --------------------------------------------------------------------------------------
    def train(self, max_steps: int | None = None) -> None:
        cfg, processes = self.cfg, self.processes
        total = min(max_steps or cfg.optim.max_steps, cfg.optim.max_steps)
        accumulation = cfg.optim.gradient_accumulation_steps
        progress = tqdm(
            total=total, initial=self.step, desc=cfg.stage or "training", disable=not processes.main, unit="step"
        )
        self.engine.train()
        while self.step < total:
            started = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]  # the rate this step uses (DeepSpeed steps it inside)
            losses: Counter[str] = Counter()
            counts: Counter[str] = Counter()
            loss_sum, tokens, skipped = 0.0, 0, Counter[str]()
            step_batches = [self._next_inputs(skipped) for _ in range(accumulation)]
            weights = self._token_weights([inputs for _, inputs, _ in step_batches])
            for micro, ((batch, inputs, wanted), weight) in enumerate(zip(step_batches, weights, strict=True)):
                self._check_same_parts(inputs)
                output = self._forward(inputs, wanted)
                loss = output.loss * weight
                if diverged(loss, processes):
                    where = f"step {self.step + 1}, micro-batch {micro + 1}"
                    mine = "" if torch.isfinite(loss).item() else f" (conversations {', '.join(batch.ids)})"
                    raise TrainingDiverged(f"the loss is not a number at {where}{mine}; stopped without saving")
                if self.ds_config is not None:
                    self.engine.backward(loss)
                    self.engine.step()
                else:
                    (loss / accumulation).backward()
                loss_sum += loss.item()
                for name, value in output.losses.items():
                    losses[name] += value.item()
                    counts[name] += 1
                tokens += int(inputs["attention_mask"].sum())
            grad_norm = self._optimizer_step()
            self.step += 1
            progress.update(1)
            names = cfg.losses
            sums = reduce_sum([loss_sum, tokens, *[losses[n] for n in names], *[counts[n] for n in names]], processes)
            micro_batches = accumulation * processes.world_size
            per_loss = dict(zip(names, sums[2 : 2 + len(names)], strict=True))
            per_count = dict(zip(names, sums[2 + len(names) :], strict=True))
            record = {
                "step": self.step,
                "split": "train",
                "loss": sums[0] / micro_batches,
                "losses": {n: per_loss[n] / per_count[n] for n in names if per_count[n]},
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": int(sums[1]),
                "tokens_per_s": sums[1] / max(time.perf_counter() - started, 1e-9),
                "epoch": self.stream.state.epoch,
            }
            if skipped:
                record["skipped"] = dict(skipped)
            progress.set_postfix(loss=f"{record['loss']:.4f}")
            if self.step % cfg.run.log_every == 0 or self.step == total:
                self.metrics.write(record)
            if cfg.run.eval_every and self.step % cfg.run.eval_every == 0 and self.step < total:
                self.evaluate()
            if cfg.run.save_every and self.step % cfg.run.save_every == 0 and self.step < total:
                self.save_checkpoint()
        progress.close()
        self.evaluate()
        self.save_checkpoint()
        self.metrics.plot(f"{cfg.stage or 'omni'}: loss")

    def _token_weights(self, step_inputs: list[dict[str, Any]]) -> list[float]:
        """Each micro-batch's weight, so that a step's gradient is the mean over every answer token of
        every micro-batch on every process (a one-word answer weighs one token, not one report), not a
        mean of per-batch means. The processes' all-reduce averages and the accumulation divides: the
        weights undo both. Batches without text targets weigh 1."""
        targets = [float((inputs["labels"][:, 1:] != -100).sum()) for inputs in step_inputs]
        total = reduce_sum([sum(targets)], self.processes)[0]
        if total == 0:
            return [1.0] * len(step_inputs)
        scale = len(step_inputs) * self.processes.world_size / total
        return [n * scale if n else 1.0 for n in targets]

    def _optimizer_step(self) -> float | None:
        if self.ds_config is not None:  # DeepSpeed stepped (clipping, scheduler) at the boundary
            norm = self.engine.get_global_grad_norm()
            return None if norm is None else float(norm)
        return optimizer_step(self.model, self.optimizer, self.scheduler, self.cfg.optim.max_grad_norm)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """The validation loss (mean over conversations), logged; every process runs the same count."""
        if not self.validation:
            return None
        processes = self.processes
        count = math.ceil(len(self.validation) / processes.world_size)
        devices = [processes.device] if processes.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # validation never moves training's random stream
            return self._evaluate(count)

    def _evaluate(self, count: int) -> float | None:
        """Every rank runs the same number of forwards with the same kinds of media (ZeRO-3 gathers a
        part's weights collectively): an item any rank cannot use, or whose kinds differ, is skipped by all."""
        processes = self.processes
        self.engine.eval()
        total, weight = 0.0, 0.0
        for k in range(count):
            index = processes.rank + k * processes.world_size
            conversation = self.validation[index % len(self.validation)]
            real = 1.0 if index < len(self.validation) else 0.0  # wrapped-around repeats keep ranks in step
            try:
                inputs = self._batch_inputs([self.prepare(conversation)])
                wanted = self._available_losses(inputs)
                signature: tuple[bool, ...] | None = (
                    *self._modalities(inputs),
                    *(n in wanted for n in self.cfg.losses),
                )
            except UNUSABLE:
                signature = None
            seen = gather_objects(signature, processes)
            if None in seen or len(set(seen)) > 1 or not wanted:
                continue
            output = self._forward(inputs, wanted)
            total += real * output.loss.item()
            weight += real
        self.engine.train()
        total, weight = reduce_sum([total, weight], processes)
        loss = total / weight if weight else None
        if loss is not None:
            self.metrics.write({"step": self.step, "split": "validation", "loss": loss})
        return loss

    # -- checkpoints ----------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        root = self.output_dir / CHECKPOINTS
        tag = f"step-{self.step}"
        state = run_position(self.stream, self.processes, self.step)
        if self.ds_config is not None:
            self.engine.save_checkpoint(str(root), tag=tag, client_state=state, save_latest=False)
            barrier()
            if self.processes.main:  # the pointer moves only once every rank's shard is written
                mark_latest(root, tag, self.cfg.run.keep_checkpoints)
        elif self.processes.main:
            state |= trained_state(self.model, self.optimizer, self.scheduler)
            write_checkpoint(root, tag, TRAINER_STATE, state, self.cfg.run.keep_checkpoints)
        barrier()
        return root / tag

    def _resume(self) -> int | None:
        root = self.output_dir / CHECKPOINTS
        tag = latest_tag(root)
        if tag is None:
            if self.processes.main:
                print(f"no checkpoint in {root}: starting from step 0")
            return None
        if self.ds_config is not None:
            _, state = self.engine.load_checkpoint(str(root), tag=tag)
            if state is None:
                raise ValueError(f"checkpoint {tag} could not be loaded")
            if len(state["streams"]) != self.processes.world_size:
                raise ValueError(f"checkpoint {tag} was made by {len(state['streams'])} processes; resume with as many")
        else:
            state = read_checkpoint(root, TRAINER_STATE, self.processes)
            restore_trained_state(state, self.model, self.optimizer, self.scheduler)  # type: ignore[arg-type]
        self.step = restore_position(state, self.stream, self.processes)  # type: ignore[arg-type]
        return self.step

    # -- final model --------------------------------------------------------------------------------
    def _full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on CPU, on rank 0 (gathered from ZeRO-3 partitions when needed)."""
        module = self.model
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                return (
                    {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                    if self.processes.main
                    else None
                )
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()} if self.processes.main else None

    def save_final(self) -> Path | None:
        state = self._full_state_dict()
        final = self.output_dir / "final"
        if self.processes.main:
            from omni_core.lora import add_lora, merge_lora, remove_lora, save_lora

            model = OmniForConditionalGeneration(self.model.config)
            if self.lora_settings is not None:
                add_lora(model, self.lora_settings)
            model.load_state_dict(state)
            if self.lora_settings is not None:
                save_lora(model, self.lora_settings, self.output_dir / "adapter")
                if self.cfg.lora is None or self.cfg.lora.merge:
                    merge_lora(model)
                else:  # final/ keeps the base weights; load_lora(model, OUTPUT/adapter) adds the adapters
                    remove_lora(model)
            with building_folder(final, replace=True) as staging:
                save_model_folder(model.eval(), self.tokenizer, staging, self.summary())
        barrier()
        return final if self.processes.main else None

    def summary(self) -> dict[str, Any]:
        cfg = self.cfg
        records = self.metrics.records() if self.processes.main else []
        train = [r for r in records if r.get("split") == "train"]
        validation = [r for r in records if r.get("split") == "validation"]
        return {
            "recipe": cfg.recipe,
            "stage": cfg.stage,
            "description": cfg.description,
            "steps": self.step,
            "trainable": cfg.trainable,
            "losses": cfg.losses,
            "lora": None
            if cfg.lora is None
            else {"rank": cfg.lora.rank, "parts": cfg.lora.parts, "merged": cfg.lora.merge},
            "base": cfg.model.base or cfg.model.preset,
            "data": {
                "sources": [{"file": Path(s.path).name, "weight": s.weight} for s in cfg.data.train],
                "train_conversations": self.train_size,
                "validation_conversations": len(self.validation),
                "cleaning": {k: v for k, v in self.cleaning.as_dict().items() if k != "dropped_ids"},
                "identifier_check": "ran" if self.fingerprints is not None else "not run (no fingerprints)",
            },
            "processes": self.processes.world_size,
            "deepspeed_zero_stage": self.zero_stage if self.ds_config is not None else None,
            "final_train_loss": train[-1]["loss"] if train else None,
            "final_validation_loss": validation[-1]["loss"] if validation else None,
        }

    def _write_run_record(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        record = {"stage": self.cfg.stage, "recipe": self.cfg.recipe, "deepspeed": self.ds_config}
        (self.output_dir / "run.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    def cleanup(self) -> None:
        stop_processes()


def recipe_main(
    cfg: RecipeConfig,
    *,
    deepspeed_config: dict[str, Any] | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    fingerprints: Any = None,
) -> Path | None:
    """Set up, train, save the final model folder, clean up. Returns ``final/`` on rank 0."""
    recipe = OmniRecipe(cfg, deepspeed_config=deepspeed_config, resume=resume, fingerprints=fingerprints)
    try:
        recipe.setup()
        recipe.train(max_steps)
        return recipe.save_final()
    finally:
        recipe.cleanup()
