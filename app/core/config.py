"""Settings: the one place that reads the environment (prefix ``OMNICLINIC_``).

Library packages (``omni_core``, ``medical_data``, ``audit``) never read the environment; the app
passes them the paths, secrets and limits they need from here.
"""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRET_KEY_FILENAME = "secret_key"
DEID_SECRET_FILENAME = "deid_secret"
AUDIT_KEY_FILENAME = "audit_signing_key.pem"
AUDIT_WITNESS_FILENAME = "audit_checkpoint.json"
DATABASE_FILENAME = "omniclinic.db"
MIN_SECRET_LENGTH = 32
# Values that show up in tutorials and .env templates; a deployment that uses one is refused.
KNOWN_PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "changethis", "secret", "secret-key", "your-secret-key", "password", "default"}
)


class SettingsError(RuntimeError):
    """A setting is unusable (bad value, unsafe secret, unwritable data folder). The message says how to fix it."""


def default_data_dir() -> Path:
    """The per-user data folder (e.g. ``~/.local/share/omniclinic`` on Linux)."""
    return Path(platformdirs.user_data_dir("omniclinic", appauthor=False))


class Settings(BaseSettings):
    """Deployment settings. Every field can be set as ``OMNICLINIC_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="OMNICLINIC_", extra="ignore", validate_default=True)

    data_dir: Path = Field(default_factory=default_data_dir, description="Where the database, keys and caches live.")
    database_url: SecretStr = Field(
        default=SecretStr(""),
        description="SQLAlchemy URL; empty means SQLite in the data folder. A secret: it may hold a password.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the web app listens on.")
    port: int = Field(default=7860, ge=1, le=65535, description="Port the web app listens on.")
    secret_key: SecretStr | None = Field(
        default=None,
        description="Signing key for sessions; empty means generated once and kept 0600 in the data folder.",
    )
    deid_secret: SecretStr | None = Field(
        default=None,
        description="Site key for de-identification (UIDs, pseudonyms, date shifts); share it between sites that "
        "must map the same patient alike. Empty means generated once and kept 0600 in the data folder.",
    )
    model_dir: Path | None = Field(
        default=None, description="Folder of the omni model (save_pretrained layout); empty means the bundled default."
    )
    asr_model: str = Field(
        default="tiny.en", description="'tiny.en' (bundled), 'base', or a local CTranslate2 Whisper folder."
    )
    asr_language: str = Field(default="en", min_length=2, max_length=8, description="Language spoken (ISO 639-1).")
    tts_engine: Literal["auto", "piper", "espeak"] = Field(default="auto", description="Speech synthesis engine.")
    tts_deterministic: bool = Field(
        default=False, description="Speak a text the same way every time (Piper's sampling noise off)."
    )
    max_audio_seconds: float = Field(default=600.0, gt=0, le=7200, description="Longest audio accepted, seconds.")
    cpu_threads: int = Field(default=2, ge=1, le=256, description="Threads for CPU inference.")
    audit_checkpoint_events: int = Field(
        default=100, ge=1, le=1_000_000, description="Sign an audit checkpoint after this many new events."
    )
    audit_checkpoint_seconds: float = Field(
        default=300.0, gt=0, le=86_400, description="Sign an audit checkpoint when new events are this old."
    )
    model_preset: Literal["tiny", "demo-cpu"] = Field(
        default="demo-cpu",
        description="Model served when OMNICLINIC_MODEL_DIR is empty: 'demo-cpu' (the default model trained on "
        "synthetic phantoms, models/omniclinic-demo; untrained when a checkout lacks it) or 'tiny' (random "
        "weights, for tests).",
    )
    max_new_tokens: int = Field(default=160, ge=1, le=4096, description="Longest answer, in tokens.")
    answer_timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Longest time one answer may take.")
    queue_depth: int = Field(
        default=8, ge=0, le=1000, description="Questions that may wait for the model; beyond it the API answers 503."
    )
    queue_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Longest wait for the model, seconds.")
    token_minutes: int = Field(default=60, ge=1, le=24 * 60, description="Lifetime of a login, minutes.")
    login_attempts: int = Field(
        default=5, ge=1, le=1000, description="Failed logins per user name and address before a pause."
    )
    login_window_s: float = Field(default=300.0, gt=0, le=86_400, description="The window failed logins count in.")
    max_upload_bytes: int = Field(default=1024**3, ge=1, description="Largest upload (all files of one request).")
    max_upload_files: int = Field(
        default=1000,
        ge=1,
        le=1000,
        description="Most files in one upload (zip members count; multipart's own cap is 1000).",
    )
    deid_on_upload: bool = Field(default=True, description="De-identify studies as they are uploaded.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API (none).")
    cookie_secure: bool = Field(default=False, description="Send the login cookie over HTTPS only (behind TLS).")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    pacs_username: str = Field(default="", max_length=256, description="DICOMweb user for --pacs (HTTP basic).")
    pacs_password: SecretStr = Field(default=SecretStr(""), description="DICOMweb password for --pacs.")
    pacs_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Longest wait for one PACS answer.")

    @field_validator("data_dir", "model_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser().resolve()

    @field_validator("secret_key", "deid_secret", mode="after")
    @classmethod
    def _refuse_weak_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        raw = value.get_secret_value()
        name = f"OMNICLINIC_{info.field_name.upper()}"
        if raw.strip().lower() in KNOWN_PLACEHOLDER_SECRETS:
            raise ValueError(f"{name} is a well-known placeholder; unset it to have one generated")
        if len(raw) < MIN_SECRET_LENGTH:
            raise ValueError(f"{name} must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url.get_secret_value():
            self.database_url = SecretStr(f"sqlite:///{self.data_dir / DATABASE_FILENAME}")
        return self

    @property
    def secret_key_path(self) -> Path:
        return self.data_dir / SECRET_KEY_FILENAME

    @property
    def models_dir(self) -> Path:
        """Models prepared once and cached (e.g. Whisper base joined from its two parts)."""
        return self.data_dir / "models"

    @property
    def studies_dir(self) -> Path:
        """Stored studies, one generated folder name each."""
        return self.data_dir / "studies"

    @property
    def answers_dir(self) -> Path:
        """Spoken answers (WAV), one generated file name each."""
        return self.data_dir / "answers"

    @property
    def audit_key_path(self) -> Path:
        """Ed25519 key that signs audit checkpoints (its public half sits beside it as .pub.pem)."""
        return self.data_dir / AUDIT_KEY_FILENAME

    @property
    def audit_witness_path(self) -> Path:
        """The last signed checkpoint, kept outside the database: the next one must be consistent with it."""
        return self.data_dir / AUDIT_WITNESS_FILENAME

    @property
    def deid_secret_path(self) -> Path:
        return self.data_dir / DEID_SECRET_FILENAME

    def prepare_data_dir(self) -> None:
        """Create the data folder (0700) if it is missing.

        Raises:
            SettingsError: the folder cannot be created or written.
        """
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise SettingsError(
                f"cannot create the data folder {self.data_dir} ({exc.strerror}); "
                "set OMNICLINIC_DATA_DIR to a folder this user can write"
            ) from None
        if not self.data_dir.is_dir() or not os.access(self.data_dir, os.W_OK | os.X_OK):
            raise SettingsError(
                f"the data folder {self.data_dir} is not a writable folder; "
                "set OMNICLINIC_DATA_DIR to a folder this user can write"
            )

    def resolve_secret_key(self) -> SecretStr:
        """The session signing key: from the environment, else the data folder (generated on first run).

        Raises:
            SettingsError: the key file is unreadable, too permissive, or too short.
        """
        return self.secret_key or self._load_or_create_secret(self.secret_key_path)

    def resolve_deid_secret(self) -> bytes:
        """The de-identification site key, as bytes (kept apart from the session key, so rotating
        the one never changes the pseudonyms made with the other)."""
        return (self.deid_secret or self._load_or_create_secret(self.deid_secret_path)).get_secret_value().encode()

    def _load_or_create_secret(self, path: Path) -> SecretStr:
        """Read a key file, or create it with mode 0600 (never overwritten); a key file other users can
        read is refused."""
        from omniclinic_common.files import PrivateFileError, create_private_file, read_private_file

        self.prepare_data_dir()
        try:
            create_private_file(path, (secrets.token_urlsafe(48) + "\n").encode())
            key = read_private_file(path).decode("utf-8", "replace").strip()
        except PrivateFileError as exc:
            raise SettingsError(str(exc)) from None
        except OSError as exc:
            raise SettingsError(f"cannot read the key file {path} ({exc.strerror})") from None
        if len(key) < MIN_SECRET_LENGTH:
            raise SettingsError(f"the key file {path} holds a key that is too short; delete it to regenerate")
        return SecretStr(key)


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into one readable SettingsError."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"OMNICLINIC_{field.upper()}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear the cache with ``get_settings.cache_clear()``)."""
    return load_settings()
