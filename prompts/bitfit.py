"""BitFit (Ben Zaken et al., 2022): tune only biases.

The host's biases stay frozen: each chosen layer gets a zero-initialised bias
delta added to its output, which is the same function as training the bias in
place and keeps the host bit-identical (so modules stack and detach).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prompts.base import MethodError, PeftModule, register_method


@dataclass
class BitfitConfig:
    # Name suffixes of the layers to tune (peft-style matching); None = every
    # biased nn.Linear and nn.LayerNorm of the host. The paper's BitFit_X-MHA
    # row is continual.hosts.grounding_dino.XMHA_LINEARS.
    target_modules: list[str] | None = None


def _matches(name: str, targets: list[str] | None) -> bool:
    return targets is None or any(name == t or name.endswith("." + t) for t in targets)


@register_method
class BitFit(PeftModule):
    method = "bitfit"
    Config = BitfitConfig
    default_lr = 0.001

    def _layers(self, host) -> dict[str, nn.Module]:
        return {name: m for name, m in host.model.named_modules()
                if isinstance(m, (nn.Linear, nn.LayerNorm)) and getattr(m, "bias", None) is not None
                and _matches(name, self.config.target_modules)}

    def build(self, host) -> None:
        layers = self._layers(host)
        if not layers:
            raise MethodError(f"bitfit: target_modules {self.config.target_modules} match no biased layer")
        self.site_names = list(layers)
        self.deltas = nn.ParameterList(nn.Parameter(torch.zeros_like(m.bias, dtype=torch.float32))
                                       for m in layers.values())

    def install(self, host):
        layers = self._layers(host)
        return [layers[name].register_forward_hook(self._shift(delta)) for name, delta in zip(self.site_names, self.deltas)]

    def _shift(self, delta: nn.Parameter):
        def hook(module, args, output):
            return output + delta.to(output.dtype) if self.enabled else None
        return hook
