"""Whole runs: resume matches the uninterrupted run, a NaN loss stops with its step and batch, the CLI
writes what it promises, DeepSpeed ZeRO-2 (one process) and ZeRO-3 (two processes, gloo) train."""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import pytest
import torch

from omni_core import OmniForConditionalGeneration
from training.config import CONFIG_DIR, load_recipe_config
from training.recipes.omni import OmniRecipe
from training.runtime import TrainingDiverged

from .conftest import metrics, run_cli

STAGE = CONFIG_DIR / "stage3_omni.yaml"
ZERO2, ZERO3 = CONFIG_DIR / "deepspeed" / "zero2.json", CONFIG_DIR / "deepspeed" / "zero3.json"


def _cfg(data: Path, out: Path, steps: int = 6):  # type: ignore[no-untyped-def]
    return load_recipe_config(
        STAGE,
        {
            "data.train": [{"path": str(data)}],
            "optim.max_steps": steps,
            "optim.warmup_steps": 2,
            "optim.lr": 3.0e-3,
            "optim.gradient_accumulation_steps": 2,
            "data.batch_size": 2,
            "data.pack": True,
            "data.max_tokens": 256,
            "run.output_dir": str(out),
            "run.eval_every": 0,
            "run.save_every": 0,
        },
    )


def _run(cfg, *, stop_after: int | None = None, resume: bool = False) -> OmniRecipe:  # type: ignore[no-untyped-def]
    recipe = OmniRecipe(cfg, resume=resume)
    recipe.setup()
    recipe.train(stop_after)
    recipe.cleanup()
    return recipe


def _train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run) if r["split"] == "train"}


def test_a_run_stopped_and_resumed_matches_the_uninterrupted_run(conversations_file: Path, tmp_path: Path) -> None:
    straight = _run(_cfg(conversations_file, tmp_path / "straight"))
    _run(_cfg(conversations_file, tmp_path / "split"), stop_after=3)
    assert max(_train_losses(tmp_path / "split")) == 3
    resumed = _run(_cfg(conversations_file, tmp_path / "split"), resume=True)
    expected, found = _train_losses(tmp_path / "straight"), _train_losses(tmp_path / "split")
    assert sorted(found) == list(range(1, 7))  # steps 1-3 kept, 4-6 from the resumed run
    for step in range(1, 7):
        assert found[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6), step
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_nan_loss_stops_the_run_naming_the_step_and_the_batch(
    conversations_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = OmniForConditionalGeneration.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        output = forward(self, *args, **kwargs)
        calls["n"] += 1
        if self.training and calls["n"] == 5:  # step 3 (two micro-batches a step), its first micro-batch
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(OmniForConditionalGeneration, "forward", poisoned)
    recipe = OmniRecipe(_cfg(conversations_file, tmp_path / "run"))
    recipe.setup()
    with pytest.raises(TrainingDiverged, match=r"step 3, micro-batch 1 \(conversations omni.jsonl line \d+"):
        recipe.train()
    recipe.cleanup()
    assert not (tmp_path / "run" / "final").exists()
    assert max(_train_losses(tmp_path / "run")) == 2


def test_the_train_command_writes_metrics_a_loss_curve_and_a_model_that_loads(
    conversations_file: Path, tmp_path: Path
) -> None:
    result = run_cli(
        "train", str(STAGE), "--data", str(conversations_file), "--max-steps", "3", "--output-dir", "run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    records = metrics(tmp_path / "run")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert all("loss" in r and math.isfinite(r["loss"]) for r in records)
    assert (tmp_path / "run" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    model = OmniForConditionalGeneration.from_pretrained(tmp_path / "run" / "final")
    assert model.config.preset == "tiny"
    bad = run_cli("train", str(STAGE), "--data", str(tmp_path / "none.jsonl"), cwd=tmp_path)
    assert bad.returncode == 2 and "none.jsonl" in bad.stderr and "Traceback" not in bad.stderr
    again = run_cli("train", str(STAGE), "--data", str(conversations_file), "--output-dir", "run", cwd=tmp_path)
    assert again.returncode == 1 and "already holds a run" in again.stderr  # never mixed into the old run


def test_deepspeed_zero2_in_one_process_trains_as_plain_torch_does(conversations_file: Path, tmp_path: Path) -> None:
    common = ("--data", str(conversations_file), "--max-steps", "3")
    plain = run_cli("train", str(STAGE), *common, "--output-dir", "plain", cwd=tmp_path)
    zero2 = run_cli("train", str(STAGE), *common, "--output-dir", "zero2", "--deepspeed", str(ZERO2), cwd=tmp_path)
    assert plain.returncode == 0 and zero2.returncode == 0, zero2.stderr[-3000:]
    expected, found = _train_losses(tmp_path / "plain"), _train_losses(tmp_path / "zero2")
    assert found == pytest.approx(expected, rel=1e-4)
    assert (tmp_path / "zero2" / "checkpoints" / "step-3" / "mp_rank_00_model_states.pt").is_file()
    resumed = run_cli(
        "train",
        str(STAGE),
        *common[:2],
        "--max-steps",
        "4",
        "--output-dir",
        "zero2",
        "--deepspeed",
        str(ZERO2),
        "--resume",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(_train_losses(tmp_path / "zero2")) == [1, 2, 3, 4]


def test_deepspeed_zero3_trains_with_two_processes_over_gloo(conversations_file: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # torchrun's rendezvous needs a real port (0 hangs)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    result = run_cli(
        "train",
        str(STAGE),
        "--data",
        str(conversations_file),
        "--max-steps",
        "2",
        "--output-dir",
        "zero3",
        "--deepspeed",
        str(ZERO3),
        cwd=tmp_path,
        launcher=torchrun,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = metrics(tmp_path / "zero3")
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records)
    run = json.loads((tmp_path / "zero3" / "final" / "training.json").read_text())
    assert run["processes"] == 2 and run["deepspeed_zero_stage"] == 3
    model = OmniForConditionalGeneration.from_pretrained(tmp_path / "zero3" / "final")  # gathered from two shards
    assert not any(p.numel() == 0 for p in model.parameters())


def test_accumulated_micro_batches_weigh_every_answer_token_as_one_batch_does(
    conversations_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two micro-batches of one conversation each give the gradient one batch of both gives: the
    mean over all answer tokens, however the conversations are split across micro-batches."""
    stage = CONFIG_DIR / "stage1_1_image_text.yaml"
    gradients: list[dict[str, torch.Tensor]] = []
    step = OmniRecipe._optimizer_step

    def recording(self):  # type: ignore[no-untyped-def]
        gradients.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})
        return step(self)

    monkeypatch.setattr(OmniRecipe, "_optimizer_step", recording)
    lines = [json.loads(line) for line in conversations_file.read_text().splitlines()]
    for index, line in enumerate(lines):  # answers of very different lengths, no speech
        line["messages"][1]["content"] = "word " * (1 + 6 * index)
    uneven = conversations_file.with_name("uneven.jsonl")
    uneven.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for name, batch, accumulation in (("together", 2, 1), ("accumulated", 1, 2)):
        cfg = load_recipe_config(
            stage,
            {
                "data.train": [{"path": str(uneven)}],
                "data.validation_fraction": 0.0,
                "data.batch_size": batch,
                "optim.gradient_accumulation_steps": accumulation,
                "optim.max_steps": 1,
                "run.output_dir": str(tmp_path / name),
            },
        )
        _run(cfg)
    together, accumulated = gradients
    assert together.keys() == accumulated.keys() and together
    for name, value in together.items():
        assert torch.allclose(value, accumulated[name], rtol=1e-4, atol=1e-7), name
