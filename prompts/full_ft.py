"""Full fine-tuning: every host weight trains (the reference row; not stackable).

Attaching snapshots the host's weights; while attached the host's own
parameters are this module's trainable parameters. Disabling swaps the
snapshot back in (keeping the tuned weights aside), enabling swaps the tuned
ones in again, and detaching restores the snapshot, so the host is left as it
was found.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from prompts.base import PeftModule, register_method


@dataclass
class FullFtConfig:
    pass


@register_method
class FullFineTuning(PeftModule):
    method = "full_ft"
    Config = FullFtConfig
    default_lr = 0.0001
    stackable = False

    # Invariant: while attached and enabled the host holds the tuned weights;
    # otherwise they wait in ``_tuned`` (None before any training).
    def build(self, host) -> None:
        self._tuned: dict[str, torch.Tensor] | None = None

    def install(self, host):
        self._original = _snapshot(host.model)
        if self.enabled:
            self._bring_tuned_in()
        return []

    def uninstall(self) -> None:
        if self.enabled:
            self._tuned = _snapshot(self.host.model)
        self.host.model.load_state_dict(self._original)

    def on_enabled_changed(self) -> None:
        if not self.attached:
            return
        if self.enabled:
            self._bring_tuned_in()
        else:
            self._tuned = _snapshot(self.host.model)
            self.host.model.load_state_dict(self._original)

    def _bring_tuned_in(self) -> None:
        if self._tuned is not None:
            self.host.model.load_state_dict(self._tuned)
            self._tuned = None

    def acts_inside(self, part) -> bool:
        return True  # every weight of the host trains

    def trainable_parameters(self):
        return list(self.host.model.parameters()) if self.attached else []

    def module_state(self) -> dict[str, torch.Tensor]:
        if self.attached and self.enabled:
            return self.host.model.state_dict()
        return dict(self._tuned or {})

    def load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.attached and self.enabled:
            self.host.model.load_state_dict(state)
        else:
            self._tuned = dict(state)


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
