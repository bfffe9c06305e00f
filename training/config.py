"""Recipe configs: one YAML per stage, read into dataclasses (litgpt's ``args.py`` style).

Every field has a docstring and checks in ``__post_init__``; an unknown key anywhere is an error
that names it (``optim.lrr: unknown key; known keys are ...``), so a typo never trains silently
with a default. DeepSpeed JSON files are checked too: a JSON object whose top-level keys DeepSpeed
knows, batch sizes left to the recipe.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from omni_core.configuration_omni import LOSS_NAMES, PRESETS
from omni_core.modeling_omni import PARTS

RECIPES = ("omni", "vocoder", "asr")
CONFIG_DIR = Path(__file__).with_name("configs")


class ConfigError(ValueError):
    """A recipe config or DeepSpeed JSON is invalid; the message names the file and the key."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """The architecture when no ``base`` is given: tiny, demo-cpu or baichuan-omni-1.5-7b."""
    base: str | None = None
    """A model folder (``save_pretrained`` with its tokenizer) to start from; overrides ``preset``."""
    llm: str | None = None
    """A Hugging Face causal LM folder that initialises the LLM (``from_components``)."""
    whisper: str | None = None
    """A transformers Whisper folder (``omniclinic convert-whisper``) for the audio encoder."""
    qwen2_vl: str | None = None
    """A Qwen2-VL folder whose vision tower initialises the vision encoder."""
    tokenizer: str | None = None
    """A tokenizer folder; by default the base's, the LLM's, or the character tokenizer (tiny)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training precision: ``auto`` is bf16 where the device supports it (CUDA with bf16), else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~30% more time)."""

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}")


@dataclass
class DataSource:
    path: str
    """A conversations JSON-lines file (``omniclinic make-conversations``)."""
    weight: float = 1.0
    """Its share of the mixture (weights are normalised; a source is repeated or subsampled to it)."""

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError("a source's weight must be > 0")


@dataclass
class DataConfig:
    train: list[DataSource] = field(default_factory=list)
    """The sources mixed into the training set."""
    validation: str | None = None
    """A conversations file for validation; without it ``validation_fraction`` is held out."""
    validation_fraction: float = 0.1
    """Share of conversation groups (studies) held out for validation when no file is given."""
    max_tokens: int = 2048
    """Longest conversation kept (tokens, media included); longer ones are dropped by cleaning."""
    min_answer_chars: int = 1
    """Conversations whose assistant text is shorter are dropped (speech-only answers count as long enough)."""
    max_answer_chars: int = 20_000
    """Conversations whose assistant text is longer are dropped."""
    deduplicate: bool = True
    """Drop exact duplicates and near duplicates (``near_duplicate_threshold``)."""
    near_duplicate_threshold: float = 0.9
    """Jaccard similarity of word 3-gram shingles (MinHash estimate) above which two conversations
    with the same media are one."""
    identifier_fingerprints: str | None = None
    """The ingested dataset's ``deid_fingerprints.json``: any text holding a listed identifier is dropped
    and counted (found automatically beside a dataset's conversations)."""
    pack: bool = False
    """Pack several conversations into each row of ``max_tokens`` (segment-masked attention)."""
    batch_size: int = 1
    """Rows per micro-batch per process."""
    seed: int = 0

    def __post_init__(self) -> None:
        self.train = [DataSource(**s) if isinstance(s, dict) else s for s in self.train]
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("validation_fraction must be in [0, 1)")
        if self.max_tokens < 8 or self.batch_size < 1:
            raise ValueError("max_tokens must be >= 8 and batch_size >= 1")
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ValueError("near_duplicate_threshold must be in (0, 1]")
        if self.min_answer_chars < 0 or self.max_answer_chars < self.min_answer_chars:
            raise ValueError("need 0 <= min_answer_chars <= max_answer_chars")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr``; then a cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    min_lr_ratio: float = 0.1
    max_steps: int = 100
    """Optimizer steps (each ``gradient_accumulation_steps`` micro-batches per process)."""
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (0: no clipping)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("lr must be > 0, weight_decay and max_grad_norm >= 0")
        if self.max_steps < 1 or self.gradient_accumulation_steps < 1 or self.warmup_steps < 0:
            raise ValueError("max_steps and gradient_accumulation_steps must be >= 1, warmup_steps >= 0")
        if not 0 <= self.min_lr_ratio <= 1 or len(self.betas) != 2:
            raise ValueError("min_lr_ratio must be in [0, 1] and betas a pair")


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    parts: list[str] = field(default_factory=lambda: ["llm"])
    """Parts that get adapters (``omni_core.lora``)."""
    target_modules: list[str] | None = None
    """Linear layer names inside those parts (None: the attention projections; ["all"]: every linear layer)."""
    merge: bool = True
    """Merge the adapters into the weights of ``final/`` (what serving loads)."""

    def settings(self) -> Any:
        from omni_core.lora import LoraSettings

        kwargs: dict[str, Any] = {"r": self.rank, "alpha": self.alpha, "dropout": self.dropout}
        kwargs["parts"] = tuple(self.parts)
        if self.target_modules is not None:
            kwargs["targets"] = tuple(self.target_modules)
        return LoraSettings(**kwargs)

    def __post_init__(self) -> None:
        self.settings()  # the same checks LoRA itself makes, at load time


@dataclass
class RunConfig:
    output_dir: str = "runs/omni"
    log_every: int = 1
    """Steps between lines of ``metrics.jsonl``."""
    eval_every: int = 0
    """Steps between validation losses (0: at the end only)."""
    save_every: int = 0
    """Steps between resumable checkpoints (0: at the end only)."""
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.log_every < 1 or self.keep_checkpoints < 1 or self.eval_every < 0 or self.save_every < 0:
            raise ValueError("log_every and keep_checkpoints must be >= 1, eval_every and save_every >= 0")


@dataclass
class VocoderConfig:
    """The vocoder recipe's GAN: HiFi-GAN's discriminators and loss weights."""

    segment_seconds: float = 0.5
    """Random audio windows per item (HiFi-GAN trains on 8192-sample segments)."""
    mel_weight: float = 45.0
    feature_weight: float = 1.0
    discriminator_width: int = 32
    """Channel scale of the discriminators (32 is HiFi-GAN's)."""


@dataclass
class AsrConfig:
    """The speech-recognition recipe: a Whisper folder fine-tuned on dictation and report pairs."""

    whisper: str = "tiny.en"
    """tiny.en, base, a CTranslate2 Whisper folder (converted first) or a transformers Whisper folder."""
    freeze_encoder: bool = True
    """Train the decoder only (dictation adaptation is mostly vocabulary)."""
    freeze_embeddings: bool = False
    """Keep the decoder's token and position embeddings (and the output layer tied to them): the weights
    that change are then the decoder's layers only, small enough to ship beside a model."""
    train_decoder_layers: int | None = None
    """Train only the decoder's last N layers (and its final norm); None: every decoder layer."""

    def __post_init__(self) -> None:
        if self.train_decoder_layers is not None and self.train_decoder_layers < 1:
            raise ValueError("train_decoder_layers must be >= 1 (or null for all)")


@dataclass
class RecipeConfig:
    recipe: Literal["omni", "vocoder", "asr"] = "omni"
    """Which loop: ``omni`` (every stage of the omni model), ``vocoder`` (HiFi-GAN), ``asr`` (Whisper)."""
    stage: str = ""
    """The stage's name in metrics and the model card (``1.1-image-text``, ``medical-lora``...)."""
    description: str = ""
    trainable: dict[str, bool] = field(default_factory=dict)
    """Every part of the model, trained (true) or frozen (false); the omni recipe needs all of them."""
    freeze: list[str] = field(default_factory=list)
    """Module paths frozen inside trained parts (``speech_decoder.vocoder``)."""
    losses: list[str] = field(default_factory=list)
    """The losses this stage optimises, by name (``LOSS_NAMES``)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    lora: LoraConfig | None = None
    vocoder: VocoderConfig | None = None
    asr: AsrConfig | None = None
    deepspeed: str | None = None
    """A DeepSpeed JSON (relative to this YAML); ``--deepspeed`` overrides it, none trains with plain torch."""

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}")
        if self.recipe == "omni":
            missing = [part for part in PARTS if part not in self.trainable]
            unknown = sorted(set(self.trainable) - set(PARTS))
            if unknown:
                raise ValueError(f"trainable: unknown parts {', '.join(unknown)}; parts are {', '.join(PARTS)}")
            if missing:
                raise ValueError(f"trainable: say for every part whether it trains (missing {', '.join(missing)})")
            bad = sorted(set(self.losses) - set(LOSS_NAMES))
            if bad or not self.losses:
                raise ValueError(f"losses: name one or more of {', '.join(LOSS_NAMES)} (got {bad or 'none'})")
            if not any(self.trainable.values()) and self.lora is None:
                raise ValueError("trainable: nothing trains")
        if self.recipe == "vocoder" and self.vocoder is None:
            self.vocoder = VocoderConfig()
        if self.recipe == "asr" and self.asr is None:
            self.asr = AsrConfig()


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested_dataclass(annotation: Any) -> type | None:
    """The dataclass inside ``X`` or ``X | None``."""
    if dataclasses.is_dataclass(annotation):
        return annotation  # type: ignore[return-value]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None


def _type_error(hint: Any, value: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` (None when it fits); YAML reads ``1e-4`` as a string."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        reasons = [_type_error(arg, value) for arg in args]
        return None if any(r is None for r in reasons) else next(r for r in reasons if r)
    if hint is type(None):
        return None if value is None else "expected nothing (null)"
    if origin is Literal:
        return None if value in args else f"expected one of {', '.join(map(str, args))}"
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected a whole number"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else "expected a number (write 1.0e-4, not 1e-4, in YAML)"
    if hint is str:
        return None if isinstance(value, str) else "expected a string"
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return "expected a list"
        inner = args[0] if args else Any
        if inner is Any or dataclasses.is_dataclass(inner):
            return None
        return next((r for r in (_type_error(inner, v) for v in value) if r), None)
    if origin is dict:
        if not isinstance(value, dict):
            return "expected a mapping"
        return next((r for r in (_type_error(args[1], v) for v in value.values()) if r), None) if args else None
    return None


def build(cls: type, data: object, where: str = "") -> Any:
    """A dataclass from a mapping, every key checked; errors name the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'}: expected a mapping, found {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown key; known keys are {', '.join(sorted(names))}")
        nested = _nested_dataclass(hints[key])
        if nested is not None and value is not None:
            kwargs[key] = build(nested, value, path)
            continue
        inner = typing.get_args(hints[key])
        if typing.get_origin(hints[key]) is list and inner and dataclasses.is_dataclass(inner[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{path}: expected a list")
            kwargs[key] = [build(inner[0], item, f"{path}[{i}]") for i, item in enumerate(value)]  # type: ignore[arg-type]
            continue
        problem = _type_error(hints[key], value)
        if problem:
            raise ConfigError(f"{path}: {problem}, found {value!r}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'the config'}: {exc}") from None


def load_recipe_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> RecipeConfig:
    """Read a recipe YAML (with dotted ``overrides``: ``{"optim.max_steps": 5}``) and validate it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not YAML ({type(exc).__name__})") from None
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.name}: a recipe config is a mapping of keys, not a {type(raw).__name__}")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
            if not isinstance(node, dict):
                raise ConfigError(f"{path.name}: {key} must be a mapping to set {dotted}")
        node[last] = value
    try:
        config = build(RecipeConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None
    if config.deepspeed is not None and not Path(config.deepspeed).is_absolute():
        config.deepspeed = str(path.resolve().parent / config.deepspeed)
    return config


DEEPSPEED_KEYS = frozenset(
    {
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "gradient_clipping",
        "zero_optimization",
        "bf16",
        "fp16",
        "optimizer",
        "scheduler",
        "zero_allow_untested_optimizer",
        "steps_per_print",
        "wall_clock_breakdown",
        "activation_checkpointing",
        "communication_data_type",
        "prescale_gradients",
        "gradient_predivide_factor",
        "zero_force_ds_cpu_optimizer",
    }
)
ZERO_KEYS = frozenset(
    {
        "stage",
        "overlap_comm",
        "contiguous_gradients",
        "reduce_scatter",
        "reduce_bucket_size",
        "allgather_partitions",
        "allgather_bucket_size",
        "offload_optimizer",
        "offload_param",
        "stage3_prefetch_bucket_size",
        "stage3_param_persistence_threshold",
        "stage3_max_live_parameters",
        "stage3_max_reuse_distance",
        "stage3_gather_16bit_weights_on_model_save",
        "sub_group_size",
        "round_robin_gradients",
    }
)
RECIPE_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def load_deepspeed_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a DeepSpeed JSON: known keys only, a ZeRO stage of 0-3; batch sizes, accumulation
    and clipping are filled from the recipe (values of "auto" or absent), never contradicted."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path.name}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path.name}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path.name}: a DeepSpeed config is a JSON object")
    for key in config:
        if key not in DEEPSPEED_KEYS:
            raise ConfigError(f"{path.name}: {key}: unknown key; known keys are {', '.join(sorted(DEEPSPEED_KEYS))}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise ConfigError(f"{path.name}: zero_optimization must be an object")
    for key in zero:
        if key not in ZERO_KEYS:
            raise ConfigError(f"{path.name}: zero_optimization.{key}: unknown key")
    if zero.get("stage", 0) not in (0, 1, 2, 3):
        raise ConfigError(f"{path.name}: zero_optimization.stage must be 0, 1, 2 or 3")
    for key in RECIPE_OWNED:
        if config.get(key, "auto") != "auto":
            raise ConfigError(f'{path.name}: {key} comes from the recipe (data.batch_size, optim.*): use "auto"')
    return config


def recipe_configs() -> list[Path]:
    """Every recipe YAML shipped under ``training/configs``."""
    return sorted(CONFIG_DIR.glob("*.yaml"))


def deepspeed_configs() -> list[Path]:
    return sorted((CONFIG_DIR / "deepspeed").glob("*.json"))
