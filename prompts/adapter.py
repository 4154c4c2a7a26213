"""Bottleneck adapters on feed-forward blocks.

``parallel`` (AdaptFormer): y' = FFN(x) + scale * up(relu(down(x))), reading the
FFN's input x. ``serial`` (Houlsby): y' = y + scale * up(relu(down(y))), reading
the FFN's output y. The up-projection starts at zero, so a fresh adapter leaves
the host unchanged. Sites: any FFN kind of the host (Swin blocks, the fusion
encoder's image and text sides, decoder layers, BERT text layers).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, check_choice, register_method


@dataclass
class AdapterConfig:
    sites: list[str] | None = None  # site kinds with FFNs; None = the host's main blocks (host.default_block_sites)
    bottleneck: int = 16
    style: str = "parallel"  # or "serial"
    scale: float = 0.1

    def __post_init__(self):
        check_choice("adapter", "style", self.style, ("parallel", "serial"))
        check_at_least("adapter", "bottleneck", self.bottleneck, 1)
        if self.sites is not None and not self.sites:
            raise MethodError("adapter: sites must name at least one site kind with feed-forward blocks")


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x):
        return self.up(self.down(x).relu())


@register_method
class Adapter(PeftModule):
    method = "adapter"
    Config = AdapterConfig
    default_lr = 0.003

    def _ffns(self, host):
        found = {}
        for kind in self.config.sites or host.default_block_sites:
            found.update(host.ffn_sites(kind))
        return list(found.items())

    def required_sites(self):
        return tuple(self.config.sites or ())

    def build(self, host) -> None:
        cfg = self.config
        ffns = self._ffns(host)
        self.site_names = [name for name, _ in ffns]
        self.adapters = nn.ModuleList(Bottleneck(second.out_features, cfg.bottleneck) for _, (_, second) in ffns)

    def install(self, host):
        handles = []
        for adapter, (_, (first, second)) in zip(self.adapters, self._ffns(host)):
            if self.config.style == "serial":
                handles.append(second.register_forward_hook(self._serial(adapter)))
            else:
                inputs = {}
                handles.append(first.register_forward_pre_hook(self._remember(inputs)))
                handles.append(second.register_forward_hook(self._parallel(adapter, inputs)))
        return handles

    def _remember(self, inputs: dict):
        def hook(module, args):
            if self.enabled:
                inputs["x"] = args[0]
        return hook

    def _parallel(self, adapter: Bottleneck, inputs: dict):
        def hook(module, args, output):
            x = inputs.pop("x", None)  # popped: never keep activations alive between calls
            if not self.enabled or x is None:
                return None
            return output + self.config.scale * adapter(x)
        return hook

    def _serial(self, adapter: Bottleneck):
        def hook(module, args, output):
            if not self.enabled:
                return None
            return output + self.config.scale * adapter(output)
        return hook
