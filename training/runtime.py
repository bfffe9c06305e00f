"""What every recipe shares: processes, precision, the schedule, RNG state, metrics and the loss plot.

One entry point runs each rank under ``torchrun`` or ``deepspeed`` (they set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT; DeepSpeed's launcher also passes ``--local_rank``). Alone,
a run is rank 0 of 1, and DeepSpeed still gets the variables it needs (else it looks for MPI).
Backend: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


class TrainingDiverged(RuntimeError):
    """The loss stopped being a number; the message names the step and the batch."""


@dataclass(frozen=True)
class Processes:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_processes(*, deepspeed: bool) -> Processes:
    """Join the process group the launcher made (or make a group of one for DeepSpeed)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and deepspeed:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if (world_size > 1 or deepspeed) and not dist.is_initialized():
        if deepspeed:
            import deepspeed as ds

            ds.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
        else:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(rank, world_size, local_rank, device)


def stop_processes() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def training_dtype(choice: str, device: torch.device) -> torch.dtype:
    """bf16 where the device has it (``auto``), else float32."""
    if choice == "bfloat16" or (choice == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def cosine_with_warmup(warmup_steps: int, max_steps: int, min_lr_ratio: float) -> Any:
    """The learning-rate factor at each optimizer step: linear warm-up, then cosine to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_objects(value: Any, processes: Processes) -> list[Any]:
    """Every rank's ``value``, in rank order (on every rank)."""
    if processes.world_size == 1:
        return [value]
    gathered: list[Any] = [None] * processes.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def reduce_sum(values: list[float], processes: Processes) -> list[float]:
    if processes.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=processes.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


class MetricsLog:
    """``metrics.jsonl`` (one JSON object per logged step) and ``loss.png``, written by rank 0."""

    def __init__(self, output_dir: Path, *, enabled: bool, resume_from_step: int | None = None) -> None:
        self.path = output_dir / "metrics.jsonl"
        self.plot_path = output_dir / "loss.png"
        self.enabled = enabled
        self.started = time.perf_counter()
        if enabled:
            output_dir.mkdir(parents=True, exist_ok=True)
            kept = []
            if resume_from_step is not None and self.path.exists():  # drop lines past the checkpoint
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        if json.loads(line).get("step", 0) <= resume_from_step:
                            kept.append(line)
                    except json.JSONDecodeError:
                        continue
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {**record, "elapsed_s": round(time.perf_counter() - self.started, 3)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def plot(self, title: str) -> None:
        """The training (and validation) loss against the step, as a PNG."""
        if not self.enabled:
            return
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        records = self.records()
        train = [(r["step"], r["loss"]) for r in records if r.get("split", "train") == "train" and "loss" in r]
        validation = [(r["step"], r["loss"]) for r in records if r.get("split") == "validation"]
        figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
        if train:
            axes.plot(*zip(*train, strict=True), label="train", linewidth=1.2)
        if validation:
            axes.plot(*zip(*validation, strict=True), "o-", label="validation")
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        temporary = self.plot_path.with_suffix(".partial.png")
        figure.savefig(temporary)
        plt.close(figure)
        os.replace(temporary, self.plot_path)


LATEST = "latest"


def refuse_reused_run(output_dir: Path, resume: bool) -> None:
    """A run folder that holds another run is continued (``--resume``) or left alone, never mixed."""
    if not resume and ((output_dir / "metrics.jsonl").exists() or (output_dir / "checkpoints").exists()):
        raise ValueError(f"{output_dir} already holds a run: --resume continues it, or choose another --output-dir")


def mark_latest(root: Path, tag: str, keep: int) -> None:
    """Point ``root/latest`` at a whole checkpoint (written last, atomically); keep the newest ``keep``."""
    partial = root / f".{LATEST}.partial"
    partial.write_text(tag, encoding="utf-8")
    os.replace(partial, root / LATEST)
    older = sorted(
        (p for p in root.glob("step-*") if p.is_dir() and p.name != tag), key=lambda p: int(p.name.split("-")[1])
    )
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def latest_tag(root: Path) -> str | None:
    pointer = root / LATEST
    return pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None


def write_checkpoint(root: Path, tag: str, filename: str, state: dict[str, Any], keep: int) -> None:
    """A plain-torch checkpoint (rank 0 calls it): ``root/tag/filename``, then ``latest``."""
    (root / tag).mkdir(parents=True, exist_ok=True)
    partial = root / tag / f".{filename}.partial"
    torch.save(state, partial)
    os.replace(partial, root / tag / filename)
    mark_latest(root, tag, keep)


def read_checkpoint(root: Path, filename: str, processes: Processes) -> dict[str, Any] | None:
    """The latest plain-torch checkpoint's state, checked to come from as many processes, or None."""
    tag = latest_tag(root)
    if tag is None:
        return None
    state = torch.load(root / tag / filename, map_location=processes.device, weights_only=False)
    if len(state["streams"]) != processes.world_size:
        raise ValueError(f"checkpoint {tag} was made by {len(state['streams'])} processes; resume with as many")
    return state


def run_position(stream: Any, processes: Processes, step: int) -> dict[str, Any]:
    """What every checkpoint holds besides weights: the step, each rank's data position and RNG."""
    return {
        "step": step,
        "streams": gather_objects(stream.state_dict(), processes),
        "rng": gather_objects(rng_state(), processes),
    }


def restore_position(state: dict[str, Any], stream: Any, processes: Processes) -> int:
    stream.load_state_dict(state["streams"][processes.rank])
    set_rng_state(state["rng"][processes.rank])
    return int(state["step"])


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def diverged(loss: torch.Tensor, processes: Processes) -> bool:
    """Is the loss not a number on any process? (Every process stops together, none waits forever.)"""
    return bool(reduce_sum([0.0 if torch.isfinite(loss).item() else 1.0], processes)[0])


def optimizer_step(model: torch.nn.Module, optimizer: Any, scheduler: Any, max_grad_norm: float) -> float:
    """Clip the trained parameters' gradient norm (0: no clipping), step, schedule; the norm before clipping."""
    trained = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(trained, max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)


def trained_state(model: torch.nn.Module, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """A plain-torch checkpoint's weights part: the trained parameters (the frozen ones come from the
    base), the optimizer and the scheduler."""
    trained = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    return {"model": trained, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def restore_trained_state(state: dict[str, Any], model: torch.nn.Module, optimizer: Any, scheduler: Any) -> None:
    """Load ``trained_state``; a checkpoint that trained other parameters (another stage) is refused."""
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state["model"]) != trained:
        raise ValueError("the checkpoint trained other parameters than this config: another stage?")
    model.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
