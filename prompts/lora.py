"""LoRA through Hugging Face peft (``LoraConfig`` + ``inject_adapter_in_model``).

peft wraps each targeted nn.Linear of the host in a LoRA layer; several LoRA
modules (one per task) share a wrapper as named peft adapters, and ``enabled``
maps to the wrapper's active adapters. This module keeps its own references to
its lora_A / lora_B weights, so it can be detached (the adapter deleted and,
when none is left, the original nn.Linear put back) and attached again.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Optional

from peft import LoraConfig as PeftLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.lora import LoraLayer
import torch
from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, register_method

_names = itertools.count()


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # peft-style name suffixes; None: the host's default (Grounding DINO: the fusion
    # cross-attention, the SDPT paper's LoRA_X-MHA row; other hosts: attention query and value)
    target_modules: Optional[list[str]] = None

    def __post_init__(self):
        check_at_least("lora", "r", self.r, 1)
        check_at_least("lora", "dropout", self.dropout, 0.0)


@contextlib.contextmanager
def _requires_grad_kept(module: nn.Module):
    """peft's injection and set_adapter reset requires_grad; put every existing flag back after."""
    flags = {p: p.requires_grad for p in module.parameters()}
    try:
        yield
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)


def _lora_layers(model: nn.Module, adapter: str) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


@register_method
class Lora(PeftModule):
    method = "lora"
    Config = LoraConfig
    default_lr = 0.001

    def build(self, host) -> None:
        self.targets = list(self.config.target_modules or host.default_lora_targets)
        self.adapter_name = f"lora{next(_names)}"
        layers = self._inject(host)
        self.site_names = list(layers)
        self.lora_A = nn.ModuleList(layers[n].lora_A[self.adapter_name] for n in self.site_names)
        self.lora_B = nn.ModuleList(layers[n].lora_B[self.adapter_name] for n in self.site_names)

    def _inject(self, host) -> dict[str, LoraLayer]:
        cfg = self.config
        peft_config = PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                     target_modules=self.targets)
        # peft activates only the new adapter model-wide; the other modules'
        # active adapters must survive this module's arrival.
        active = {n: list(m.active_adapters) for n, m in host.model.named_modules() if isinstance(m, LoraLayer)}
        # peft refuses GroundingDinoForObjectDetection itself (its tied-weights
        # check wants get_input_embeddings, which the model lacks); a plain
        # holder around it passes that check and wraps the same layers.
        holder = nn.Module()
        holder.add_module("host", host.model)
        with _requires_grad_kept(host.model):
            try:
                inject_adapter_in_model(peft_config, holder, adapter_name=self.adapter_name)
            except ValueError as err:  # peft: no module matched
                raise MethodError(f"lora: target_modules {self.targets} match no linear layer of the host") from err
            for name, layer in host.model.named_modules():
                if isinstance(layer, LoraLayer):
                    mine = [self.adapter_name] if self.adapter_name in layer.lora_A else []
                    layer.set_adapter(active.get(name, []) + mine)
        return _lora_layers(host.model, self.adapter_name)

    def install(self, host):
        layers = _lora_layers(host.model, self.adapter_name) or self._inject(host)
        for name, a, b in zip(self.site_names, self.lora_A, self.lora_B):
            layers[name].lora_A[self.adapter_name] = a  # our weights, also after a detach
            layers[name].lora_B[self.adapter_name] = b
        self._apply_enabled()
        return []

    def acts_inside(self, part) -> bool:
        return any(isinstance(m, LoraLayer) and self.adapter_name in m.lora_A for m in part.modules())

    def uninstall(self) -> None:
        model = self.host.model
        for name, layer in _lora_layers(model, self.adapter_name).items():
            layer.delete_adapter(self.adapter_name)
            if not layer.lora_A:  # no LoRA left here: put the original linear back
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, layer.get_base_layer())

    # Saved in peft's own naming, so the folder also loads with Hugging Face peft.
    def module_state(self) -> dict:
        state = {}
        for name, a, b in zip(self.site_names, self.lora_A, self.lora_B):
            state[f"base_model.model.{name}.lora_A.weight"] = a.weight
            state[f"base_model.model.{name}.lora_B.weight"] = b.weight
        return state

    def load_module_state(self, state: dict) -> None:
        own = self.module_state()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for key, tensor in own.items():
                tensor.copy_(state[key])

    def export_config(self) -> dict:
        cfg = self.config
        return {"peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
                "target_modules": list(self.targets), "bias": "none"}

    def on_enabled_changed(self) -> None:
        if self.attached:
            self._apply_enabled()

    def _apply_enabled(self) -> None:
        for layer in _lora_layers(self.host.model, self.adapter_name).values():
            others = [n for n in layer.active_adapters if n != self.adapter_name]
            with _requires_grad_kept(layer):
                layer.set_adapter(others + [self.adapter_name] if self.enabled else others)
