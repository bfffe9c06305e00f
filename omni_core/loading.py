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
from collections.abc import Iterator
from contextlib import AbstractContextManager
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


def read_header(path: Path) -> dict[str, dict[str, object]]:
    """The safetensors header: tensor name -> dtype, shape, data_offsets (metadata dropped)."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path.name} is not a safetensors file (header of {length} bytes)")
        header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return header


def iter_tensors(path: Path, device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor of a safetensors file, one at a time, on ``device`` in its stored dtype."""
    device = torch.device(device)
    if device.type != "cpu":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                yield name, handle.get_tensor(name)
        return
    header = read_header(path)
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        start = 8 + length
        for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):  # type: ignore[index]
            dtype = SAFETENSORS_DTYPES.get(str(entry["dtype"]))
            if dtype is None:
                raise ValueError(f"{path.name}: tensor dtype {entry['dtype']} is not supported")
            begin, end = entry["data_offsets"]  # type: ignore[misc]
            tensor = torch.empty(tuple(entry["shape"]), dtype=dtype)  # type: ignore[arg-type]
            if end - begin != tensor.numel() * tensor.element_size():
                raise ValueError(f"{path.name}: tensor {name} has the wrong number of bytes")
            file.seek(start + begin)
            if tensor.numel():
                read = file.readinto(memoryview(tensor.view(torch.uint8).reshape(-1).numpy()))
                if read != end - begin:
                    raise ValueError(f"{path.name} is truncated (tensor {name})")
            yield name, tensor


def place(
    module: nn.Module, name: str, value: torch.Tensor, *, device: torch.device, dtype: torch.dtype | None
) -> None:
    """Put ``value`` as parameter or buffer ``name`` (dotted) of ``module``, cast and on ``device``.

    Floating tensors take ``dtype`` when given; requires_grad is kept from the placeholder.
    """
    *path, leaf = name.split(".")
    owner = module
    for step in path:
        owner = getattr(owner, step)
    if value.is_floating_point() and dtype is not None:
        value = value.to(dtype)
    value = value.to(device)
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        if old is not None and tuple(old.shape) != tuple(value.shape):
            raise ValueError(f"{name} is {tuple(value.shape)} in the file, the model needs {tuple(old.shape)}")
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad if old is not None else True)
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        raise KeyError(name)


def meta_tensors(module: nn.Module) -> list[str]:
    """Names of parameters still on the meta device (not loaded)."""
    return [name for name, parameter in module.named_parameters(remove_duplicate=False) if parameter.is_meta]


def cast_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters to ``dtype`` (buffers such as rotary tables keep their own precision)."""
    for parameter in module.parameters():
        if parameter.is_floating_point() and not parameter.is_meta and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
