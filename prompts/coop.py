"""CoOp (Zhou et al., 2022): learned context vectors before every category phrase.

The host writes ``tokens`` slots before each phrase of its text prompt while this
module is attached and enabled; a hook on the text encoder's word embeddings puts
the learned vectors in their place, so the context lives in embedding space, as
CoOp's authors build it ([SOS] ctx_1..ctx_M class tokens [EOS]). The slots are
reserved placeholder tokens ([unused0], ...) where the tokenizer has them (BERT);
otherwise (CLIP's BPE) the host marks their positions (``Host.context_index``).
The context is shared by all classes (CoOp's unified context). Stacked CoOp
modules share the slots: the last enabled one writes them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, register_method


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
        self.register_buffer("slot_ids", torch.tensor(host.context_slot_ids(self.config.tokens) or [],
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
        index = self.host.context_index
        if index is None:  # placeholder tokens mark the slots
            slot = (ids[..., None] == self.slot_ids.to(ids.device)).float()  # (B, L, n): one-hot over the slots
        else:  # the host marked the positions
            if index.shape != ids.shape:
                raise MethodError(f"coop: the host marked context slots for tokens of shape {tuple(index.shape)}, "
                                  f"the text encoder got {tuple(ids.shape)}")
            index = index.to(ids.device)
            slot = F.one_hot(index.clamp(min=0), self.config.tokens).float() * (index >= 0)[..., None]
        is_slot = slot.sum(-1, keepdim=True) > 0
        return torch.where(is_slot, (slot @ self.context.to(slot.dtype)).to(output.dtype), output)
