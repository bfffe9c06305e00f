"""Suite-wide setup: offline always, an isolated data folder per test, and the integration switch."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub or gradio: the suite never reaches a network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REQUIRE_INTEGRATION_ENV = "OMNICLINIC_REQUIRE_INTEGRATION"

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run where CUDA is present and are skipped, with the reason, where it is not."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu_tests:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test gets its own data folder and no OMNICLINIC_* setting from the caller's shell."""
    for name in list(os.environ):
        if name.startswith("OMNICLINIC_") and name != REQUIRE_INTEGRATION_ENV:
            monkeypatch.delenv(name)
    data_dir = tmp_path_factory.mktemp("data")
    monkeypatch.setenv("OMNICLINIC_DATA_DIR", str(data_dir))
    monkeypatch.setenv("OMNICLINIC_MODEL_PRESET", "tiny")  # tests that need the demo-cpu model ask for it
    from app.core.config import get_settings

    get_settings.cache_clear()
    yield data_dir
    get_settings.cache_clear()


@pytest.fixture
def require_service() -> Callable[[bool, str], None]:
    """Call ``require_service(available, reason)`` at the top of an integration test.

    A missing service skips the test with the reason, unless OMNICLINIC_REQUIRE_INTEGRATION=1 (as in
    CI), where it fails instead: a CI run without its services must not pass by skipping.
    """

    def check(available: bool, reason: str) -> None:
        if available:
            return
        if os.environ.get(REQUIRE_INTEGRATION_ENV) == "1":
            pytest.fail(f"{reason} ({REQUIRE_INTEGRATION_ENV}=1, so a missing service is a failure)")
        pytest.skip(reason)

    return check


@pytest.fixture
def ocr(require_service: Callable[[bool, str], None]) -> None:
    """Tesseract for burned-in text: `make test` installs it (Debian's tesseract-ocr)."""
    from medical_data.deid.burned_in import ocr_available

    require_service(ocr_available(), "tesseract-ocr is not installed (make system installs it)")
