"""Frozen-trunk feature cache: the image backbone's outputs per image, the text encoder's per prompt.

While a module trains whose every site lies after a trunk (SDPT, the linear
probe, fusion/decoder adapters for both trunks; CoOp and text-side adapters
for the image trunk only), that trunk is a fixed function of its input: the
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


class _ImageTrunk(_Trunk):
    """GroundingDinoConvModel: (pixel_values, pixel_mask) -> ([(feature, mask) per level], [position per level])."""

    def _forward(self, pixel_values, pixel_mask):
        keys = [_key(pixel_values[i], pixel_mask[i]) for i in range(pixel_values.shape[0])]
        if self.store and all(k in self.entries for k in keys):
            self.hits += len(keys)
            items = [self.entries[k] for k in keys]
            levels = len(items[0][0])
            out = [(torch.stack([it[0][l][0] for it in items]), torch.stack([it[0][l][1] for it in items]))
                   for l in range(levels)]
            return out, [torch.stack([it[1][l] for it in items]) for l in range(levels)]
        self.misses += len(keys)
        out, pos = self.compute(pixel_values, pixel_mask)
        if self.store:
            for i, k in enumerate(keys):
                self.keep(k, ([(f[i].clone(), m[i].clone()) for f, m in out], [p[i].clone() for p in pos]))
        return out, pos


class _TextTrunk(_Trunk):
    """The BERT text encoder: one entry per distinct (input_ids, masks, positions) batch."""

    def _forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **kwargs):
        key = _key(input_ids, attention_mask, token_type_ids, position_ids)
        if self.store and key in self.entries:
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        out = self.compute(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           position_ids=position_ids, **kwargs)
        if self.store:
            self.keep(key, out)
        return out


class TrunkCache:
    """The frozen trunks of a Grounding DINO host that no enabled module acts inside, wrapped while in use."""

    def __init__(self, host, modules, store: bool = True, max_mb: int = 4096):
        model = host.model.model
        budget = [max_mb * 2 ** 20]
        self.trunks = {name: cls(part, store, budget) for name, part, cls in
                       (("image", model.backbone, _ImageTrunk), ("text", model.text_backbone, _TextTrunk))
                       if not any(m.enabled and m.acts_inside(part) for m in modules)}

    def __enter__(self) -> "TrunkCache":
        for trunk in self.trunks.values():
            trunk.install()
        return self

    def __exit__(self, *exc) -> None:
        for trunk in self.trunks.values():
            trunk.remove()

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: {"hits": t.hits, "misses": t.misses, "entries": len(t.entries)} for name, t in self.trunks.items()}
