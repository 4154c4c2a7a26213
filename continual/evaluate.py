"""Evaluate a host on one task outside a stream (the eval command, pretraining): batches -> evaluator."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from continual.hosts.base import Batch


def task_batch(host, task, images, targets=None, train: bool = True) -> Batch:
    """A minibatch of ``task`` for ``host`` from PIL images (normalised on the host's device)."""
    return Batch.of(task, host.preprocess(list(images)), targets, train)


@torch.no_grad()
def evaluate_task(host, task, batch_size: int = 16, progress: bool = True) -> dict[str, float]:
    """Every statistic of the task's evaluator for ``host`` on the task's validation split."""
    evaluator = task.evaluator()
    was_training = host.training
    host.eval()
    data = task.val
    for start in tqdm(range(0, len(data), batch_size), desc="eval", leave=False, disable=not progress):
        images, targets = zip(*(data[i] for i in range(start, min(start + batch_size, len(data)))))
        evaluator.process(targets, host.predict(task_batch(host, task, images, targets, train=False)))
    host.train(was_training)
    return evaluator.evaluate()
