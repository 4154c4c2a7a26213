"""Tokens that methods add to a host's attention (VPT, DPT, SDPT).

Two shapes of site:
- a ``sequence`` block (ViT, BERT): tokens (B, p, C) join its input (B, N, C)
  and its last p outputs are dropped (the tokens are queries too: the next
  block's input depends on them inside this one);
- a Grounding DINO fusion attention (image-text bi-attention): image-side
  tokens become extra keys and values for the text queries, text-side ones for
  the image queries. Their query rows would be sliced off before the residual,
  so they are never computed: the cost is the extra keys' columns only.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
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


class FusionKeys(NamedTuple):
    """Tokens that a fusion attention reads as extra keys and values, never as queries: ``vision`` (image
    side, read by the text queries) and ``text`` (text side, read by the image queries), each (k, d) for
    tokens shared by the batch or (B, k, d) per image; None for none on that side."""
    vision: torch.Tensor | None = None
    text: torch.Tensor | None = None


class KeySourceHandle:
    """Removes one source of extra keys from an attention; the last removal restores its forward."""

    def __init__(self, attn: nn.Module, source):
        self.site, self._source = attn, source

    def remove(self) -> None:
        sources = self.site.__dict__.get("_key_sources", [])
        if self._source in sources:
            sources.remove(self._source)
        if not sources and "forward" in self.site.__dict__:
            del self.site.forward  # back to the class's own forward: the plain host, bit for bit


def _add_key_source(attn: nn.Module, source, forward) -> KeySourceHandle:
    """Register ``source`` on ``attn`` and route its calls through ``forward(attn, ...)`` while any is there."""
    sources = attn.__dict__.setdefault("_key_sources", [])
    sources.append(source)
    if "forward" not in attn.__dict__:
        attn.forward = functools.partial(forward, attn)
    return KeySourceHandle(attn, source)


def add_fusion_keys(attn: nn.Module, keys_for) -> KeySourceHandle:
    """Make a Grounding DINO fusion attention read extra keys: at each call ``keys_for(vision, text)`` gets
    the attention's inputs (after the layer norms) and returns FusionKeys, or None while inactive. While no
    source gives any, the attention's own forward runs; otherwise :func:`fusion_attention`."""
    return _add_key_source(attn, keys_for, _forward_with_keys)


def add_attention_keys(attn: nn.Module, keys_for) -> KeySourceHandle:
    """Make a BERT-style self-attention (``query``, ``key``, ``value``: ViLT's) read extra keys and values:
    ``keys_for(hidden_states)`` returns (p, C) or (B, p, C) tokens in the attention's input space, or None
    while inactive; they are never queries. While no source gives any, the attention's own forward runs."""
    return _add_key_source(attn, keys_for, _self_attention_forward)


def _self_attention_forward(attn, hidden_states, attention_mask=None, output_attentions=False, *args, **kwargs):
    found = [keys for source in attn._key_sources if (keys := source(hidden_states)) is not None]
    if not found:
        return type(attn).forward(attn, hidden_states, attention_mask, output_attentions, *args, **kwargs)
    return self_attention(attn, hidden_states, attention_mask, _joined(found, hidden_states), output_attentions)


def self_attention(attn, hidden, mask, extra, output_attentions=False):
    """A BERT-style self-attention's forward step for step, with ``extra`` (1 or B, p, C) tokens read as
    keys and values only (the deep prompt as the APT paper counts it). ``mask``: additive (B, 1, 1 or N, N)
    or None; the extra tokens are visible to every query."""
    batch, heads, width = hidden.shape[0], attn.num_attention_heads, attn.attention_head_size

    def split_heads(x):  # (B or 1, N, C) -> (B, heads, N, width)
        return x.unflatten(-1, (heads, width)).transpose(1, 2).expand(batch, -1, -1, -1)

    query = split_heads(attn.query(hidden))
    key = torch.cat([split_heads(attn.key(hidden)), split_heads(attn.key(extra))], 2)
    value = torch.cat([split_heads(attn.value(hidden)), split_heads(attn.value(extra))], 2)
    scores = query @ key.transpose(-1, -2) / math.sqrt(width)
    if mask is not None:
        scores = scores + F.pad(mask, (0, extra.shape[1]))  # additive: 0 = visible
    probs = attn.dropout(scores.softmax(-1))
    out = (probs @ value).transpose(1, 2).flatten(2)
    return (out, probs[..., :hidden.shape[1]]) if output_attentions else (out,)


