"""Parameter costs of a module on its host, for the cost tables."""
from __future__ import annotations

from prompts.base import PeftModule


def parameter_counts(host, module: PeftModule) -> dict[str, float]:
    """Trainable parameters of the module, total parameters of host plus module, and their ratio."""
    host_params = {id(p): p.numel() for p in host.model.parameters()}
    trainable = {id(p): p.numel() for p in module.trainable_parameters()}
    extra = {id(p): p.numel() for p in module.parameters() if id(p) not in host_params}
    total = sum(host_params.values()) + sum(extra.values())
    count = sum(trainable.values())
    return {"trainable_params": count, "total_params": total, "fraction": count / total}
