"""Our module stacking in an Avalanche strategy: a class-incremental stream of object crops (the base world's
classes, then the aquarium world's), Avalanche's Naive strategy with its EvaluationPlugin and logger, and
``StackingPlugin`` giving each experience its own Adapter on the frozen dual encoder.

    python examples/avalanche_strategy.py [--epochs 4] [--images 48] [--method adapter]

Class-incremental with a cross-entropy over every class seen, a few steps per experience: the new classes
are barely learned at this size (the figures show the mechanics, not a tuned result).
"""
import argparse
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

import continual as cl

warnings.filterwarnings("ignore", module="avalanche")  # its notices about optional dependencies
from avalanche.benchmarks import nc_benchmark  # noqa: E402
from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics  # noqa: E402
from avalanche.logging import TextLogger  # noqa: E402
from avalanche.training import Naive  # noqa: E402
from avalanche.training.plugins import EvaluationPlugin  # noqa: E402


class Crops(Dataset):
    """Images as float tensors in [0, 1] at the host's input size, with their class ids (``targets``)."""

    def __init__(self, images: list[torch.Tensor], targets: list[int]):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], self.targets[index]


def crops(host, tasks, split: str, limit: int) -> Crops:
    """The tasks' crops of one split, class ids numbered across the tasks in order."""
    images, targets, offset = [], [], 0
    for task in tasks:
        data = getattr(task, split)
        for i in range(min(limit, len(data))):
            images.append(host.to_pixels(data.open_image(i)).float() / 255)
            targets.append(offset + data.target(i)["label"])
        offset += len(task.phrases)
    return Crops(images, targets)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--method", default="adapter", help="the PEFT method of every experience")
    parser.add_argument("--images", type=int, default=48, help="training images per world (default %(default)s)")
    parser.add_argument("--log", default="runs/avalanche-strategy.log", help="Avalanche's text log")
    args = parser.parse_args(argv)

    host = cl.build_host("builtin:tiny-clip")
    tasks = [cl.load_task(f"synthetic:{world}", kind="classification", train_images=args.images, val_images=24)
             for world in ("base", "aquarium")]
    class_names = [phrase for task in tasks for phrase in task.phrases]
    benchmark = nc_benchmark(crops(host, tasks, "train", args.images), crops(host, tasks, "val", 1000),
                             n_experiences=2, task_labels=False, fixed_class_order=list(range(len(class_names))),
                             per_exp_classes={0: len(tasks[0].phrases), 1: len(tasks[1].phrases)})
    model = cl.StackedClassifier(host, class_names)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    log = open(args.log, "w")
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), forgetting_metrics(experience=True),
                                 loggers=[TextLogger(log)])
    strategy = Naive(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=args.lr),
                     criterion=nn.CrossEntropyLoss(), train_mb_size=16, train_epochs=args.epochs,
                     eval_mb_size=64, evaluator=evaluator, plugins=[cl.StackingPlugin(args.method)])
    for experience in benchmark.train_stream:
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream)
        accuracy = {k.rsplit("/", 1)[-1]: round(v, 3) for k, v in metrics.items() if k.startswith("Top1_Acc_Exp")}
        print(f"after experience {experience.current_experience}: accuracy {accuracy}")
    log.close()
    return metrics


if __name__ == "__main__":
    main()
