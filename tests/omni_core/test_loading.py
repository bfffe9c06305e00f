"""Loading at size: built on the meta device, straight into dtype and device, one copy at the peak."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omni_core import OmniConfig, OmniForConditionalGeneration


def test_from_pretrained_takes_a_str_and_loads_into_the_dtype_asked_for(
    model: OmniForConditionalGeneration, tmp_path: Path
) -> None:
    model.save_pretrained(str(tmp_path / "saved"))  # str and Path alike, as transformers' loaders
    loaded = OmniForConditionalGeneration.from_pretrained(str(tmp_path / "saved"), dtype=torch.bfloat16)
    floating = [p for p in loaded.parameters() if p.is_floating_point()]
    assert floating and all(p.dtype == torch.bfloat16 for p in floating)
    assert not any(p.is_meta for p in loaded.parameters()) and not any(b.is_meta for b in loaded.buffers())
    original = dict(model.named_parameters())
    for name, parameter in loaded.named_parameters():
        assert torch.equal(parameter, original[name].to(torch.bfloat16)), name
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, p in loaded.named_parameters() if not p.requires_grad}  # e.g. Whisper positions
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(loaded.llm(input_ids=ids).logits.float(), model.eval().llm(input_ids=ids).logits, atol=0.1)


def test_weights_that_do_not_match_the_config_are_refused(model: OmniForConditionalGeneration, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    missing = dict(state)
    del missing["audio_head.from_llm.weight"]
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        OmniForConditionalGeneration.from_pretrained(tmp_path)
    save_file(state | {"retina.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected retina\.weight"):
        OmniForConditionalGeneration.from_pretrained(tmp_path)
    save_file(state, str(tmp_path / "model.safetensors"))
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        OmniForConditionalGeneration.from_pretrained(tmp_path)


PEAK_SCRIPT = textwrap.dedent(
    """
    import os, resource, sys
    import torch
    from omni_core.modeling_omni import OmniForConditionalGeneration
    import accelerate, safetensors  # imported by the loader: part of the baseline, not of the load

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    baseline = peak()
    model = OmniForConditionalGeneration.from_pretrained(sys.argv[1])
    size = os.path.getsize(os.path.join(sys.argv[1], "model.safetensors"))
    print((peak() - baseline) / size)
    """
)


def test_loading_the_demo_model_holds_about_one_copy_of_its_weights(tmp_path: Path) -> None:
    """Peak resident memory of loading a saved demo-cpu model, in a fresh interpreter."""
    torch.manual_seed(0)
    OmniForConditionalGeneration(OmniConfig.from_preset("demo-cpu")).save_pretrained(tmp_path)
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300, check=True
    )
    ratio = float(run.stdout.strip().splitlines()[-1])
    assert ratio < 1.3, f"loading took {ratio:.2f}x the weights' size"


def _write_safetensors(path: Path, header: dict, data: bytes) -> None:  # type: ignore[type-arg]
    import json
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"w": {"dtype": "F32", "shape": [1 << 34], "data_offsets": [0, 16]}}, bytes(16), "do not match its shape"),
        ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, bytes(16), "malformed"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, bytes(16), "do not match|malformed"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
            "overlap",
        ),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(9), "trailing"),
        ({"w": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16), "malformed"),
        ([1, 2, 3], b"", "unreadable"),
    ],
)
def test_malformed_weight_files_are_refused_before_anything_is_allocated(
    tmp_path: Path, header: object, data: bytes, message: str
) -> None:
    from omni_core.loading import CheckpointError, read_header

    _write_safetensors(tmp_path / "model.safetensors", header, data)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=message):
        read_header(tmp_path / "model.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(CheckpointError, match="too short"):
        read_header(tmp_path / "short.safetensors")


def test_tensors_of_the_wrong_kind_or_mixed_dtypes_are_refused(
    model: OmniForConditionalGeneration, tmp_path: Path
) -> None:
    from omni_core.loading import CheckpointError

    model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    vocoder_mean = next(name for name in state if name.endswith("vocoder.mean"))
    save_file(state | {vocoder_mean: torch.zeros(3)}, str(tmp_path / "model.safetensors"))  # a buffer, misshapen
    with pytest.raises(CheckpointError, match=r"vocoder\.mean"):
        OmniForConditionalGeneration.from_pretrained(tmp_path)
    save_file(
        state | {"audio_head.from_llm.bias": state["audio_head.from_llm.bias"].long()},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(CheckpointError, match=r"audio_head\.from_llm\.bias"):
        OmniForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32)
    mixed = state | {"audio_head.from_llm.bias": state["audio_head.from_llm.bias"].double()}
    save_file(mixed, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="pass dtype="):
        OmniForConditionalGeneration.from_pretrained(tmp_path)
    assert (
        OmniForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float32).audio_head.from_llm.bias.dtype
        == torch.float32
    )
