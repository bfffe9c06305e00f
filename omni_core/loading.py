"""Weights straight into place: build on the meta device, stream safetensors into the target dtype and device.

Building a 7B model with random fp32 weights and then copying a checkpoint over them holds two copies
(about 37 GB before anything loads). Here parts to be loaded are built with their parameters on the
meta device (accelerate's ``init_empty_weights``; buffers stay real, so rotary tables and the like
need no rebuilding), and each tensor is read from its file on its own, cast and placed, so the peak
is one copy of the weights plus the largest tensor.

On the CPU a tensor is read with a plain ``readinto`` into its own memory, not through a memory map:
mapped file pages count as resident memory and would double the peak while both are held. On any
other device safetensors' own ``safe_open`` streams to the device.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def empty_weights() -> AbstractContextManager[None]:
    """Modules built inside get their parameters on the meta device (no memory); buffers stay real."""
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def safetensors_files(folder: str | os.PathLike[str]) -> list[Path]:
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    return files


class CheckpointError(ValueError):
    """A weights file that is malformed, truncated or does not fit the model."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int
    """Byte offsets in the data section, after the header."""


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of a safetensors file, checked before anything is allocated.

    Every entry must name a known dtype, a shape of non-negative integers whose bytes match its
    offsets, and the entries must tile the data section exactly, without gaps or overlaps (what
    safetensors itself demands).

    Raises:
        CheckpointError: anything else.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"{path.name} is not a safetensors file (header of {length} bytes)")
        try:
            header = json.loads(file.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path.name} has an unreadable header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has an unreadable header")
    header.pop("__metadata__", None)
    entries = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path.name}: a malformed entry")
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))  # type: ignore[arg-type]
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if (
            dtype is None
            or not isinstance(shape, list)
            or not all(isinstance(n, int) and n >= 0 for n in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(n, int) for n in offsets)
        ):
            raise CheckpointError(f"{path.name}: a malformed entry")
        begin, end = offsets
        numel = 1
        for n in shape:
            numel *= n
        if not 0 <= begin <= end or end - begin != numel * dtype.itemsize:
            raise CheckpointError(f"{path.name}: an entry's bytes do not match its shape")
        entries.append(TensorEntry(name, dtype, tuple(shape), begin, end))
    entries.sort(key=lambda e: e.begin)
    position = 0
    for entry in entries:
        if entry.begin != position:
            raise CheckpointError(f"{path.name}: tensors overlap or leave gaps")
        position = entry.end
    if position != size - 8 - length:
        raise CheckpointError(f"{path.name} is truncated or has trailing bytes")
    return entries


def iter_tensors(
    path: Path, device: torch.device | str = "cpu", wanted: Callable[[str], bool] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of a safetensors file (those ``wanted``, when given), one at a time, on ``device``
    in its stored dtype. Tensors not wanted are never read."""
    device = torch.device(device)
    entries = [entry for entry in read_header(path) if wanted is None or wanted(entry.name)]
    if device.type != "cpu":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for entry in entries:
                yield entry.name, handle.get_tensor(entry.name)
        return
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        for entry in entries:
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
            file.seek(8 + length + entry.begin)
            if tensor.numel() and file.readinto(memoryview(tensor.view(torch.uint8).reshape(-1).numpy())) != (
                entry.end - entry.begin
            ):
                raise CheckpointError(f"{path.name} is truncated")
            yield entry.name, tensor


def place(
    module: nn.Module, name: str, value: torch.Tensor, *, device: torch.device, dtype: torch.dtype | None
) -> None:
    """Put ``value`` as parameter or buffer ``name`` (dotted) of ``module``, cast and on ``device``.

    The value must have the placeholder's shape and kind (floating or not); floating tensors take
    ``dtype`` when given, buffers keep the placeholder's dtype; requires_grad is kept.

    Raises:
        CheckpointError: no such tensor, or one of another shape or kind.
    """
    *path, leaf = name.split(".")
    try:
        owner = module.get_submodule(".".join(path))
    except AttributeError:
        raise CheckpointError(f"the model has no tensor {name}") from None
    old = owner._parameters.get(leaf) if leaf in owner._parameters else owner._buffers.get(leaf)
    if old is None:
        raise CheckpointError(f"the model has no tensor {name}")
    if tuple(old.shape) != tuple(value.shape) or old.is_floating_point() != value.is_floating_point():
        raise CheckpointError(
            f"{name} is {tuple(value.shape)} {value.dtype} in the file, the model needs {tuple(old.shape)} {old.dtype}"
        )
    if leaf in owner._parameters:
        if value.is_floating_point() and dtype is not None:
            value = value.to(dtype)
        owner._parameters[leaf] = nn.Parameter(value.to(device), requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = value.to(device=device, dtype=old.dtype)


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of parameters still on the meta device (not loaded)."""
    return [name for name, parameter in module.named_parameters(remove_duplicate=False) if parameter.is_meta]


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters to ``dtype`` (buffers such as rotary tables keep their own precision)."""
    for parameter in module.parameters():
        if parameter.is_floating_point() and not parameter.is_meta and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
