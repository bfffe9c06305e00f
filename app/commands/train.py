"""``omniclinic make-conversations``, ``train`` and ``retrain``: the training recipes from the command line.

``training`` is imported inside each command (the CLI starts fast; nothing else imports training).
Under ``torchrun`` or ``deepspeed`` launchers the same ``omniclinic train`` runs on every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.commands.common import EXIT_FAILED, EXIT_USAGE, fail


def _site_fingerprints(paths: list[Path], required: Path | None = None):  # type: ignore[no-untyped-def]
    """The de-identification fingerprints found beside the data (keyed by this site's secret), or None
    with a warning; ``required`` (``data.identifier_fingerprints``) must exist."""
    from app.commands.common import current_settings
    from app.core.config import SettingsError
    from medical_data.deid.fingerprints import FINGERPRINTS_NAME, IdentifierFingerprints
    from medical_data.errors import MedicalDataError

    if required is not None and not required.is_file():
        raise fail(f"data.identifier_fingerprints: {required.name} does not exist", EXIT_USAGE)
    found = [path / FINGERPRINTS_NAME for path in paths if (path / FINGERPRINTS_NAME).is_file()]
    found += [required] if required is not None else []
    if not found:
        typer.secho(
            f"warning: no {FINGERPRINTS_NAME} beside the data: texts are not checked for the identifiers "
            "ingest removed (the model card says so)",
            err=True,
            fg=typer.colors.YELLOW,
        )
        return None
    try:
        secret = current_settings().resolve_deid_secret()
    except SettingsError as exc:
        raise fail(f"{exc} (the identifier check needs the site secret ingest used)", EXIT_USAGE) from None
    merged = None
    for path in found:
        try:
            loaded = IdentifierFingerprints.load(path, secret)
        except MedicalDataError as exc:
            raise fail(exc.reason, EXIT_USAGE) from None
        if merged is None:
            merged = loaded
        else:
            merged.fingerprints |= loaded.fingerprints
            merged.longest = max(merged.longest, loaded.longest)
    return merged


def make_conversations(
    dataset: Annotated[Path, typer.Argument(help="An ingested dataset (omniclinic ingest --out).", exists=True)],
    out: Annotated[
        Path | None, typer.Option("--out", help="The JSON-lines file to write [default: DATASET/conversations.jsonl].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the yes/no questions' distractors.")] = 0,
) -> None:
    """Turn an ingested dataset into training conversations: each report answers "Describe the
    findings." about its study; header facts become closed questions."""
    from training.conversations import write_conversations
    from training.make_conversations import DatasetError, conversations_from_dataset

    try:
        conversations, counts = conversations_from_dataset(dataset, seed=seed)
    except DatasetError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if not conversations:
        raise fail("the dataset yields no conversation (no cached series)", EXIT_FAILED)
    target = out or dataset / "conversations.jsonl"
    written = write_conversations(target, conversations)
    _fingerprints_beside(dataset, target.parent)
    typer.echo(
        f"wrote {written} conversations to {target}: {counts.reports} reports, {counts.closed_questions} closed "
        f"questions from {counts.series} series in {counts.studies} studies"
    )
    if counts.series_without_cache:
        typer.echo(f"  {counts.series_without_cache} series were not cached by ingest and are left out")


def _fingerprints_beside(dataset: Path, folder: Path) -> None:
    """Conversations written away from their dataset take its identifier fingerprints along (merged with
    any already there), so that training finds them beside the data."""
    from medical_data.deid.fingerprints import FINGERPRINTS_NAME

    source, target = dataset / FINGERPRINTS_NAME, folder / FINGERPRINTS_NAME
    if not source.is_file() or source.resolve() == target.resolve():
        return
    merged = _site_fingerprints([dataset, folder] if target.is_file() else [dataset])
    if merged is not None:
        merged.save(target)


def _parse_data(values: list[str]) -> list[dict[str, object]]:
    sources = []
    for value in values:
        path, _, weight = value.partition(":") if ":" in value and not Path(value).exists() else (value, "", "")
        try:
            sources.append({"path": path, "weight": float(weight) if weight else 1.0})
        except ValueError:
            raise fail(f"--data {value}: the weight after ':' must be a number", EXIT_USAGE) from None
    return sources


def train(
    config: Annotated[Path, typer.Argument(help="A recipe YAML (training/configs/).", exists=True, dir_okay=False)],
    deepspeed: Annotated[
        Path | None, typer.Option("--deepspeed", help="A DeepSpeed JSON (training/configs/deepspeed/).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Optimizer steps (overrides the YAML).")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="tiny, demo-cpu or baichuan-omni-1.5-7b.")] = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Run folder (overrides the YAML).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's latest checkpoint.")] = False,
    data: Annotated[
        list[str] | None, typer.Option("--data", help="Conversations file[:weight], repeatable (replaces the YAML's).")
    ] = None,
    base: Annotated[Path | None, typer.Option("--base", help="Start from this model folder.")] = None,
    local_rank: Annotated[int | None, typer.Option("--local_rank", "--local-rank", hidden=True)] = None,
) -> None:
    """Run a training recipe; writes OUTPUT/metrics.jsonl, OUTPUT/loss.png and OUTPUT/final/."""
    import os

    from training.config import ConfigError, load_deepspeed_config, load_recipe_config

    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
    overrides: dict[str, object] = {}
    if max_steps is not None:
        overrides["optim.max_steps"] = max_steps
    if preset is not None:
        overrides["model.preset"] = preset
    if output_dir is not None:
        overrides["run.output_dir"] = str(output_dir)
    if data:
        overrides["data.train"] = _parse_data(data)
    if base is not None:
        overrides["model.base"] = str(base)
    try:
        cfg = load_recipe_config(config, overrides)
        ds_path = str(deepspeed) if deepspeed is not None else cfg.deepspeed
        ds_config = load_deepspeed_config(ds_path) if ds_path else None
    except ConfigError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    final = _run_recipe(cfg, ds_config, resume)
    if final is not None:
        typer.echo(f"metrics: {Path(cfg.run.output_dir) / 'metrics.jsonl'}")
        typer.echo(f"loss curve: {Path(cfg.run.output_dir) / 'loss.png'}")
        typer.echo(f"model: {final}")


