"""VOI windows: the linear window of PS3.3 C.11.2.1.2, the usual CT presets, robust windows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERCENTILE_RANGE = (0.5, 99.5)


@dataclass(frozen=True)
class Window:
    """A linear VOI window, in modality units (HU for CT)."""

    center: float
    width: float
    name: str = "custom"

    def __post_init__(self) -> None:
        if not np.isfinite(self.center) or not np.isfinite(self.width) or self.width < 1:
            raise ValueError("a window needs a finite centre and a width of at least 1")

    @property
    def bounds(self) -> tuple[float, float]:
        return self.center - self.width / 2, self.center + self.width / 2


# Common CT windows, centre/width in HU.
CT_PRESETS: dict[str, Window] = {
    "lung": Window(-600, 1500, "lung"),
    "mediastinum": Window(40, 400, "mediastinum"),
    "bone": Window(400, 1800, "bone"),
    "brain": Window(40, 80, "brain"),
    "abdomen": Window(50, 400, "abdomen"),
}
# The three windows MedGemma renders CT with, one per RGB channel: wide (-1024..1024 HU),
# soft tissue (-135..215 HU) and brain (0..80 HU).
CT_THREE_WINDOWS: tuple[Window, Window, Window] = (
    Window(0, 2048, "wide"),
    Window(40, 350, "soft-tissue"),
    Window(40, 80, "brain"),
)


def preset_window(name: str) -> Window:
    """A named CT preset; ValueError names the choices."""
    if name not in CT_PRESETS:
        raise ValueError(f"unknown window preset {name!r}; choose from {', '.join(CT_PRESETS)}")
    return CT_PRESETS[name]


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """The DICOM linear VOI function, scaled to [0, 1] float32 (PS3.3 C.11.2.1.2.1)."""
    center, width = window.center - 0.5, window.width - 1.0
    if width <= 0:
        return (values > center).astype(np.float32)
    scaled = (values - center) / width + 0.5
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def window_between(low: float, high: float, name: str) -> Window:
    low, high = sorted((low, high))
    return Window((low + high) / 2, max(high - low, 1.0), name)


def percentile_window(
    values: np.ndarray, low: float = PERCENTILE_RANGE[0], high: float = PERCENTILE_RANGE[1]
) -> Window:
    """A robust window spanning the given percentiles (for MR, US, CR, DX without a header window)."""
    lo, hi = np.percentile(values, [low, high])
    return window_between(float(lo), float(hi), f"p{low:g}-p{high:g}")
