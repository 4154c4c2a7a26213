"""SDPT: Synchronous Dual Prompt Tuning (Zhou et al., ECCV 2024).

In every configured fusion layer l, one learnable matrix P_l of k prototype
tokens lives in the fusion space (width E, the output of ``vision_proj``).
Training-free inverse projections map it back to both modalities through the
pseudo-inverses of the frozen query/key projections, bias removed first:

    P_v = (P_l - b_v) @ pinv(W_v^T)    (k, d)  image side
    P_t = (P_l - b_t) @ pinv(W_t^T)    (k, d)  text side

so that ``vision_proj(P_v)`` is the least-squares reconstruction of P_l (and
likewise for text). In the fusion attention, after its layer norms, P_v is
appended to the image tokens and P_t to the text tokens, the padding masks
grow by k, the unchanged attention runs, and the k extra rows are sliced off
both outputs before the residual. Nothing is carried between layers.

Computed at its cost floor: the prototypes' rows are never computed, only
their columns (``prompts.tokens.fusion_attention``): the image-side ones as
keys for the text queries, the text-side ones for the image queries.

Mask modes: ``sync`` (the paper: image queries see the text-side prototypes)
and ``official`` (the authors' code masks the text-side prototypes, so only
the image-side ones act, through the text queries; masked keys are skipped).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, check_choice, register_method
from prompts.tokens import FusionKeys, add_fusion_keys


@dataclass
class SdptConfig:
    k: int = 10  # prototype tokens per layer
    layers: list[int] | None = None  # fusion layer indices; None = all
    init: str = "uniform"  # uniform(-1, 1) as the authors; or "normal" (std 0.02)
    text_prompt_mask: str = "sync"  # or "official"

    def __post_init__(self):
        check_at_least("sdpt", "k", self.k, 0)
        check_choice("sdpt", "init", self.init, ("uniform", "normal"))
        check_choice("sdpt", "text_prompt_mask", self.text_prompt_mask, ("sync", "official"))


def inverse_projection(linear: nn.Linear) -> torch.Tensor:
    """pinv(W^T) in float32: maps fusion-space rows (minus the bias) back to the input space."""
    return torch.linalg.pinv(linear.weight.detach().float().t())  # (E, d)


@register_method
class SdptPrompts(PeftModule):
    method = "sdpt"
    Config = SdptConfig
    default_lr = 0.3  # on the tiny host the best for a new world of 0.03, 0.1, 0.3 and 1.0 (docs/results/compat.md)

    def required_sites(self):
        return ("fusion",)

    def build(self, host) -> None:
        cfg = self.config
        sites = list(host.sites("fusion").items())
        indices = list(range(len(sites))) if cfg.layers is None else list(cfg.layers)
        if any(not 0 <= i < len(sites) for i in indices):
            raise MethodError(f"sdpt: layers {indices} out of range; the host has {len(sites)} fusion layers")
        self.site_names = [sites[i][0] for i in indices]
        width = sites[0][1].vision_proj.out_features  # E, the fusion space
        self.prototypes = nn.ParameterList()
        for _ in self.site_names:
            p = torch.empty(cfg.k, width)
            nn.init.uniform_(p, -1.0, 1.0) if cfg.init == "uniform" else nn.init.normal_(p, std=0.02)
            self.prototypes.append(nn.Parameter(p))
        # Frozen projections -> pseudo-inverses computed once (not saved: derived from the host).
        fusion = dict(sites)
        for i, name in enumerate(self.site_names):
            attn = fusion[name]
            self.register_buffer(f"pinv_v{i}", inverse_projection(attn.vision_proj), persistent=False)
            self.register_buffer(f"pinv_t{i}", inverse_projection(attn.text_proj), persistent=False)

    def projected(self, i: int, attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(P_v, P_t) of layer i: the prototypes mapped back to image and text space."""
        p = self.prototypes[i].float()
        p_v = (p - attn.vision_proj.bias.float()) @ getattr(self, f"pinv_v{i}")
        p_t = (p - attn.text_proj.bias.float()) @ getattr(self, f"pinv_t{i}")
        return p_v, p_t

    def install(self, host):
        fusion = host.sites("fusion")
        return [add_fusion_keys(fusion[name], self._keys(i, fusion[name])) for i, name in enumerate(self.site_names)]

    def _keys(self, i: int, attn: nn.Module):
        def keys_for(vision, text):
            if not (self.enabled and self.config.k > 0):
                return None
            p_v, p_t = self.projected(i, attn)
            # text-side prototypes hidden from the image queries ('official') act nowhere: left out
            return FusionKeys(vision=p_v, text=None if self.config.text_prompt_mask == "official" else p_t)

        return keys_for
