"""The ordered PEFT modules on one host, switched by composition policy.

Policies at evaluation:
- ``all``: every module on (the SDPT paper's setting; task-agnostic);
- ``own``: only the evaluated task's modules and the ones they were trained
  on top of (task-aware; an earlier task then sees exactly what it saw when it
  was trained, so it cannot forget);
- ``route``: the modules whose tasks' phrases the prompt names (exact match;
  with ``route_threshold``, also a phrase whose frozen text embedding has cosine
  similarity >= the threshold with one of theirs: new wording), and the ones
  they were trained on top of (task-agnostic: a grounding prompt always carries
  its class names, as in DitHub); a prompt that names no known phrase runs on
  the plain host.
"""
from __future__ import annotations

import contextlib
import json
import weakref
from dataclasses import dataclass

import torch

from continual.digest import tensor_digest
from prompts.base import MethodError, PeftModule

POLICIES = ("all", "own", "route")


@dataclass
class StackEntry:
    module: PeftModule
    below: tuple[int, ...]  # positions of the modules this one was trained on top of


class Stack:
    """The ordered modules on one host: each pushed module is trained on top of those below it, and a
    composition policy switches them for each evaluated task (``use`` / ``using``).

        stack = Stack(host)
        stack.push(load_module("runs/x/modules/00-base-adapter", host))
        with stack.using("own", task="base"):
            ...
    """

    def __init__(self, host, route_threshold: float | None = None):
        self.host, self.route_threshold = host, route_threshold
        self.entries: list[StackEntry] = []
        self._embeddings: dict[str, torch.Tensor] = {}  # phrase -> unit vector from the plain host's text side
        self._digests: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> (tensor stamp, digest)

    @property
    def modules(self) -> list[PeftModule]:
        return [e.module for e in self.entries]

    def push(self, module: PeftModule) -> PeftModule:
        """Put a module on top (attaching it if needed); it is trained on top of all below."""
        if self.entries and not (module.stackable and all(m.stackable for m in self.modules)):
            names = [m.method for m in self.modules] + [module.method]
            raise MethodError(f"cannot stack {names}: {', '.join(m for m in names if m == 'full_ft') or 'a method'} "
                              "changes the host's own weights and must be used alone")
        if not module.attached:
            module.attach(self.host)
        self.entries.append(StackEntry(module, tuple(range(len(self.entries)))))
        return module

    def pop(self) -> PeftModule:
        entry = self.entries.pop()
        entry.module.detach()
        return entry.module

    def clear(self) -> None:
        while self.entries:
            self.pop()

    def use(self, policy: str, task: str | None = None, phrases=()) -> None:
        """Switch modules on and off for evaluating ``task``, prompted with ``phrases``, under ``policy``."""
        if policy not in POLICIES:
            raise MethodError(f"unknown composition policy {policy!r}; choose from {POLICIES}")
        if policy == "all":
            active = set(range(len(self.entries)))
        else:
            chosen = [i for i, e in enumerate(self.entries)
                      if (e.module.task == task if policy == "own" else self._names(phrases, e.module.phrases))]
            active = set(chosen).union(*(self.entries[i].below for i in chosen))
        # Off first, then on: modules such as full_ft swap weights on change.
        for i, entry in enumerate(self.entries):
            if i not in active and entry.module.enabled:
                entry.module.enabled = False
        for i in sorted(active):
            self.entries[i].module.enabled = True

    def _names(self, prompt, known) -> bool:
        """Whether a prompt's phrases name any of a module's: the same phrase, or (with a threshold) one
        whose embedding is at least that similar."""
        if set(prompt) & set(known):
            return True
        if self.route_threshold is None or not prompt or not known:
            return False
        similarity = self._embedded(prompt) @ self._embedded(known).T  # cosines of unit vectors
        return bool((similarity >= self.route_threshold).any())

    def _embedded(self, phrases) -> torch.Tensor:
        new = [p for p in dict.fromkeys(phrases) if p not in self._embeddings]
        if new:
            with self.using("route"):  # no phrase named: every module off, the frozen text side alone
                vectors = torch.nn.functional.normalize(self.host.phrase_embeddings(new).float().cpu(), dim=-1)
            self._embeddings.update(zip(new, vectors))
        return torch.stack([self._embeddings[p] for p in phrases])

    @contextlib.contextmanager
    def using(self, policy: str, task: str | None = None, phrases=()):
        before = [m.enabled for m in self.modules]
        self.use(policy, task, phrases)
        try:
            yield self
        finally:
            for module, flag in zip(self.modules, before):
                module.enabled = flag

    def digests_in_use(self, policy: str, task: str | None = None, phrases=()) -> list[str]:
        """What ``use(policy, task, phrases)`` switches on, in stack order: each module's method, config and
        tensors' sha256. Equal lists give equal outputs on the same host."""
        with self.using(policy, task, phrases):
            return [self._digest(m) for m in self.modules if m.enabled]

    def _digest(self, module: PeftModule) -> str:
        # Hashed again only when a tensor was replaced or changed in place since (optimizer steps and
        # load_state_dict bump a tensor's version): a full fine-tuning module holds the whole host.
        state = sorted(module.module_state().items())
        stamp = tuple((name, t.data_ptr(), t._version) for name, t in state)
        known = self._digests.get(module)
        if known is None or known[0] != stamp:
            config = json.dumps(module.config_dict(), sort_keys=True, default=str)
            known = self._digests[module] = (stamp, f"{module.method}:{config}:{tensor_digest(state)}")
        return known[1]

    def train_only(self, module: PeftModule) -> list:
        """Freeze the host and every module but ``module``; return its trainable parameters."""
        if module not in self.modules:
            raise MethodError(f"{module.method} module for task {module.task!r} is not on this stack")
        self.use("all")
        self.host.requires_grad_(False)
        for other in self.modules:
            other.requires_grad_(False)
        params = module.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        return params

    def frozen_hashes(self, except_module: PeftModule | None = None) -> dict[str, str]:
        """sha256 of the host's weights and of every module's tensors but one (the one training)."""
        hashes = {"host": self.host.fingerprint()}
        for i, module in enumerate(self.modules):
            if module is not except_module:
                hashes[f"{i}:{module.method}:{module.task}"] = tensor_digest(sorted(module.module_state().items()))
        return hashes

