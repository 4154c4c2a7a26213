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

import torch
import torch.nn.functional as F
from torch import nn

from prompts.base import PeftModule, check_at_least, register_method


@dataclass
class VptConfig:
    tokens: int = 10  # p, per block
    init_std: float = 0.02

    def __post_init__(self):
        check_at_least("vpt", "tokens", self.tokens, 0)


def block_width(block: nn.Module) -> int:
    """Token width of an image-encoder block, read off its first layer norm."""
    norm = next(m for m in block.modules() if isinstance(m, nn.LayerNorm))
    return norm.normalized_shape[0]


@register_method
class VisualPromptTuning(PeftModule):
    method = "vpt"
    Config = VptConfig
    default_lr = 0.01

    def required_sites(self):
        return ("image_blocks",)

    def build(self, host) -> None:
        blocks = host.sites("image_blocks")
        self.site_names = list(blocks)
        self.prompts = nn.ParameterList(
            nn.Parameter(torch.randn(self.config.tokens, block_width(block)) * self.config.init_std)
            for block in blocks.values())

    def install(self, host):
        blocks = host.sites("image_blocks")
        handles = []
        for prompt, name in zip(self.prompts, self.site_names):
            block = blocks[name]
            if host.block_layout("image_blocks") == "windows":
                attention = block.attention
                handles.append(attention.register_forward_pre_hook(self._extend_windows(prompt, block.layernorm_before)))
                handles.append(attention.relative_position_bias.register_forward_hook(self._pad_bias))
                handles.append(attention.register_forward_hook(self._drop))
            else:
                handles.append(block.register_forward_pre_hook(self._extend_sequence(prompt), with_kwargs=True))
                handles.append(block.register_forward_hook(self._drop))
        return handles

    def _active(self) -> bool:
        return self.enabled and self.config.tokens > 0

    def _extend_sequence(self, prompt: nn.Parameter):
        def hook(block, args, kwargs):
            if not self._active():
                return None
            tokens = args[0]  # (B, N, C)
            extended = torch.cat([tokens, prompt.to(tokens.dtype).expand(tokens.shape[0], -1, -1)], 1)
            return (extended, *args[1:]), kwargs
        return hook

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
        """Drop the p prompt outputs: a tensor (B, N+p, C), or a tuple with it first."""
        if not self._active():
            return None
        p = self.config.tokens
        if isinstance(output, torch.Tensor):
            return output[:, :-p]
        attn_output, weights = output[0], output[1] if len(output) > 1 else None
        return attn_output[:, :-p], (weights[..., :-p, :-p] if weights is not None else None)
