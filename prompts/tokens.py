"""Hooks that add tokens to a host's attention and take them out after it (VPT, DPT, SDPT).

Two shapes of site:
- a ``sequence`` block (ViT, BERT): tokens (B, p, C) join its input (B, N, C)
  and its last p outputs are dropped;
- a Grounding DINO fusion attention (image-text bi-attention): image-side and
  text-side tokens join the two feature sequences after their layer norms, the
  padding masks grow (image-side ones always visible; text-side ones visible or
  hidden from the image queries), and their output rows are sliced off both
  results before the residual.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def append_to_sequence(block: nn.Module, tokens_for, active) -> list[RemovableHandle]:
    """Hooks on a ``sequence`` block: ``tokens_for(x)`` (B, p, C) joins its input x (B, N, C) and the
    block's last p outputs are dropped, so the next block sees N tokens again. A (B, 1, N, N) attention
    mask passed to the block (ViLT: second argument) grows with them; the tokens are visible to all.

    ``active()`` is read at each call; calls while inactive (a nested forward) pass through untouched.
    """
    appended: list[int] = []  # a stack: one entry per call in flight, 0 for inactive calls

    def extend(module, args, kwargs):
        tokens = tokens_for(args[0]) if active() else None
        appended.append(0 if tokens is None else tokens.shape[1])
        if tokens is None:
            return None
        p, rest = tokens.shape[1], list(args[1:])
        if rest and _is_pair_mask(rest[0]):
            rest[0] = grow_mask(rest[0], p)
        if _is_pair_mask(kwargs.get("attention_mask")):
            kwargs["attention_mask"] = grow_mask(kwargs["attention_mask"], p)
        return (torch.cat([args[0], tokens.to(args[0].dtype)], 1), *rest), kwargs

    def drop(module, args, output):
        p = appended.pop()
        return drop_last(output, p) if p else None

    return [block.register_forward_pre_hook(extend, with_kwargs=True), block.register_forward_hook(drop)]


def _is_pair_mask(mask) -> bool:
    return torch.is_tensor(mask) and mask.dim() == 4


def grow_mask(mask: torch.Tensor, p: int) -> torch.Tensor:
    """A (B, 1, Nq, Nk) attention mask, additive (0 = visible) or boolean (True = visible), with p more
    query rows and key columns, all visible (the rows' outputs are dropped anyway)."""
    visible = True if mask.dtype == torch.bool else 0.0
    b, h, nq, nk = mask.shape
    mask = torch.cat([mask, mask.new_full((b, h, nq, p), visible)], 3)
    return torch.cat([mask, mask.new_full((b, h, p, nk + p), visible)], 2)


def drop_last(output, p: int):
    """The block output without its last p tokens: a tensor (B, N+p, C), or a tuple with it first
    (and attention weights second, cut to N x N)."""
    if isinstance(output, torch.Tensor):
        return output[:, :-p]
    hidden, weights = output[0], output[1] if len(output) > 1 else None
    return hidden[:, :-p], (weights[..., :-p, :-p] if weights is not None else None)


def extend_fusion(args, kwargs, vision_tokens: torch.Tensor | None, text_tokens: torch.Tensor | None,
                  hide_text: bool = False):
    """(args, kwargs) of a fusion attention call with image-side tokens (B, kv, dv) and text-side tokens
    (B, kt, dt) appended (None: none on that side). Masks are True at padding: the image-side tokens
    are visible; the text-side ones are hidden from the image queries when ``hide_text``."""
    vision, text = args  # GroundingDinoFusionLayer passes both feature tensors positionally
    batch = vision.shape[0]
    v_mask, t_mask = kwargs.get("vision_attention_mask"), kwargs.get("text_attention_mask")
    if v_mask is None:
        v_mask = torch.zeros(batch, vision.shape[1], dtype=torch.bool, device=vision.device)
    if t_mask is None:
        t_mask = torch.zeros(batch, text.shape[1], dtype=torch.bool, device=text.device)
    if vision_tokens is not None:
        vision = torch.cat([vision, vision_tokens.to(vision.dtype)], 1)
        v_mask = torch.cat([v_mask, v_mask.new_zeros(batch, vision_tokens.shape[1])], 1)
    if text_tokens is not None:
        text = torch.cat([text, text_tokens.to(text.dtype)], 1)
        t_mask = torch.cat([t_mask, t_mask.new_full((batch, text_tokens.shape[1]), hide_text)], 1)
    kwargs["vision_attention_mask"], kwargs["text_attention_mask"] = v_mask, t_mask
    return (vision, text), kwargs


def slice_fusion(output, vision_extra: int, text_extra: int):
    """A fusion attention's ((vision, weights), (text, weights)) without the rows and columns of appended
    tokens (weights: (B * heads, image tokens, text tokens) and its transpose)."""
    (v_out, v_weights), (t_out, t_weights) = output
    v_end, t_end = v_out.shape[1] - vision_extra, t_out.shape[1] - text_extra
    return (v_out[:, :v_end], v_weights[:, :v_end, :t_end]), (t_out[:, :t_end], t_weights[:, :t_end, :v_end])
