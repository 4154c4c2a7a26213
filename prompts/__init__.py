"""PEFT methods, one file each, behind one attach/enable interface (prompts.base)."""
import continual.compat  # noqa: F401  (torchvision shim before transformers/peft load)
from prompts import (adapter, apt, bitfit, coop, deep_prompt, dpt, full_ft, linear_probe, lora,  # noqa: F401
                     sdpt, vpt)  # (register methods)
from prompts.base import METHODS, MethodError, PeftModule, build_module, register_method
from prompts.costs import parameter_counts
from prompts.stack import POLICIES, Stack
from prompts.store import StoreError, load_module, save_module

__all__ = ["METHODS", "MethodError", "PeftModule", "POLICIES", "Stack", "StoreError", "build_module",
           "load_module", "parameter_counts", "register_method", "save_module"]
