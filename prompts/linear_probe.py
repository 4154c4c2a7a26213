"""Linear probing: train the prediction heads only.

The module holds trainable copies of the host's heads (``host.sites("heads")``:
the box MLPs and, since Grounding DINO's class scores are a parameter-free dot
product with the text features, the text projection that feeds them) and
routes each head's input through its copy. Heads that share weights (the
decoder's tied box heads) share one copy. Fresh copies compute exactly what
the originals do, so attaching changes nothing until training.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from prompts.base import PeftModule, register_method


@dataclass
class LinearProbeConfig:
    pass


def _plain_copy(head: nn.Module) -> nn.Module:
    """A trainable copy of a head without its hooks: deepcopy copies them too, and an earlier probe's hook
    on the head would then replace this copy's output with its own (frozen) copy's."""
    head = copy.deepcopy(head).requires_grad_(True)
    for module in head.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return head


def _tie_key(module: nn.Module) -> int:
    return id(next(module.parameters()))


@register_method
class LinearProbe(PeftModule):
    method = "linear_probe"
    Config = LinearProbeConfig
    default_lr = 0.001

    def required_sites(self):
        return ("heads",)

    def build(self, host) -> None:
        heads = host.sites("heads")
        first_of_group: dict[int, nn.Module] = {}  # tie key -> first head with those weights
        for module in heads.values():
            first_of_group.setdefault(_tie_key(module), module)
        keys = list(first_of_group)
        self.copies = nn.ModuleList(_plain_copy(m) for m in first_of_group.values())
        self.site_copy = {name: keys.index(_tie_key(m)) for name, m in heads.items()}

    def install(self, host):
        heads = host.sites("heads")
        return [heads[name].register_forward_hook(self._reroute(self.copies[i])) for name, i in self.site_copy.items()]

    def _reroute(self, head_copy: nn.Module):
        def hook(module, args, output):
            return head_copy(*args) if self.enabled else None
        return hook
