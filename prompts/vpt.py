"""VPT-deep (Jia et al., 2022): p learnable tokens per image-encoder block, dropped after it.

Two block layouts, as the host reports them (``host.block_layout``):
- ``sequence`` (ViT, CLIP): the p tokens are appended to the block's input
  sequence (B, N, C), so every token attends to them, and the block's last p
  output tokens are dropped; the next block brings its own.
- ``windows`` (Swin): inside the block's window attention the tokens join every
  window as extra tokens (layer-normed like the window's own tokens); their
  outputs are dropped after the attention. The relative position bias and the
  shifted-window mask grow by p zero rows/columns: prompts have no position
  and are visible from every window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, register_method
from prompts.tokens import append_to_sequence, drop_last


@dataclass
class VptConfig:
    tokens: int = 10  # p, per block
    init_std: float = 0.02
    layers: list[int] | None = None  # image-block indices that get prompts; None = every block (VPT-deep)

    def __post_init__(self):
        check_at_least("vpt", "tokens", self.tokens, 0)


def chosen_blocks(method: str, blocks: dict[str, nn.Module], layers: list[int] | None) -> list[str]:
    """Names of the blocks at ``layers`` (all when None), refusing indices the host does not have."""
    names = list(blocks)
    indices = range(len(names)) if layers is None else list(layers)
    if any(not -len(names) <= i < len(names) for i in indices):
        raise MethodError(f"{method}: layers {list(indices)} out of range; the host has {len(names)} blocks there")
    return [names[i] for i in indices]


def block_width(block: nn.Module) -> int:
    """Token width of an image-encoder block, read off its first layer norm."""
    norm = next(m for m in block.modules() if isinstance(m, nn.LayerNorm))
    return norm.normalized_shape[0]


@register_method
class VisualPromptTuning(PeftModule):
    method = "vpt"
    Config = VptConfig
    default_lr = 0.01
    site_kind: ClassVar[str] = "image_blocks"  # the blocks whose sequence gets the tokens

    def required_sites(self):
        return (self.site_kind,)

    def build(self, host) -> None:
        blocks = host.sites(self.site_kind)
        self.site_names = chosen_blocks(self.method, blocks, self.config.layers)
        self.prompts = nn.ParameterList(
            nn.Parameter(torch.randn(self.config.tokens, block_width(blocks[name])) * self.config.init_std)
            for name in self.site_names)

    def install(self, host):
        blocks = host.sites(self.site_kind)
        handles = []
        for prompt, name in zip(self.prompts, self.site_names):
            block = blocks[name]
            if host.block_layout(self.site_kind) == "windows":
                attention = block.attention
                handles.append(attention.register_forward_pre_hook(self._extend_windows(prompt, block.layernorm_before)))
                handles.append(attention.relative_position_bias.register_forward_hook(self._pad_bias))
                handles.append(attention.register_forward_hook(self._drop))
            else:
                handles += append_to_sequence(block, self._expand(prompt), self._active)
        return handles

    def _active(self) -> bool:
        return self.enabled and self.config.tokens > 0

    @staticmethod
    def _expand(prompt: nn.Parameter):
        return lambda x: prompt.expand(x.shape[0], -1, -1)

    def _extend_windows(self, prompt: nn.Parameter, norm: nn.LayerNorm):
        def hook(attention, args):
            if not self._active():
                return None
            windows, mask = args[0], args[1] if len(args) > 1 else None  # (B*nW, N, C), (nW, N, N) or None
            p = self.config.tokens
            tokens = norm(prompt).to(windows.dtype).expand(windows.shape[0], p, -1)
            if mask is not None:
                mask = F.pad(mask, (0, p, 0, p))
            return torch.cat([windows, tokens], 1), mask
        return hook

    def _pad_bias(self, bias_module, args, bias):
        if not self._active():
            return None
        p = self.config.tokens
        return F.pad(bias, (0, p, 0, p))  # (1, heads, N+p, N+p)

    def _drop(self, module, args, output):
        return drop_last(output, self.config.tokens) if self._active() else None
