"""Retrain on a hospital's ingested dataset: conversations, a held-out split, fine-tuning, evaluation
before and after, and a model folder with a model card that names its data, steps and figures.

The held-out split is by study (``group``) and is never trained on nor used for validation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omni_core.configuration_omni import PRESETS
from omni_core.modeling_omni import OmniForConditionalGeneration
from omni_core.tokenization import load_tokenizer
from training.config import CONFIG_DIR, load_recipe_config
from training.conversations import write_conversations
from training.data import clean, split_by_group
from training.evaluate import Evaluation, evaluate
from training.make_conversations import conversations_from_dataset
from training.models import load_for_training
from training.recipes.omni import recipe_main

MODEL_CARD = "MODEL_CARD.md"
DEFAULT_RECIPE = CONFIG_DIR / "medical_lora.yaml"


@dataclass
class RetrainResult:
    model_dir: Path
    before: Evaluation
    after: Evaluation
    steps: int
    summary: dict[str, Any]


def retrain(
    dataset: Path,
    base: str,
    out: Path,
    *,
    recipe: Path = DEFAULT_RECIPE,
    max_steps: int | None = None,
    held_out_fraction: float = 0.2,
    fingerprints: Any = None,
    seed: int = 0,
) -> RetrainResult:
    """See the module docstring. ``base`` is a model folder or a preset name (``tiny``)."""
    if out.exists():
        raise ValueError(f"{out} already exists; choose a new folder")
    conversations, counts = conversations_from_dataset(dataset, seed=seed)
    kept, cleaning = clean(conversations, fingerprints=fingerprints)
    train, held_out = split_by_group(kept, held_out_fraction, seed=seed)
    if not train or not held_out:
        raise ValueError(f"{len(kept)} usable conversations are too few to train and hold out a split")
    work = out.with_name(f".{out.name}.run")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:  # the working folder holds report text: it never outlives the run, failed or not
        cfg = _recipe_config(work, base, recipe, max_steps, seed, train, held_out)
        model, tokenizer = load_for_training(cfg.model, device=_cpu(), seed=cfg.run.seed)
        before = evaluate(model, tokenizer, held_out)
        del model
        final = recipe_main(cfg, fingerprints=fingerprints)
        if final is None:
            raise RuntimeError("training ended without a model folder")
        after = evaluate(OmniForConditionalGeneration.from_pretrained(final), load_tokenizer(final), held_out)
        summary = json.loads((final / "training.json").read_text(encoding="utf-8"))
        summary |= {
            "dataset": {
                "name": dataset.name,
                "studies": counts.studies,
                "series": counts.series,
                "reports": counts.reports,
                "closed_questions": counts.closed_questions,
                "cleaning": {k: v for k, v in cleaning.as_dict().items() if k != "dropped_ids"},
                "held_out_conversations": len(held_out),
                "held_out_groups": len({c.group or c.id for c in held_out}),
            },
            "evaluation": {"before": before.as_dict(), "after": after.as_dict()},
            "base": base,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (final / "training.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        for name in ("metrics.jsonl", "loss.png"):
            shutil.copy2(work / "run" / name, final / name)
        (final / MODEL_CARD).write_text(model_card(summary), encoding="utf-8")
        shutil.move(str(final), str(out))
        return RetrainResult(out, before, after, int(summary["steps"]), summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _recipe_config(
    work: Path, base: str, recipe: Path, max_steps: int | None, seed: int, train: list, held_out: list
) -> Any:
    """The fine-tuning recipe over the training conversations (written to ``work``)."""
    write_conversations(work / "train.jsonl", train)
    write_conversations(work / "held_out.jsonl", held_out)
    overrides: dict[str, Any] = {
        "data.train": [{"path": str(work / "train.jsonl")}],
        "run.output_dir": str(work / "run"),
        "data.seed": seed,
        "run.seed": seed,
    }
    overrides["model.preset" if base in PRESETS else "model.base"] = base
    if max_steps is not None:
        overrides["optim.max_steps"] = max_steps
    return load_recipe_config(recipe, overrides)


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


def _figure(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _accuracy(evaluation: dict[str, Any]) -> str:
    return f"{_figure(evaluation['closed_accuracy'], 3)} of {evaluation['closed_questions']}"


def model_card(summary: dict[str, Any]) -> str:
    data, ev, trained = summary["dataset"], summary["evaluation"], summary["data"]
    before, after = ev["before"], ev["after"]
    cleaning = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data["cleaning"].items())
    lora = summary.get("lora")
    method = f"LoRA rank {lora['rank']} on {', '.join(lora['parts'])}, merged" if lora else "full fine-tuning"
    return f"""# Model card: {summary["stage"]} fine-tune of {summary["base"]}

Made by `omniclinic retrain` on {summary["created"]}. Not a medical device: drafts for a clinician to check.

## Data
- Dataset: `{data["name"]}` (de-identified by `omniclinic ingest`): {data["studies"]} studies, {data["series"]} series,
  {data["reports"]} reports, {data["closed_questions"]} closed questions from header facts.
- Cleaning: {cleaning}; identifier check {trained["identifier_check"]}.
- Trained on {trained["train_conversations"]} conversations, validated on {trained["validation_conversations"]};
  {data["held_out_conversations"]} conversations of {data["held_out_groups"]} patients held out, never trained on.

## Training
- Method: {method}; losses {", ".join(summary["losses"])}; {summary["steps"]} optimizer steps
  on {summary["processes"]} process(es).
- Final training loss {_figure(summary["final_train_loss"])},
  validation loss {_figure(summary["final_validation_loss"])} (`metrics.jsonl`, `loss.png`).

## Held-out evaluation
| | loss | closed questions exact |
|---|---|---|
| before ({summary["base"]}) | {_figure(before["loss"])} | {_accuracy(before)} |
| after | {_figure(after["loss"])} | {_accuracy(after)} |
"""
