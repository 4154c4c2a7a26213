"""The one interface every PEFT method implements, and the method registry.

A module belongs to one task. ``attach(host)`` sizes its parameters to the host
(once) and installs hooks at the host's sites; ``detach()`` removes them, which
restores the host's outputs bit for bit. ``enabled`` switches a module off
without detaching it (its hooks then pass values through untouched).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn
from torch.utils.hooks import RemovableHandle
from continual.errors import ContinualError
from continual.registry import Registry



class MethodError(ContinualError, ValueError):
    """Unknown method, bad method config, or a module used in the wrong state."""


METHODS = Registry("method", "method", MethodError)


def register_method(cls: type["PeftModule"]) -> type["PeftModule"]:
    """Class decorator: make a method known by its ``method`` name, usable in configs and ``build_module``.

        @register_method
        class MyMethod(PeftModule):
            method = "my_method"
            ...
    """
    return METHODS.register(cls)


def check_choice(method: str, key: str, value, allowed: tuple) -> None:
    """For config ``__post_init__``: ``value`` must be one of ``allowed``."""
    if value not in allowed:
        raise MethodError(f"{method}: {key} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def check_at_least(method: str, key: str, value, minimum) -> None:
    """For config ``__post_init__``: ``value`` must be a number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise MethodError(f"{method}: {key} must be a number >= {minimum}, got {value!r}")


def config_from_dict(config_class: type, values: dict[str, Any], method: str):
    """Build a method's config dataclass (its ``__post_init__`` checks values), refusing unknown keys by name."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise MethodError(f"{method}: unknown config key(s) {unknown}; valid keys: {sorted(fields)}")
    try:
        return config_class(**values)
    except TypeError as err:
        raise MethodError(f"{method}: bad config {values} ({err})") from err


def check_sites(module: "PeftModule", host_kind: str, site_kinds) -> None:
    """The host (described by its kind and site kinds) has every site kind the module needs."""
    missing = [k for k in module.required_sites() if k not in site_kinds]
    if missing:
        raise MethodError(f"{module.method} needs site kind(s) {missing}, which a {host_kind} host lacks "
                          f"(it has {', '.join(site_kinds)})")


def build_module(method: str, config: dict[str, Any] | None = None, task=None) -> "PeftModule":
    """A new module of ``method`` (its config's defaults where ``config`` gives none) for ``task`` (a task's
    name, or the task itself: its phrases then tell policy `route` when to switch the module on).

        module = build_module("sdpt", {"k": 10}, task=aquarium)
    """
    cls = METHODS.lookup(method)
    module = cls(config_from_dict(cls.Config, config or {}, method), task=getattr(task, "name", task))
    module.phrases = tuple(getattr(task, "phrases", ()))
    return module


class PeftModule(nn.Module):
    """Base class of every PEFT method: subclasses set ``method`` (its registered name) and ``Config`` (a
    dataclass) and implement ``build(host)`` (parameters sized to the host) and ``install(host)`` (hooks on
    the host's sites, returning their handles); see examples/custom_method.py.

        @register_method
        class Gains(PeftModule):
            method, Config = "gains", GainsConfig
    """

    method: ClassVar[str]
    Config: ClassVar[type]
    default_lr: ClassVar[float] = 1e-3  # a learning rate that trains this method on the tiny host
    # False for methods that change the host's own weights (full fine-tuning):
    # they cannot be stacked and the engine skips the host-integrity check.
    stackable: ClassVar[bool] = True

    def __init__(self, config=None, task: str | None = None):
        super().__init__()
        self.config = config if config is not None else self.Config()
        self.task = task
        self.phrases: tuple[str, ...] = ()  # its task's category phrases: what policy `route` matches prompts to
        self._enabled = True
        self.built_for: str | None = None  # fingerprint of the host the parameters were sized for
        self._handles: list[RemovableHandle] = []
        self._host_ref: list = []  # a list, so the host is not registered as a submodule

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = bool(value)
        self.on_enabled_changed()

    @property
    def host(self):
        return self._host_ref[0] if self._host_ref else None

    @property
    def attached(self) -> bool:
        return bool(self._host_ref)

    def attach(self, host, fingerprint: str | None = None) -> "PeftModule":
        """Attach to ``host``; ``fingerprint``: the host's, when the caller has just computed it (it hashes
        every frozen weight)."""
        if self.attached:
            raise MethodError(f"{self.method} module for task {self.task!r} is already attached")
        check_sites(self, host.kind, host.site_kinds)
        return self.bind(host, fingerprint or host.fingerprint())

    def bind(self, host, fingerprint: str) -> "PeftModule":
        """``attach`` after its checks; a method made of other methods' modules (DPT) binds its parts
        with the fingerprint it computed once."""
        if self.built_for is None:
            self.build(host)
            self.built_for = fingerprint
        elif self.built_for != fingerprint:
            raise MethodError(f"{self.method} module for task {self.task!r} was built for host "
                              f"{self.built_for[:12]}, not this one ({fingerprint[:12]})")
        self._host_ref.append(host)
        self._handles = list(self.install(host))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.uninstall()
        self._host_ref.clear()

    # -- to implement -------------------------------------------------------------
    def required_sites(self) -> tuple[str, ...]:
        """Site kinds this module needs on its host (checked against a host before anything trains)."""
        return ()

    def build(self, host) -> None:
        """Create this module's parameters, sized to the host."""
        raise NotImplementedError

    def install(self, host) -> list[RemovableHandle]:
        """Install hooks on the host's sites; return their handles."""
        raise NotImplementedError

    def uninstall(self) -> None:
        """Undo anything ``install`` did that a hook handle does not (optional)."""

    def acts_inside(self, part: nn.Module) -> bool:
        """Whether this module changes anything computed inside ``part`` of the host (e.g. a frozen trunk).

        Default: one of its hooks (or replaced forwards) sits on ``part`` or below. Methods that act
        otherwise (LoRA's injected layers, full fine-tuning's weights) override it.
        """
        ids = {handle.id for handle in self._handles if hasattr(handle, "id")}  # torch hooks
        sites = {id(handle.site) for handle in self._handles if hasattr(handle, "site")}  # replaced forwards
        return any(ids & (m._forward_hooks.keys() | m._forward_pre_hooks.keys()) or id(m) in sites
                   for m in part.modules())

    def prepare(self, task) -> None:
        """Before this module trains on ``task`` (a tasks.task.Task): size task-dependent training
        parts, such as DPT's auxiliary class heads (optional)."""

    def objective(self, loss, progress: float):
        """The loss to minimise while this module trains, from the host's task loss on the current
        batch; ``progress`` is the fraction of the step's training done. Default: that loss."""
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer trains when this module is the one being trained."""
        return list(self.parameters())

    def module_state(self) -> dict:
        """The tensors saved to and loaded from the module store."""
        return self.state_dict()

    def load_module_state(self, state: dict) -> None:
        self.load_state_dict(state, strict=True)

    def on_enabled_changed(self) -> None:
        """React to ``enabled`` changing (optional; hooks usually just read the flag)."""

    def export_config(self) -> dict[str, Any]:
        """Extra keys for adapter_config.json (LoRA: those that make it a valid peft config)."""
        return {}

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)
