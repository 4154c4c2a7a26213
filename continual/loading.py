"""A task's splits as the host's minibatches: images sized once by the host's processor, a seeded step order.

The training order is ``StepSampler``'s alone (its own generator), so a run
killed mid-task resumes on the same batches, and several processes together
see exactly the batches one process would.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from continual import distributed


class PixelCache:
    """Images as the host's processor sizes them (uint8), kept up to ``max_mb``: the settings, seeds and
    epochs of a run then decode and resize each image once (a processor call costs about 1 ms here, even
    for an image already at its size). Filled first come, never evicted."""

    def __init__(self, to_pixels, max_mb: int = 1024):
        self.to_pixels, self.room = to_pixels, max_mb * 2**20
        self._kept: dict[tuple[int, int], torch.Tensor] = {}
        self._sources: dict[int, Any] = {}  # the data objects keyed by id, kept alive so no id is reused

    def __call__(self, data, index: int) -> torch.Tensor:
        key = (id(data), index)
        if key in self._kept:
            return self._kept[key]
        pixels = self.to_pixels(data.open_image(index))
        if pixels.nbytes <= self.room:
            self._sources[id(data)] = data
            self._kept[key] = pixels
            self.room -= pixels.nbytes
        return pixels


class HostInputs(Dataset):
    """A task's split as (pixels, target) pairs: each image as the host's processor sizes it (uint8; images
    of one batch may differ in size, the host pads them), each target's values as tensors (text, such as a
    VQA question, stays text). Targets are built once."""

    def __init__(self, data, pixels: PixelCache):
        self.data, self.pixels = data, pixels
        self.targets = [{k: v if isinstance(v, str) else torch.as_tensor(v) for k, v in data.target(i).items()}
                        for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.pixels(self.data, index), self.targets[index]


def pairs(batch: list[tuple]) -> tuple[tuple, tuple]:
    """Collate (pixels, target) items into (all pixels, all targets): images of a batch may differ in size."""
    images, targets = zip(*batch)
    return images, targets


class StepSampler(Sampler[int]):
    """Indices for ``steps`` batches: seeded permutations of the data back to back, from batch ``start`` on.

    With ``world`` > 1 processes, rank ``rank`` gets its contiguous slice of every global batch of
    ``batch_size`` (its loader's batch is ``batch_size // world``), so the ranks together see exactly the
    batches one process would.
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        self.size, self.batch_size, self.steps, self.seed, self.start = size, batch_size, steps, seed, start
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return (self.steps - self.start) * self.batch_size // self.world

    def __iter__(self):
        share = self.batch_size // self.world
        for position, index in enumerate(self._global_order()):
            if (position % self.batch_size) // share == self.rank:
                yield index

    def _global_order(self):
        skip, left, epoch = self.start * self.batch_size, (self.steps - self.start) * self.batch_size, 0
        while left > 0:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            epoch += 1
            if skip >= self.size:
                skip -= self.size
                continue
            chunk = order[skip:skip + left].tolist()
            skip = 0
            left -= len(chunk)
            yield from chunk


def train_loader(data, pixels: PixelCache, batch_size: int, steps: int, seed: int, start: int = 0,
                 workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """This rank's share of the batches of steps ``start`` .. ``steps`` - 1 of a training split; ``workers``
    processes decode and size the images (the batches and their order are the same with any number)."""
    world = distributed.world_size()
    sampler = StepSampler(len(data), batch_size, steps, seed, start, distributed.rank(), world)
    return DataLoader(HostInputs(data, pixels), batch_size=batch_size // world, sampler=sampler, collate_fn=pairs,
                      **_workers(workers, pin_memory))


def eval_loader(data, pixels: PixelCache, batch_size: int, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """This rank's shard of a validation split, in order. Its own generator: evaluating draws nothing from
    the global RNG, so where an evaluation falls never changes a training's random numbers."""
    return DataLoader(HostInputs(data, pixels), batch_size=batch_size, sampler=distributed.shard(len(data)),
                      collate_fn=pairs, generator=torch.Generator(), **_workers(workers, pin_memory))


def _workers(count: int, pin_memory: bool) -> dict:
    """DataLoader settings for ``count`` worker processes. A loader serves one training step's batches or one
    evaluation, a single pass, so its workers live as long as it does (persistent workers would gain
    nothing). Images a worker sizes stay in that worker: with workers the pixel cache is not filled, the
    processor runs in parallel instead (what a real checkpoint's 800 x 1333 inputs need)."""
    return {"num_workers": count, "pin_memory": pin_memory, **({"prefetch_factor": 4} if count else {})}
