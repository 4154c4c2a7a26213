"""Avalanche plugins of the engine: module stacking, task metrics, checkpoints, the feature cache, progress.

Each reads the step being trained from ``strategy.plan`` (continual.strategy.StepPlan)
and the evaluated task from ``strategy.current_task``; none is told anything else.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from tqdm.auto import tqdm

from continual import atomic, distributed
from continual.faults import crash_point
from continual.trunk_cache import TrunkCache
from evaluation.evaluators import LOGGED
from prompts import Stack, build_module


class IntegrityError(RuntimeError):
    """A frozen tensor (host or earlier module) changed while a new module trained."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops before the update."""


class StackingPlugin(SupervisedPlugin, supports_distributed=True):
    """Puts each step's new module on the stack, trains only it, checks the rest did not move.

    Before a training experience: build the plan's module, push it, let it
    prepare for the task, freeze everything else, give the strategy an
    optimizer over the module alone (restored from the plan's checkpoint when
    resuming). Before each backward: the module's own objective replaces the
    host's task loss (the same loss for most methods). After it: hash the host
    and the earlier modules again and raise IntegrityError if any changed.
    Before an evaluation experience: switch modules by the policy for the
    evaluated task and its prompt's phrases.
    """

    def __init__(self, stack: Stack, policy: str):
        super().__init__()
        self.stack, self.policy = stack, policy
        self.module = None
        self._frozen: dict | None = None

    def before_training_exp(self, strategy, **kwargs):
        plan = strategy.plan
        torch.manual_seed(plan.train.seed)  # the module's initialisation
        self.module = build_module(plan.method, plan.config, task=plan.task.name)
        self.module.phrases = tuple(plan.task.phrases)
        self.stack.push(self.module)
        self._frozen = self.stack.frozen_hashes(except_module=self.module) if self.module.stackable else None
        self.module.prepare(plan.task)
        params = self.stack.train_only(self.module)
        self.module.to(strategy.device)
        strategy.optimizer = torch.optim.AdamW(params, lr=plan.train.lr, weight_decay=plan.train.weight_decay)
        if plan.resume is not None:
            self.module.load_module_state(plan.resume["module"])
            strategy.optimizer.load_state_dict(plan.resume["optimizer"])
        distributed.broadcast_parameters(params)

    def before_backward(self, strategy, **kwargs):
        # the method's own objective (DPT's auxiliary terms), as Avalanche's regularisation plugins do
        strategy.loss = self.module.objective(strategy.loss, strategy.step / strategy.plan.train.steps)

    def before_update(self, strategy, **kwargs):
        if not torch.isfinite(strategy.loss).all():
            plan = strategy.plan
            raise NonFiniteLossError(
                f"task {plan.task.name!r}: the {plan.method} training loss is {strategy.loss.item()} at step "
                f"{strategy.step + 1} of {plan.train.steps}; stopped before the update. The run folder keeps its last "
                "good checkpoint; lower train.lr (or check the task's data) and start the run again")

    def after_training_exp(self, strategy, **kwargs):
        self.module.requires_grad_(False)
        if self._frozen is None:
            return
        now = self.stack.frozen_hashes(except_module=self.module)
        moved = sorted(k for k in self._frozen if now.get(k) != self._frozen[k])
        if moved:
            plan = strategy.plan
            raise IntegrityError(f"training {plan.method} on {plan.task.name} changed frozen tensors: {moved} "
                                 "(the host and earlier modules must stay bit-identical)")

    def before_eval_exp(self, strategy, **kwargs):
        task = strategy.current_task
        self.stack.use(self.policy, task.name, task.phrases)

    def after_eval(self, strategy, **kwargs):
        self.stack.use("all")


class ResumeRngPlugin(SupervisedPlugin, supports_distributed=True):
    """Puts back the RNG state of the checkpoint a step resumes from (``plan.resume["rng"]``) before its first
    iteration; not earlier: creating the data loader's iterator draws from the RNG, and so does the forward
    (dropout in the text encoder when it trains)."""

    def __init__(self):
        super().__init__()
        self._rng: torch.Tensor | None = None

    def before_training_exp(self, strategy, **kwargs):
        resume = strategy.plan.resume
        self._rng = resume["rng"] if resume else None  # a resume at the very end of a step runs no iteration

    def before_training_iteration(self, strategy, **kwargs):
        if self._rng is not None:
            torch.set_rng_state(self._rng)
            self._rng = None


class TaskMetric(PluginMetric[dict]):
    """Every statistic of each evaluated task's own evaluator, over all of the experience's minibatches.

    Avalanche's ``detection_predictions`` holds only the last minibatch, so each
    minibatch's targets and predictions are kept here; at the end of the
    experience they go to the evaluator (on rank 0, gathered from every rank
    when several share the evaluation). ``take_results()`` hands the statistics
    of the tasks evaluated since the last call to the engine.
    """

    def __init__(self):
        super().__init__()
        self._results: dict[str, dict] = {}
        self._seen: list[tuple] = []  # (target, prediction) per image, on the CPU

    def reset(self) -> None:
        self._seen = []

    def result(self) -> dict:
        return dict(self._results)

    def take_results(self) -> dict[str, dict]:
        results, self._results = self._results, {}
        return results

    def before_eval_exp(self, strategy):
        self.reset()

    def after_eval_iteration(self, strategy):
        targets = [{k: v.cpu() if torch.is_tensor(v) else v for k, v in t.items()} for t in strategy.mb_y]
        self._seen += zip(targets, strategy.mb_output)

    def after_eval_exp(self, strategy):
        task = strategy.current_task

        def evaluate(seen):
            evaluator = task.evaluator()
            if seen:
                evaluator.process(*zip(*seen))
            return evaluator.evaluate()

        metrics = distributed.on_main(self._seen, evaluate)
        self.reset()
        self._results[task.name] = metrics
        row = strategy.clock.train_exp_counter
        return [MetricValue(self, f"{stat}/{task.name}", metrics[stat], row) for stat in LOGGED[task.kind]]

    def __str__(self) -> str:
        return "Task"


