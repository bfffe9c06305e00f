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