def _run_recipe(cfg, ds_config, resume):  # type: ignore[no-untyped-def]
    """Run the recipe ``cfg.recipe`` names; user-fixable failures become one line."""
    from medical_data.errors import MedicalDataError
    from training.conversations import ConversationFormatError
    from training.runtime import TrainingDiverged

    try:
        if cfg.recipe == "omni":
            from training.recipes.omni import recipe_main

        if cfg.recipe == "vocoder":
            from training.recipes.vocoder import recipe_main as vocoder_main

            return vocoder_main(cfg, resume=resume)
        folders = [Path(s.path).parent for s in cfg.data.train]
        if cfg.data.validation:
            folders.append(Path(cfg.data.validation).parent)
        required = Path(cfg.data.identifier_fingerprints) if cfg.data.identifier_fingerprints else None
        fingerprints = _site_fingerprints(folders, required)
        if cfg.recipe == "omni":
            from training.recipes.omni import recipe_main

            return recipe_main(cfg, deepspeed_config=ds_config, resume=resume, fingerprints=fingerprints)
        from training.recipes.asr import recipe_main as asr_main

        return asr_main(cfg, resume=resume, fingerprints=fingerprints)
    except ConversationFormatError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except TrainingDiverged as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    except MedicalDataError as exc:
        raise fail(exc.reason, EXIT_FAILED) from None
    except (ValueError, FileNotFoundError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None


def retrain(
    dataset: Annotated[
        Path, typer.Option("--dataset", help="An ingested dataset (omniclinic ingest --out).", exists=True)
    ],
    base: Annotated[str, typer.Option("--base", help="The model folder to start from (or a preset: tiny).")],
    out: Annotated[Path, typer.Option("--out", help="The new model folder (must not exist).")],
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", min=1, help="Optimizer steps (the recipe's by default).")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option("--recipe", help="A recipe YAML [default: training/configs/medical_lora.yaml].")
    ] = None,
    held_out: Annotated[float, typer.Option("--held-out", min=0.05, max=0.5, help="Share of studies held out.")] = 0.2,
) -> None:
    """Make conversations, fine-tune, evaluate on held-out studies, write a model folder with its model card."""
    from medical_data.errors import MedicalDataError
    from training.config import ConfigError
    from training.make_conversations import DatasetError
    from training.retrain import DEFAULT_RECIPE
    from training.retrain import retrain as run_retrain
    from training.runtime import TrainingDiverged

    if out.exists():
        raise fail(f"{out} already exists; choose a new folder", EXIT_USAGE)
    fingerprints = _site_fingerprints([dataset])
    try:
        result = run_retrain(
            dataset,
            base,
            out,
            recipe=recipe or DEFAULT_RECIPE,
            max_steps=max_steps,
            held_out_fraction=held_out,
            fingerprints=fingerprints,
        )
    except (ConfigError, DatasetError) as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    except MedicalDataError as exc:
        raise fail(exc.reason, EXIT_FAILED) from None
    except (TrainingDiverged, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    before, after = result.before, result.after
    typer.echo(f"held-out loss {before.loss:.4f} -> {after.loss:.4f} after {result.steps} steps")
    if after.closed_accuracy is not None:
        typer.echo(f"closed questions exact {before.closed_accuracy:.3f} -> {after.closed_accuracy:.3f}")
    typer.echo(f"model: {result.model_dir} (model card: {result.model_dir / 'MODEL_CARD.md'})")


def phantoms(
    out: Annotated[Path, typer.Option("--out", help="The corpus folder (train/, validation/, test/).")],
    studies: Annotated[int, typer.Option("--studies", min=1, max=1_000_000, help="Studies in all splits.")] = 200,
    seed: Annotated[int, typer.Option(help="The corpus's seed: the same seed writes the same corpus.")] = 0,
) -> None:
    """Write the synthetic chest corpus the default model is trained and evaluated on: phantom CT series
    and radiographs with ground truth, questions and reference reports, split train/validation/test
    (the test split held out, asked in other words)."""
    from training.phantom_corpus import SPLITS, build_corpus

    if out.exists() and not out.is_dir():
        raise fail("--out exists and is not a folder", EXIT_USAGE)
    counts = build_corpus(out, studies=studies, seed=seed)
    for split in SPLITS:
        typer.echo(
            f"{split:<10} {counts.studies[split]:>6} studies {counts.questions[split]:>7} questions "
            f"{counts.conversations[split]:>7} conversations  {out / split}"
        )


def evaluate_benchmark(
    model: Annotated[Path, typer.Option("--model", help="A model folder (from_pretrained), with its tokenizer.")],
    benchmark: Annotated[str, typer.Option("--benchmark", help="phantoms, vqa-rad, slake, pathvqa or gmai-mmbench.")],
    data: Annotated[Path, typer.Option("--data", help="The benchmark's local copy (a folder or its file).")],
    out: Annotated[Path, typer.Option("--out", help="Where metrics.json, metrics.md and predictions go.")] = Path(
        "eval"
    ),
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Ask only the first N questions.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, max=1024)] = 48,
) -> None:
    """Ask a model a benchmark's questions and score them: closed-question accuracy, open-question recall,
    multiple-choice accuracy; for phantoms also side accuracy by orientation, report findings F1 and
    invented findings on normal studies."""
    import json

    from training.benchmarks import BenchmarkError, run

    if not (model / "config.json").is_file():
        raise fail("--model must be a model folder (config.json, weights, tokenizer)", EXIT_USAGE)
    from app.commands.common import current_settings

    try:
        metrics = run(
            model, benchmark, data, out, limit=limit, max_new_tokens=max_new_tokens,
            cache_dir=current_settings().models_dir,
        )  # fmt: skip
    except BenchmarkError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    typer.echo(json.dumps(metrics, indent=1))
    typer.echo(f"metrics in {out / 'metrics.json'} and {out / 'metrics.md'}")


