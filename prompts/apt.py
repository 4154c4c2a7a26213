"""APT: Approximated Prompt Tuning (Wang et al., ICCV 2023), on every attention of a host.

A deep prompt's m tokens change each token's attention output by an amount
that depends on the token alone; APT computes that amount directly, without
putting the prompts into the sequence. Per attention, with X the features the
attention reads (ViLT: norm1(x)) and x its out-projection's output:

    K_p = P + (P W1^T) W2^T          (m, C)  rank-r keys of the prompts P (m, C)
    A = ReLU(X K_p^T)                (B, N, m)
    delta = A P                      (B, N, C)
    w = stop_grad(max_j A)           (B, N, 1)
    x' = (x + w * delta) * exp(s)

W1 (r, C) starts N(0, 1) and W2 (C, r) at zero, so K_p = P at attach; s
starts at 0, so exp(s) = 1. APT is *not* the identity at attach: delta acts
from the first step (the authors' design); with ``prompts: 0`` it is. The
attention's token count never changes, so its cost does not either.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, register_method


@dataclass
class AptConfig:
    prompts: int = 200  # m per attention (the paper: 200 on ViLT)
    rank: int = 4  # r of the key map
    layers: list[int] | None = None  # indices into the host's attention sites; None = all
    init_std: float = 0.02  # of P (the authors' N(0, 0.02))
    dropout: float = 0.0  # on A while training (the authors reuse the attention's dropout)

    def __post_init__(self):
        check_at_least("apt", "prompts", self.prompts, 0)
        check_at_least("apt", "rank", self.rank, 1)
        if not 0 <= self.dropout < 1:
            raise MethodError(f"apt: dropout must be in [0, 1), got {self.dropout!r}")


class ApproximatedPrompt(nn.Module):
    """One attention's prompts P, key map (W1, W2) and scale s."""

    def __init__(self, width: int, prompts: int, rank: int, init_std: float, dropout: float):
        super().__init__()
        self.prompts = nn.Parameter(torch.randn(prompts, width) * init_std)
        self.down = nn.Parameter(torch.randn(rank, width))  # W1
        self.up = nn.Parameter(torch.zeros(width, rank))  # W2
        self.log_scale = nn.Parameter(torch.zeros(1))  # s
        self.dropout = nn.Dropout(dropout)

    def keys(self) -> torch.Tensor:
        """K_p = P + (P W1^T) W2^T."""
        return self.prompts + (self.prompts @ self.down.t()) @ self.up.t()

    def forward(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        prompts = self.prompts.to(x.dtype)
        weights = self.dropout(torch.relu(features.to(x.dtype) @ self.keys().to(x.dtype).t()))  # A (B, N, m)
        strength = weights.max(dim=-1, keepdim=True).values.detach()  # w, no gradient through the max
        return (x + strength * (weights @ prompts)) * self.log_scale.exp().to(x.dtype)


@register_method
class ApproximatedPromptTuning(PeftModule):
    method = "apt"
    Config = AptConfig
    default_lr = 0.003  # best of 1e-3, 3e-3, 1e-2 on the tiny ViLT (aquarium VQA, 150 steps; docs/results/apt.md)

    def _sites(self, host):
        sites = host.attention_sites()
        names = list(sites)
        indices = range(len(names)) if self.config.layers is None else self.config.layers
        if any(not -len(names) <= i < len(names) for i in indices):
            raise MethodError(f"apt: layers {list(indices)} out of range; the host has {len(names)} attentions")
        return [(names[i], sites[names[i]]) for i in indices]

    def build(self, host) -> None:
        cfg = self.config
        sites = self._sites(host)
        self.site_names = [name for name, _ in sites]
        self.blocks = nn.ModuleList(ApproximatedPrompt(site.out_proj.out_features, cfg.prompts, cfg.rank,
                                                       cfg.init_std, cfg.dropout) for _, site in sites)

    def install(self, host):
        handles = []
        for block, (_, site) in zip(self.blocks, self._sites(host)):
            features: list = []  # X of the call in flight, taken by the out-projection's hook
            handles.append(site.attention.register_forward_pre_hook(self._remember(features, site.input),
                                                                    with_kwargs=True))
            handles.append(site.out_proj.register_forward_hook(self._approximate(block, features)))
        return handles

    def _active(self) -> bool:
        return self.enabled and self.config.prompts > 0

    def _remember(self, features: list, name: str):
        def hook(module, args, kwargs):
            if self._active():
                features.append(kwargs[name] if name in kwargs else args[0])
        return hook

    def _approximate(self, block: ApproximatedPrompt, features: list):
        def hook(module, args, output):
            if not features:  # inactive, or the projection called outside its attention
                return None
            return block(output, features.pop())
        return hook
