"""Frozen-trunk feature cache: an image trunk's outputs per image, a text trunk's per prompt.

The host names its trunks (``host.trunks()``: Grounding DINO's Swin backbone
and BERT, a dual encoder's two towers). While a module trains whose every site
lies after a trunk (SDPT, the linear probe, fusion/decoder adapters for both
trunks; CoOp and text-side adapters for the image trunk only), that trunk is a
fixed function of its input: the
first visit of an image (or a prompt) computes it, later visits reuse the
result. Keys are the inputs' bytes, so a changed image (augmentation) simply
misses. Such a frozen trunk runs in eval mode whether cached or not (a
frozen feature extractor gets no dropout), so losses are identical with and
without the cache. Stored on the trunk's device, up to ``max_mb``; past it,
new entries are computed but not kept.
"""
from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


def _key(*tensors: torch.Tensor) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is not None:
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    return digest.digest()


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


class _Trunk:
    """One frozen trunk whose forward is wrapped: eval mode always, results cached when ``store``."""

    def __init__(self, module: nn.Module, store: bool, budget: list[int]):
        self.module, self.store, self.budget = module, store, budget
        self.entries: dict = {}
        self.hits = self.misses = 0

    def install(self) -> None:
        self.module.forward = self._forward  # instance attribute: the state dict is untouched

    def remove(self) -> None:
        del self.module.forward

    def keep(self, key, item) -> None:
        """Cache ``item`` under ``key`` while the shared memory budget allows."""
        size = _nbytes(item)
        if self.budget[0] >= size:
            self.budget[0] -= size
            self.entries[key] = item

    def compute(self, *args, **kwargs):
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                return type(self.module).forward(self.module, *args, **kwargs)
        finally:
            self.module.train(was_training)


def _item(value, i: int):
    """Item ``i`` of a batch-first output: tensors, and lists, tuples and dicts (ModelOutput) of them."""
    if isinstance(value, torch.Tensor):
        return value[i].clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_item(v, i) for v in value)
    if isinstance(value, dict):
        return type(value)(**{k: _item(v, i) for k, v in value.items()})
    return value


def _stack(items: list):
    """Inverse of ``_item``: one batch from per-item entries, in the same container types."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, (list, tuple)):
        return type(first)(_stack([it[j] for it in items]) for j in range(len(first)))
    if isinstance(first, dict):
        return type(first)(**{k: _stack([it[k] for it in items]) for k in first})
    return first


def _fresh(value):
    """A new container over the same tensors: callers that set attributes on a returned
    ModelOutput (transformers' get_*_features) must not change the cached one."""
    if isinstance(value, dict):
        return type(value)(**value)
    return value


class _PerItemTrunk(_Trunk):
    """An image trunk: batch-first tensor inputs and outputs, each image cached on its own."""

    def _forward(self, *args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        keys = [_key(*(t[i] for t in tensors)) for i in range(tensors[0].shape[0])]
        if self.store and all(k in self.entries for k in keys):
            self.hits += len(keys)
            return _stack([self.entries[k] for k in keys])
        self.misses += len(keys)
        out = self.compute(*args, **kwargs)
        if self.store:
            for i, k in enumerate(keys):
                self.keep(k, _item(out, i))
        return out


class _PerCallTrunk(_Trunk):
    """A text trunk: one entry per distinct call (the same prompt's tokens)."""

    def _forward(self, *args, **kwargs):
        key = _key(*(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)))
        if self.store and key in self.entries:
            self.hits += 1
            return _fresh(self.entries[key])
        self.misses += 1
        out = self.compute(*args, **kwargs)
        if self.store:
            self.keep(key, _fresh(out))
        return out


class TrunkCache:
    """The host's frozen trunks that no enabled module acts inside, wrapped while in use."""

    def __init__(self, trunks: dict, modules, store: bool = True, max_mb: int = 4096):
        budget = [max_mb * 2 ** 20]
        self.trunks = {name: (_PerItemTrunk if t.per_item else _PerCallTrunk)(t.module, store, budget)
                       for name, t in trunks.items() if not any(m.enabled and m.acts_inside(t.module) for m in modules)}

    def __enter__(self) -> "TrunkCache":
        for trunk in self.trunks.values():
            trunk.install()
        return self

    def __exit__(self, *exc) -> None:
        for trunk in self.trunks.values():
            trunk.remove()

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: {"hits": t.hits, "misses": t.misses, "entries": len(t.entries)} for name, t in self.trunks.items()}