def demo_model_build(
    out: Annotated[Path, typer.Option("--out", help="The model folder to write (replaced when it exists).")] = Path(
        "models/omniclinic-demo"
    ),
    work: Annotated[Path, typer.Option("--work", help="Where the corpus and each stage's run are kept.")] = Path(
        "runs/demo-model"
    ),
    studies: Annotated[
        int, typer.Option("--studies", min=8, max=100_000, help="Phantom studies in all splits.")
    ] = 1500,
    seed: Annotated[int, typer.Option(help="The corpus's seed.")] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Two steps a stage on a dozen studies with the tiny preset (a smoke test).")
    ] = False,
) -> None:
    """Train the default model on this machine: the phantom corpus, the paper's stages at small scale
    (audio codebooks, vision pretraining, image-text, audio-text, omni SFT with LoRA), a trained-parts
    folder with a model card and its held-out figures. 80 to 140 minutes on 2 CPU cores, by the machine."""
    import json

    from app.commands.common import current_settings
    from training.demo_model import DemoPlan, build_demo_model

    plan = DemoPlan.quick() if quick else DemoPlan(studies=studies, seed=seed)
    settings = current_settings()
    record = build_demo_model(out, work=work, cache_dir=settings.models_dir, plan=plan, log=typer.echo)
    typer.echo(json.dumps(record.get("metrics", {}), indent=1))
    typer.echo(f"model in {out} ({record['weights_megabytes']} MB of weights), card in {out / 'MODEL_CARD.md'}")
