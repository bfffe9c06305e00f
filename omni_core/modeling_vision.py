"""Vision encoder: the NaViT-style ViT of Qwen2-VL, reused from transformers.

Images of any size (sides multiples of 28) and frame stacks (3D series, video) are cut into 14x14
patches (2 frames per temporal patch), packed into one batch with 2D rotary positions, encoded, and
merged 2x2 by the tower's MLP merger straight to the LLM's width: one LLM token per 28x28 area.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from omni_core.configuration_omni import VisionConfig


def hf_vision_config(config: VisionConfig, llm_hidden_size: int) -> Qwen2VLVisionConfig:
    return Qwen2VLVisionConfig(
        depth=config.depth,
        embed_dim=config.embed_dim,
        hidden_size=llm_hidden_size,
        hidden_act=config.hidden_act,
        mlp_ratio=int(config.mlp_ratio),
        num_heads=config.num_heads,
        in_channels=config.in_channels,
        patch_size=config.patch_size,
        spatial_merge_size=config.spatial_merge_size,
        temporal_patch_size=config.temporal_patch_size,
    )


def patchify(frames: torch.Tensor, config: VisionConfig) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cut normalised frames into the patch rows the vision tower takes.

    Args:
        frames: (T, C, H, W), H and W multiples of ``patch_size * spatial_merge_size``; T is padded to
            a multiple of the temporal patch by repeating the last frame (a 2D image is T=1).

    Returns:
        patches (grid_t * grid_h * grid_w, C * tps * ps * ps) in merge-window order, and (grid_t,
        grid_h, grid_w).
    """
    t, c, h, w = frames.shape
    ps, tps, m = config.patch_size, config.temporal_patch_size, config.spatial_merge_size
    if h % (ps * m) or w % (ps * m):
        raise ValueError(f"image sides must be multiples of {ps * m}; resize it first (NativeResolutionResize)")
    if t % tps:
        frames = torch.cat([frames, frames[-1:].expand(tps - t % tps, c, h, w)])
    gt, gh, gw = frames.shape[0] // tps, h // ps, w // ps
    patches = frames.reshape(gt, tps, c, gh // m, m, ps, gw // m, m, ps)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, c, tps, ps, ps)
    return patches.reshape(gt * gh * gw, c * tps * ps * ps), (gt, gh, gw)


class OmniVisionEncoder(nn.Module):
    """Packed images/frame stacks -> LLM-width tokens, one per merged 2x2 patch window."""

    def __init__(self, config: VisionConfig, llm_hidden_size: int) -> None:
        super().__init__()
        self.config = config
        self.tower = Qwen2VisionTransformerPretrainedModel._from_config(hf_vision_config(config, llm_hidden_size))

    def tokens_per_item(self, grid_thw: torch.Tensor) -> list[int]:
        merge = self.config.spatial_merge_size**2
        return [int(n) // merge for n in grid_thw.prod(-1)]

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Encode packed patches.

        Args:
            patches: (sum of patches, C * tps * ps * ps), items concatenated.
            grid_thw: (items, 3) the (t, h, w) patch grid of each item.

        Returns:
            (sum of merged tokens, llm_hidden_size).
        """
        output = self.tower(patches.to(self.tower.dtype), grid_thw=grid_thw)
        return output.pooler_output if hasattr(output, "pooler_output") else output
