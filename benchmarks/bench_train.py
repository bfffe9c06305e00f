"""Training throughput and memory: plain torch against DeepSpeed ZeRO-2, two processes against one, and
DeepSpeed's model-state memory estimates for the 7B preset, stage by stage.

Throughput runs ``omniclinic train`` (stage 4.1's recipe) on the ``demo-cpu`` architecture with random
weights (a 135M Llama backbone, SmolLM2's shape) and text conversations, four per step; tokens/s is
the median over the steps after the first two. Each run gets the machine's cores: one process uses
them all, two share them (one thread each on a 2-core machine). Ratios are within this run.

Memory: DeepSpeed's own estimators (``estimate_zero2/3_model_states_mem_needs``) for the trained
parameters of each stage, plus the frozen parameters' bf16 weights (replicated under ZeRO-2,
partitioned under ZeRO-3). Model states only: activations come on top and depend on sequence length.

    python benchmarks/bench_train.py [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OMNICLINIC = Path(sys.executable).with_name("omniclinic")
STAGE = REPO / "training" / "configs" / "stage4_1_omni_sft.yaml"
ZERO2 = REPO / "training" / "configs" / "deepspeed" / "zero2.json"
GIB = 1024**3


def _conversations(folder: Path, count: int = 64) -> Path:
    words = [
        "the",
        "lungs",
        "are",
        "clear",
        "no",
        "effusion",
        "mild",
        "atelectasis",
        "heart",
        "size",
        "normal",
        "small",
        "nodule",
        "stable",
    ]
    lines = []
    for i in range(count):
        answer = " ".join(words[(i + k) % len(words)] for k in range(40))
        lines.append(
            {
                "messages": [
                    {"role": "user", "content": f"Report {i}: describe the findings."},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    path = folder / "text.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(name: str, work: Path, data: Path, tokenizer: Path, steps: int, *, processes: int, deepspeed: bool) -> float:
    out = work / name
    command = [
        str(OMNICLINIC),
        "train",
        str(STAGE),
        "--data",
        str(data),
        "--max-steps",
        str(steps),
        "--preset",
        "demo-cpu",
        "--output-dir",
        str(out),
    ]
    if deepspeed:
        command += ["--deepspeed", str(ZERO2)]
    cores = os.cpu_count() or 1
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": str(max(1, cores // processes)),
        "OMNICLINIC_DATA_DIR": str(work / "data-dir"),
    }
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(_free_port()),
            *command,
        ]
    overrides = work / f"{name}.yaml"  # the stage with this bench's tokenizer and batch
    text = STAGE.read_text(encoding="utf-8").replace("  preset: tiny", f"  preset: tiny\n  tokenizer: {tokenizer}")
    text = text.replace("  batch_size: 1", "  batch_size: 4").replace(
        "  validation_fraction: 0.1", "  validation_fraction: 0.0"
    )
    overrides.write_text(text, encoding="utf-8")
    command[command.index(str(STAGE))] = str(overrides)
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if r.get("split") == "train" and r["step"] > 2]
    return statistics.median(rates)


def throughput(steps: int) -> None:
    from omni_core.tokenization import character_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        work = Path(folder)
        data = _conversations(work)
        tokenizer = work / "tokenizer"
        character_tokenizer().save_pretrained(str(tokenizer))
        runs = {
            "plain torch, 1 process": _run("plain1", work, data, tokenizer, steps, processes=1, deepspeed=False),
            "DeepSpeed ZeRO-2, 1 process": _run("zero2_1", work, data, tokenizer, steps, processes=1, deepspeed=True),
            "plain torch DDP, 2 processes": _run("plain2", work, data, tokenizer, steps, processes=2, deepspeed=False),
            "DeepSpeed ZeRO-2, 2 processes": _run("zero2_2", work, data, tokenizer, steps, processes=2, deepspeed=True),
        }
    base = runs["plain torch, 1 process"]
    print(f"training throughput, demo-cpu architecture, {os.cpu_count()} cores, median tokens/s over steps 3-{steps}")
    print(f"{'run':<32}{'tokens/s':>10}{'vs plain 1p':>14}")
    for name, rate in runs.items():
        print(f"{name:<32}{rate:>10.1f}{base / rate:>13.2f}x" if rate else f"{name:<32}{'n/a':>10}")
    print(
        f"DeepSpeed ZeRO-2 / plain torch time ratio (1 process): {base / runs['DeepSpeed ZeRO-2, 1 process']:.2f}x "
        "(aim: within 1.15x)"
    )
    print(f"two processes / one (plain torch): {runs['plain torch DDP, 2 processes'] / base:.2f}x tokens/s")


def memory_table(gpus: int = 8) -> None:
    import torch
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from omni_core import OmniConfig, OmniForConditionalGeneration
    from omni_core.lora import lora_targets
    from training.config import load_recipe_config, recipe_configs

    with torch.device("meta"):
        model = OmniForConditionalGeneration(OmniConfig.from_preset("baichuan-omni-1.5-7b"))
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    total = sum(p.numel() for p in model.parameters())
    print(
        f"\nbaichuan-omni-1.5-7b: {total / 1e9:.2f} B parameters; model states per GPU on {gpus} GPUs (GiB), "
        "DeepSpeed's estimators for the trained part + bf16 frozen weights; activations extra"
    )
    print(f"{'stage':<22}{'trained':>10}{'ZeRO-2':>10}{'ZeRO-3':>10}{'ZeRO-3+offload':>16}")
    for path in recipe_configs():
        cfg = load_recipe_config(path)
        if cfg.recipe != "omni":
            continue
        model.set_trainable(**cfg.trainable)
        trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = total - trained
        if cfg.lora is not None:  # adapters of rank r on each targeted linear layer: r x (in + out)
            settings = cfg.lora.settings()
            targets = [model.get_submodule(name) for name in lora_targets(model, settings)]
            trained = sum(settings.r * (t.in_features + t.out_features) for t in targets)
            frozen = total
        _, zero2 = estimate_zero2_model_states_mem_needs(trained, gpus, 1, cpu_offload=False)
        _, zero3, _ = estimate_zero3_model_states_mem_needs(trained, largest, gpus, 1, cpu_offload=False)
        _, offload, _ = estimate_zero3_model_states_mem_needs(
            trained, largest, gpus, 1, cpu_offload=True, cpu_offload_params=True
        )
        row = [(zero2 + 2 * frozen) / GIB, (zero3 + 2 * frozen / gpus) / GIB, (offload + 2 * frozen / gpus) / GIB]
        print(f"{cfg.stage:<22}{trained / 1e9:>9.2f}B" + "".join(f"{v:>10.1f}" for v in row[:2]) + f"{row[2]:>16.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    throughput(args.steps)
    memory_table()


if __name__ == "__main__":
    main()
