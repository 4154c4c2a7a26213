"""Several processes (torchrun): plain ``torch.distributed`` over the module being trained.

Every rank runs the whole engine on its share of each global batch and of each
evaluation; what a rank computes locally is combined here:
- gradients of the trained module are averaged after each backward, with the
  step's loss, in one all-reduce (what DDP does; its wrapper would have to
  wrap the whole frozen host, whose forward the modules change by hooks);
- a loss normalised by a count the batch decides (DETR's number of boxes) is
  rescaled to the global count, as DETR's own distributed training does;
- evaluation predictions are gathered on rank 0, which computes the metric and
  broadcasts it, so every rank takes the same decisions afterwards.
Only rank 0 writes files (``continual.atomic``), logs and TensorBoard.

Outside torchrun (no process group) every function here is the identity, so
one process runs exactly the code it ran before.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher that sets RANK and WORLD_SIZE) started this process, as one of
    several or alone (a job of one process still joins its group: bench/gpu.sh checks nccl so)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@contextmanager
def process_group(device: str):
    """Join the launcher's process group for the block (gloo on CPU, nccl on CUDA); nothing outside torchrun."""
    if not launched() or active():
        yield
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU when the run is on CUDA (torchrun's LOCAL_RANK), else ``device`` unchanged."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (it may fill a cache), the other ranks after it."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def _comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors must be: gloo reduces CPU tensors, nccl CUDA ones."""
    return torch.device("cpu") if dist.get_backend() == "gloo" else device


def global_share(count: int, device: torch.device) -> float:
    """The factor that turns a loss averaged over ``count`` local items (at least 1, as the host's loss
    clamps it) into this rank's part of the loss averaged over every rank's items, once ranks are averaged:
    max(count, 1) * world / max(total, 1). 1.0 in one process."""
    if not active():
        return 1.0
    total = torch.tensor([float(count)], device=_comm_device(device))
    dist.all_reduce(total)
    return max(count, 1) * world_size() / max(total.item(), 1.0)


def average_gradients(params: list[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
    """Average the parameters' gradients over ranks, in place; returns the loss averaged likewise (detached).

    One flat all-reduce: the trained modules are small (a single bucket of DDP's).
    """
    if not active():
        return loss
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [loss.detach().reshape(1).float()])
    home = flat.device
    flat = flat.to(_comm_device(home))
    dist.all_reduce(flat)
    flat = flat.to(home).div_(world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[-1].to(loss.dtype)


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Rank 0's values everywhere (a new module starts identical on every rank, as DDP makes it)."""
    if not active():
        return
    with torch.no_grad():
        for p in params:
            data = p.data.to(_comm_device(p.device))
            dist.broadcast(data, src=0)
            p.data.copy_(data)


def shard(size: int) -> list[int]:
    """This rank's indices of an evaluation set: every world-th item from its rank (order kept)."""
    return list(range(rank(), size, world_size()))


def on_main(shard_items: list, compute):
    """``compute(items)`` on rank 0 over every rank's ``shard()`` items put back in the set's order, its
    result broadcast to every rank. One process: ``compute(shard_items)``."""
    if not active():
        return compute(shard_items)
    parts = [None] * world_size() if is_main() else None
    dist.gather_object(shard_items, parts, dst=0)
    result = [None]
    if is_main():  # item k of rank r is the set's item r + k * world
        result[0] = compute([part[k] for k in range(len(parts[0])) for part in parts if k < len(part)])
    dist.broadcast_object_list(result, src=0)
    return result[0]
