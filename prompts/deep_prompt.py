"""Deep prompt tuning on a single-stream host (the prompt APT approximates; Lester et al., Li & Liang).

m' learnable tokens join the joint image-text sequence at the input of every
transformer layer (ViLT's ``attention_blocks``) and are dropped after it; the
next layer brings its own. Every token attends to them, so each layer's
attention grows from N to N + m' keys and queries: the cost APT avoids. The
attention mask grows with them (prompts are visible to every token). It is
VPT-deep's sequence mechanism on the joint layers instead of the image blocks.

``keys_values_only: true`` is the deep prompt as the APT paper counts it (and its
authors' code runs it): each layer's prompts, normalised by the layer's first norm
as they would be in the sequence, are extra keys and values of the layer's
self-attention, never queries, and never pass the out-projection or the FFN
(its own attention forward, prompts.tokens.self_attention). The real tokens'
outputs are the same either way (up to rounding); the cost is not.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prompts.base import MethodError, check_at_least, register_method
from prompts.tokens import add_attention_keys
from prompts.vpt import VisualPromptTuning


@dataclass
class DeepPromptConfig:
    tokens: int = 200  # m' per layer (the APT paper's deep prompt baseline on ViLT)
    init_std: float = 0.02
    layers: list[int] | None = None  # layer indices; None = every layer
    keys_values_only: bool = False  # prompts as the attention's extra keys and values only (the APT paper's)

    def __post_init__(self):
        check_at_least("deep_prompt", "tokens", self.tokens, 0)


@register_method
class DeepPrompt(VisualPromptTuning):
    method = "deep_prompt"
    Config = DeepPromptConfig
    site_kind = "attention_blocks"
    default_lr = 3e-4  # best of 1e-4 .. 3e-2 on the tiny ViLT (aquarium VQA, 150 steps; docs/results/apt.md)

    def install(self, host):
        if not self.config.keys_values_only:
            return super().install(host)
        blocks = host.sites(self.site_kind)
        return [add_attention_keys(self_attention(blocks[name]), self._keys(prompt, first_norm(blocks[name])))
                for prompt, name in zip(self.prompts, self.site_names)]

    def _keys(self, prompt: nn.Parameter, norm: nn.LayerNorm):
        return lambda hidden: norm(prompt) if self._active() else None


def self_attention(block: nn.Module) -> nn.Module:
    """The block's BERT-style self-attention (the module with query, key and value projections)."""
    found = [m for m in block.modules() if all(isinstance(getattr(m, a, None), nn.Linear) for a in
                                                ("query", "key", "value"))]
    if len(found) != 1:
        raise MethodError(f"deep_prompt: keys_values_only needs one self-attention with query, key and value "
                          f"projections per block; {type(block).__name__} has {len(found)}")
    return found[0]


def first_norm(block: nn.Module) -> nn.LayerNorm:
    """The norm a token entering the block meets first (ViLT: layernorm_before)."""
    return next(m for m in block.modules() if isinstance(m, nn.LayerNorm))
