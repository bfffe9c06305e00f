"""MONAI transforms that turn loaded studies into model inputs, as array + dictionary pairs.

- ``LoadSeries``: DICOM file(s) of one series (or one multi-frame object) to a ``(C, D, H, W)``
  MetaTensor (see ``medical_data.study``).

- ``NativeResolutionResize``: keep the aspect ratio, sides multiples of the patch-merge factor (28 =
  patch 14 x 2x2 merge), total pixels within a budget (the Qwen2-VL / NaViT rule).
- ``SelectFrames``: a 3D series or cine as an evenly sampled frame sequence whose length is a
  multiple of the temporal patch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, PersistentDataset
from monai.transforms import Compose, MapTransform, Resize, Transform

from medical_data.study import load_image, load_series

PATCH_FACTOR = 28
DEFAULT_MIN_PIXELS = 4 * PATCH_FACTOR * PATCH_FACTOR
DEFAULT_MAX_PIXELS = 1280 * PATCH_FACTOR * PATCH_FACTOR  # ~1 MP; the released model allows up to ~3.2 MP


def native_resolution_size(
    height: int,
    width: int,
    *,
    factor: int = PATCH_FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) closest to the input with sides multiples of ``factor`` and area in budget."""
    if height <= 0 or width <= 0:
        raise ValueError("image sides must be positive")
    if max(height, width) / min(height, width) > 200:
        raise ValueError("aspect ratio over 200 is not an image the model can use")
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


class LoadSeries(Transform):
    """Load one series: a list of slice files (sorted geometrically) or a single image object.

    Paths may be relative to ``root``, so a cache keyed on the record survives moving the dataset.
    """

    def __init__(self, root: Path | None = None, preset: str | None = None, three_window_ct: bool = False) -> None:
        self.root, self.preset, self.three_window_ct = root, preset, three_window_ct

    def __call__(self, paths: str | Path | Sequence[str | Path]) -> MetaTensor:
        items = [paths] if isinstance(paths, str | Path) else list(paths)
        resolved = [self.root / p if self.root is not None else Path(p) for p in items]
        if len(resolved) == 1:
            return load_image(resolved[0], preset=self.preset, three_window_ct=self.three_window_ct)
        return load_series(resolved, preset=self.preset, three_window_ct=self.three_window_ct)


class NativeResolutionResize(Transform):
    """Resize ``(C, H, W)`` or ``(C, D, H, W)`` in-plane to the native-resolution grid (area-averaging down)."""

    def __init__(
        self, factor: int = PATCH_FACTOR, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> None:
        if min_pixels > max_pixels or factor <= 0:
            raise ValueError("need 0 < factor and min_pixels <= max_pixels")
        self.factor, self.min_pixels, self.max_pixels = factor, min_pixels, max_pixels

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        size = native_resolution_size(
            int(height), int(width), factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels
        )
        spatial = (-1, *size) if image.ndim == 4 else size
        return Resize(spatial_size=spatial, mode="area" if size[0] * size[1] < height * width else "bilinear")(image)


class SelectFrames(Transform):
    """Sample ``(C, D, H, W)`` along D to at most ``max_frames``, a multiple of ``temporal_patch``."""

    def __init__(self, max_frames: int = 32, temporal_patch: int = 2) -> None:
        if max_frames < temporal_patch or temporal_patch < 1:
            raise ValueError("need max_frames >= temporal_patch >= 1")
        self.max_frames, self.temporal_patch = max_frames, temporal_patch

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4:
            raise ValueError("SelectFrames expects a (C, D, H, W) tensor")
        depth = image.shape[1]
        count = min(depth, self.max_frames)
        count = max(self.temporal_patch, count - count % self.temporal_patch)
        indices = torch.linspace(0, depth - 1, count).round().long()  # repeats frames when depth < count
        return image[:, indices]


class _PerKey(MapTransform):
    """Dictionary version of an array transform: applies it to each key (MONAI's ``...d`` pattern)."""

    array_transform: type[Transform]

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = self.array_transform(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class LoadSeriesd(_PerKey):
    array_transform = LoadSeries


class NativeResolutionResized(_PerKey):
    array_transform = NativeResolutionResize


class SelectFramesd(_PerKey):
    array_transform = SelectFrames


PLAIN_META_SUFFIX, AFFINE_SUFFIX = "_meta", "_affine"


def _plain(value: Any) -> Any:
    """``value`` if it is made of str, numbers, bools, None, lists and tuples only; else None."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return (
            None
            if any(item is None and original is not None for item, original in zip(items, value, strict=True))
            else items
        )
    return None


class ToPlaind(MapTransform):
    """MetaTensor to a plain tensor, its header facts (``KEY_meta``) and its affine (``KEY_affine``).

    ``torch.load(weights_only=True)``, which MONAI's PersistentDataset uses, refuses MetaTensor's
    pickled classes, so a cached MetaTensor is silently recomputed on every read; plain values load.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if isinstance(image, MetaTensor):
                d[f"{key}{PLAIN_META_SUFFIX}"] = {
                    name: plain for name, value in image.meta.items() if (plain := _plain(value)) is not None
                }
                d[f"{key}{AFFINE_SUFFIX}"] = image.affine.clone()
                d[key] = image.as_tensor()
        return d


def from_plain(data: Mapping[Hashable, Any], keys: Sequence[str]) -> dict[Hashable, Any]:
    """The inverse of ``ToPlaind``: MetaTensors with their affine and facts again."""
    d = dict(data)
    for key in keys:
        if f"{key}{PLAIN_META_SUFFIX}" in d:
            meta = dict(d.pop(f"{key}{PLAIN_META_SUFFIX}"))
            d[key] = MetaTensor(d[key], affine=d.pop(f"{key}{AFFINE_SUFFIX}"), meta=meta)
    return d


class SeriesCache(PersistentDataset):
    """MONAI's on-disk cache whose items come back as MetaTensors, cache hit or miss alike."""

    def __init__(self, records: Sequence[dict[str, Any]], transform: Transform, cache_dir: Path, keys: Sequence[str]):
        cache_dir.mkdir(parents=True, exist_ok=True)
        # flat: MONAI caches up to the first transform it cannot prove deterministic, and a nested
        # Compose is one (Compose is Randomizable), which would leave nothing cached
        chain = list(transform.flatten().transforms) if isinstance(transform, Compose) else [transform]
        super().__init__(data=list(records), transform=Compose([*chain, ToPlaind(keys)]), cache_dir=cache_dir)
        self.keys = tuple(keys)

    def _transform(self, index: int) -> dict[Hashable, Any]:
        return from_plain(super()._transform(index), self.keys)


def persistent_dataset(
    records: Sequence[dict[str, Any]], transform: Transform, cache_dir: Path, keys: Sequence[str] = ("image",)
) -> SeriesCache:
    """MONAI's on-disk cache for training: each record's deterministic transforms run once.

    The cache key is the record itself: put every setting of ``transform`` into the record, so that
    other settings never return old tensors (MONAI does not hash the transform by default).
    """
    return SeriesCache(records, transform, cache_dir, keys)
