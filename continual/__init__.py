"""Continual-VLP: continual multi-task adaptation of frozen vision-language models with PEFT modules.

A stream of tasks, each learned by a new parameter-efficient module stacked on a frozen host, with the
results matrix and the forgetting metrics. The public API is ``__all__``; a script needs nothing else:

    import continual as cl

    host = cl.build_host("builtin:tiny-base")
    base, aquarium = cl.load_task("synthetic:base"), cl.load_task("synthetic:aquarium")
    stack = cl.Stack(host)
    cl.train(stack, cl.build_module("adapter", task=base), base, cl.TrainConfig(steps=100))
    cl.train(stack, cl.build_module("sdpt", task=aquarium), aquarium, cl.TrainConfig(steps=100, seed=1))
    print(cl.evaluate(stack, base)["mAP"], cl.evaluate(stack, aquarium, policy="own")["mAP"])

Names load on first use, so ``import continual`` (and ``continual --help``) stays light.
"""
import importlib
import importlib.util
from pathlib import Path


def _check_not_shadowed() -> None:
    """The project's other top-level packages must be its own: a user's ``tasks.py`` in the working folder (or
    another installed ``prompts``) would otherwise be imported in their place and fail somewhere obscure."""
    root = Path(__file__).resolve().parent.parent
    for name in ("tasks", "prompts", "evaluation"):
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve() if spec and spec.origin else None
        if found != root / name / "__init__.py":
            where = found or (list(spec.submodule_search_locations) if spec else "nowhere")
            raise ImportError(f"continual: `import {name}` finds {where}, not Continual-VLP's own package "
                              f"{root / name}; that file or folder shadows it (rename it, or run from another "
                              "folder)")


_check_not_shadowed()

from continual.compat import install_torchvision_shim  # noqa: E402

# Before anything imports torchvision or transformers (see continual/compat.py).
install_torchvision_shim()

_HOMES = {
    # hosts and tasks
    "build_host": "continual.hosts.base", "register_host": "continual.hosts.base", "Host": "continual.hosts.base",
    # the shipped hosts, to subclass for a related model family (examples/custom_host.py)
    "GroundingDinoHost": "continual.hosts.grounding_dino", "DualEncoderHost": "continual.hosts.dual_encoder",
    "ViltHost": "continual.hosts.vilt",
    "load_task": "continual.api",
    # task kinds: a new one from user code (examples/custom_task_kind.py)
    "register_task_kind": "tasks.kinds", "TaskKind": "tasks.kinds", "LoadOptions": "tasks.kinds",
    "LoadedData": "tasks.kinds",
    # modules and their stack
    "build_module": "prompts.base", "register_method": "prompts.base", "PeftModule": "prompts.base",
    "Stack": "prompts.stack", "save_module": "prompts.store", "load_module": "prompts.store",
    # the loops
    "train": "continual.loop", "evaluate": "continual.loop", "TrainConfig": "continual.training",
    "TrainRecord": "continual.loop",
    # runs from configs, and what they produced
    "load_config": "continual.config", "run": "continual.api", "Results": "continual.results",
    "derived_metrics": "evaluation.summary",
    # Avalanche users: our module stacking in their strategy
    "StackingPlugin": "continual.avalanche", "StackedClassifier": "continual.avalanche",
    "task_from_experiences": "continual.avalanche",
    "ContinualError": "continual.errors",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'continual' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
