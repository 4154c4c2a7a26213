"""PEFT methods, one file each, behind one attach/enable interface (prompts.base)."""
import continual.compat  # noqa: F401  (torchvision shim before transformers/peft load)
from prompts.base import METHODS, MethodError, PeftModule, build_module, register_method
from prompts import adapter, bitfit, coop, full_ft, linear_probe, lora, sdpt, vpt  # noqa: F401  (each registers its method)

__all__ = ["METHODS", "MethodError", "PeftModule", "build_module", "register_method"]