def _forward_with_keys(attn, vision_features, text_features, vision_attention_mask=None, text_attention_mask=None):
    found = [keys for source in attn._key_sources if (keys := source(vision_features, text_features)) is not None]
    vision_keys = _joined([keys.vision for keys in found if keys.vision is not None], vision_features)
    text_keys = _joined([keys.text for keys in found if keys.text is not None], text_features)
    if vision_keys is None and text_keys is None:
        return type(attn).forward(attn, vision_features, text_features, vision_attention_mask, text_attention_mask)
    return fusion_attention(attn, vision_features, text_features, vision_attention_mask, text_attention_mask,
                            vision_keys, text_keys)


def _joined(tokens: list[torch.Tensor], features: torch.Tensor) -> torch.Tensor | None:
    """Several sources' tokens as one (1 or B, k, d) tensor in the features' dtype."""
    if not tokens:
        return None
    if all(t.dim() == 2 for t in tokens):
        return torch.cat(tokens).unsqueeze(0).to(features.dtype)  # shared by the batch: projected once
    batch = features.shape[0]
    return torch.cat([t.expand(batch, -1, -1) if t.dim() == 2 else t for t in tokens], 1).to(features.dtype)


def fusion_attention(attn, vision, text, vision_mask, text_mask, vision_keys, text_keys):
    """``GroundingDinoBiMultiHeadAttention.forward`` step for step, with extra image-side keys read by the
    text queries and extra text-side keys read by the image queries. Appending the tokens to both
    sequences and slicing their rows off the outputs gives the same result up to rounding (the softmax
    does not see the shift by the global score maximum), but computes the tokens' query rows, which no
    output uses; here they are never queries. Masks are True at padding; extra tokens are always visible.
    """
    batch, heads, width = vision.shape[0], attn.num_heads, attn.head_dim

    def split_heads(x):  # (B or 1, N, E) -> (B or 1, heads, N, width)
        return x.unflatten(-1, (heads, width)).transpose(1, 2)

    query = split_heads(attn.vision_proj(vision) * attn.scale)
    key = split_heads(attn.text_proj(text))
    vision_values, text_values = split_heads(attn.values_vision_proj(vision)), split_heads(attn.values_text_proj(text))
    scores = query @ key.transpose(-1, -2)  # (B, heads, Nv, Nt)
    image_rows, text_rows = scores, scores  # scores seen by the image queries / (transposed) the text queries
    vision_padding = vision_mask if vision_mask is not None else vision.new_zeros(vision.shape[:2], dtype=torch.bool)
    text_padding = text_mask if text_mask is not None else text.new_zeros(text.shape[:2], dtype=torch.bool)
    if text_keys is not None:
        extra_key = split_heads(attn.text_proj(text_keys))
        image_rows = torch.cat([scores, query @ extra_key.transpose(-1, -2)], -1)
        text_values = torch.cat([text_values, split_heads(attn.values_text_proj(text_keys)).expand(batch, -1, -1, -1)], 2)
        text_padding = torch.cat([text_padding, text_padding.new_zeros(batch, text_keys.shape[1])], 1)
    if vision_keys is not None:
        extra_query = split_heads(attn.vision_proj(vision_keys) * attn.scale)
        text_rows = torch.cat([scores, (extra_query @ key.transpose(-1, -2)).expand(batch, -1, -1, -1)], 2)
        vision_values = torch.cat([vision_values,
                                   split_heads(attn.values_vision_proj(vision_keys)).expand(batch, -1, -1, -1)], 2)
        vision_padding = torch.cat([vision_padding, vision_padding.new_zeros(batch, vision_keys.shape[1])], 1)
    # as the host: shift by the global maximum and clamp (for half precision), then the text side by its own
    # (in place on the fresh tensors each subtraction makes: these are the attention's largest)
    top = torch.maximum(image_rows.max(), text_rows.max())
    text_rows = (text_rows - top).clamp_(min=-50000, max=50000).transpose(-1, -2)
    text_rows = (text_rows - text_rows.max(-1, keepdim=True)[0]).clamp_(min=-50000, max=50000)
    text_weights = text_rows.masked_fill_(vision_padding[:, None, None, :], float("-inf")).softmax(-1)
    image_rows = (image_rows - top).clamp_(min=-50000, max=50000)
    image_weights = image_rows.masked_fill_(text_padding[:, None, None, :], float("-inf")).softmax(-1)
    image_out = F.dropout(image_weights, p=attn.dropout, training=attn.training) @ text_values
    text_out = F.dropout(text_weights, p=attn.dropout, training=attn.training) @ vision_values
    image_out = attn.out_vision_proj(image_out.transpose(1, 2).flatten(2))
    text_out = attn.out_text_proj(text_out.transpose(1, 2).flatten(2))
    n_image, n_text = vision.shape[1], text.shape[1]
    return ((image_out, image_weights[..., :n_text].flatten(0, 1)),
            (text_out, text_weights[..., :n_image].flatten(0, 1)))
