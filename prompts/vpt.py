"""VPT-deep on a Swin image backbone (Jia et al., 2022), as the seeds' VPT baseline.

Each Swin block gets p learnable tokens. Inside the block's window attention
they join every window as extra tokens (layer-normed like the window's own
tokens), so each window attends to them; their outputs are dropped after the
attention, and the next block brings its own. The relative position bias and
the shifted-window mask grow by p zero rows/columns: prompts have no position
and are visible from every window.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prompts.base import MethodError, PeftModule, register_method


@dataclass
class VptConfig:
    tokens: int = 10  # p, per block
    init_std: float = 0.02


@register_method
class VisualPromptTuning(PeftModule):
    method = "vpt"
    Config = VptConfig
    default_lr = 0.01

    def build(self, host) -> None:
        if self.config.tokens < 0:
            raise MethodError(f"vpt: tokens must be >= 0, got {self.config.tokens}")
        blocks = host.sites("image_blocks")
        self.site_names = list(blocks)
        self.prompts = nn.ParameterList(
            nn.Parameter(torch.randn(self.config.tokens, block.layernorm_before.normalized_shape[0])
                         * self.config.init_std) for block in blocks.values())

    def install(self, host):
        handles = []
        blocks = host.sites("image_blocks")
        for prompt, name in zip(self.prompts, self.site_names):
            block = blocks[name]
            attention = block.attention
            handles.append(attention.register_forward_pre_hook(self._extend(prompt, block.layernorm_before)))
            handles.append(attention.relative_position_bias.register_forward_hook(self._pad_bias))
            handles.append(attention.register_forward_hook(self._drop))
        return handles

    def _active(self) -> bool:
        return self.enabled and self.config.tokens > 0

    def _extend(self, prompt: nn.Parameter, norm: nn.LayerNorm):
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

    def _drop(self, attention, args, output):
        if not self._active():
            return None
        attn_output, weights = output
        p = self.config.tokens
        return attn_output[:, :-p], (weights[..., :-p, :-p] if weights is not None else None)