class CheckpointPlugin(SupervisedPlugin, supports_distributed=True):
    """Mid-experience checkpoints: every ``every`` steps and at the end of each training experience.

    One file, written atomically: the new module's tensors, its optimizer, the
    step, the RNG state and the losses so far; with the seeded data order
    (StepSampler) that is all a resumed run needs to continue bit for bit.
    Read back with ``torch.load(weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled objects.
    """

    def __init__(self, path, every: int, stacking: "StackingPlugin", record: "RecordPlugin"):
        super().__init__()
        self.path, self.every, self.stacking, self.record = Path(path), every, stacking, record
        self.key = ""  # identity of the step training now (set by ``load``)

    def after_training_iteration(self, strategy, **kwargs):
        if self.every and strategy.step % self.every == 0 and strategy.step < strategy.plan.train.steps:
            self.save(strategy)
        crash_point("train-step")

    def after_training_exp(self, strategy, **kwargs):
        self.save(strategy)

    def save(self, strategy) -> None:
        atomic.write_torch(self.path, {
            "index": strategy.plan.index, "key": self.key, "step": strategy.step,
            "module": {k: v.detach().cpu().clone() for k, v in self.stacking.module.module_state().items()},
            "optimizer": strategy.optimizer.state_dict(), "rng": torch.get_rng_state(),
            "losses": list(self.record.losses)})

    def load(self, index: int, key: str) -> dict | None:
        """The checkpoint inside step ``index`` trained as ``key`` says, if the file holds one; a checkpoint of
        that step under settings changed since is not used."""
        self.key = key
        if not self.path.is_file():
            return None
        state = torch.load(self.path, weights_only=True)
        return state if state["index"] == index and state.get("key") == key else None


class TrunkCachePlugin(SupervisedPlugin, supports_distributed=True):
    """While a module trains: the frozen trunks that nothing acts inside run in eval mode, their outputs cached."""

    def __init__(self, host, stack: Stack, store: bool, max_mb: int):
        super().__init__()
        self.host, self.stack, self.store, self.max_mb = host, stack, store, max_mb
        self.cache: TrunkCache | None = None
        self.stats: dict = {}

    def before_training_exp(self, strategy, **kwargs):
        self.cache = TrunkCache(self.host.trunks(), self.stack.modules, self.store, self.max_mb).__enter__()

    def after_training_exp(self, strategy, **kwargs):
        self.stats = self.cache.stats()
        self.cache.__exit__()
        self.cache = None


class RecordPlugin(SupervisedPlugin, supports_distributed=True):
    """Loss per step, wall time of the model's own work, and tqdm bars on training and evaluation."""

    def __init__(self, progress: bool = True):
        super().__init__()
        self.progress = progress
        self.losses: list[float] = []
        self.step_seconds: list[float] = []  # wall time per training iteration, data loading included
        self.model_seconds = 0.0  # forward + backward + optimizer step
        self._bar = None
        self._tick = 0.0

    def before_training_exp(self, strategy, **kwargs):
        resume = strategy.plan.resume
        self.losses = list(resume["losses"]) if resume else []  # the losses before a mid-step checkpoint
        self.step_seconds = []
        self._bar = tqdm(total=len(strategy.dataloader), desc="train", leave=False, disable=not self.progress)
        self._last_step_end = time.perf_counter()

    def before_forward(self, strategy, **kwargs):
        self._tick = time.perf_counter()

    def after_update(self, strategy, **kwargs):
        self.losses.append(strategy.loss.item())  # .item() syncs, so the timing below is honest on CUDA too
        self.model_seconds += time.perf_counter() - self._tick
        self._bar.update()
        self._bar.set_postfix(loss=f"{self.losses[-1]:.2f}")
        now = time.perf_counter()
        self.step_seconds.append(now - self._last_step_end)
        self._last_step_end = now

    def after_training_exp(self, strategy, **kwargs):
        self._bar.close()

    def before_eval_exp(self, strategy, **kwargs):
        self._bar = tqdm(total=len(strategy.dataloader), desc="eval", leave=False, disable=not self.progress)

    def before_eval_forward(self, strategy, **kwargs):
        self._tick = time.perf_counter()

    def after_eval_forward(self, strategy, **kwargs):
        self.model_seconds += time.perf_counter() - self._tick
        self._bar.update()
        crash_point("eval-batch")

    def after_eval_exp(self, strategy, **kwargs):
        self._bar.close()


class PeriodicCallback(SupervisedPlugin):
    """Calls ``callback(step)`` after every ``every``-th step and after the last (pretraining's validation)."""

    def __init__(self, every: int, callback):
        super().__init__()
        self.every, self.callback = every, callback

    def after_training_iteration(self, strategy, **kwargs):
        step = strategy.step
        if (self.every and step % self.every == 0) or step == strategy.plan.train.steps:
            self.callback(step)
            strategy.model.train()
