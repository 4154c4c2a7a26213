"""Deep prompt tuning on a single-stream host (the prompt APT approximates; Lester et al., Li & Liang).

m' learnable tokens join the joint image-text sequence at the input of every
transformer layer (ViLT's ``attention_blocks``) and are dropped after it; the
next layer brings its own. Every token attends to them, so each layer's
attention grows from N to N + m' keys and queries: the cost APT avoids. The
attention mask grows with them (prompts are visible to every token). It is
VPT-deep's sequence mechanism on the joint layers instead of the image blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from prompts.base import check_at_least, register_method
from prompts.vpt import VisualPromptTuning


@dataclass
class DeepPromptConfig:
    tokens: int = 200  # m' per layer (the APT paper's deep prompt baseline on ViLT)
    init_std: float = 0.02
    layers: list[int] | None = None  # layer indices; None = every layer

    def __post_init__(self):
        check_at_least("deep_prompt", "tokens", self.tokens, 0)


@register_method
class DeepPrompt(VisualPromptTuning):
    method = "deep_prompt"
    Config = DeepPromptConfig
    site_kind = "attention_blocks"
    default_lr = 3e-4  # best of 1e-4 .. 3e-2 on the tiny ViLT (aquarium VQA, 150 steps; docs/results/apt.md)
