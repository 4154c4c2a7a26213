"""CoOp (Zhou et al., 2022): learned context vectors before every category phrase.

The host writes ``tokens`` reserved placeholder tokens ([unused0], ...) before
each phrase of its text prompt while this module is attached and enabled; a
hook on the text encoder's word embeddings puts the learned vectors in their
place. The context is shared by all classes (CoOp's unified context). Stacked
CoOp modules share the slots: the last enabled one writes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prompts.base import PeftModule, check_at_least, register_method


@dataclass
class CoopConfig:
    tokens: int = 4
    init_std: float = 0.02

    def __post_init__(self):
        check_at_least("coop", "tokens", self.tokens, 0)


@register_method
class Coop(PeftModule):
    method = "coop"
    Config = CoopConfig
    default_lr = 0.01

    def required_sites(self):
        return ("text_embeddings",)

    def build(self, host) -> None:
        (embeddings,) = host.sites("text_embeddings").values()
        self.context = nn.Parameter(torch.randn(self.config.tokens, embeddings.embedding_dim) * self.config.init_std)
        self.register_buffer("slot_ids", torch.tensor(host.context_token_ids(self.config.tokens),
                                                      dtype=torch.long), persistent=False)

    def install(self, host):
        host.text_context.append(self)
        (embeddings,) = host.sites("text_embeddings").values()
        return [embeddings.register_forward_hook(self._fill)]

    def uninstall(self) -> None:
        self.host.text_context.remove(self)

    def _fill(self, module, args, output):
        if not self.enabled or self.config.tokens == 0:
            return None
        ids = args[0]  # (B, L)
        slot = (ids[..., None] == self.slot_ids.to(ids.device)).float()  # (B, L, n): one-hot over context slots
        is_slot = slot.sum(-1, keepdim=True) > 0
        return torch.where(is_slot, (slot @ self.context.to(slot.dtype)).to(output.dtype), output)
