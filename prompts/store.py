"""The module store: one folder per PEFT module, in the Hugging Face PEFT layout.

    adapter_config.json        method and config (for LoRA also a valid peft LoraConfig)
    adapter_model.safetensors  the module's tensors (LoRA keys in peft's naming)
    meta.json                  task, method, host fingerprint, sha256 of the weights,
                               metrics and anything else the caller records;
                               written last: a folder without it is incomplete

Loading checks everything before a tensor reaches the host: the folder is
complete, the method is known, the host fingerprint matches, the weights'
sha256 matches, and only safetensors is ever read (never pickle). A LoRA folder
saved by Hugging Face peft (no meta.json) loads too, checked against the
host's layer names and shapes instead of a fingerprint.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from continual.atomic import replaced_folder
from continual.faults import crash_point
from prompts.base import METHODS, MethodError, PeftModule, build_module

CONFIG, WEIGHTS, META = "adapter_config.json", "adapter_model.safetensors", "meta.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class StoreError(MethodError):
    """A module folder that cannot be loaded: incomplete, tampered, foreign or unsafe."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_module(module: PeftModule, folder: str | Path, host, **meta) -> Path:
    """Write the module to ``folder`` atomically (a temporary sibling, then a rename), in the PEFT layout
    (adapter_config.json, adapter_model.safetensors) with meta.json (task, method, host fingerprint, sha256).

        save_module(module, "modules/aquarium-sdpt", host, stream="mine", position=1)
    """
    with replaced_folder(folder) as tmp:
        config = {"peft_type": "CONTINUAL", "method": module.method, "config": module.config_dict(),
                  "task": module.task, "base_model_name_or_path": host.source}
        config.update(module.export_config())
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        # cloned: safetensors refuses tensors that share memory (tied heads in full_ft)
        state = {k: v.detach().cpu().clone() for k, v in module.module_state().items()}
        save_file(state, str(tmp / WEIGHTS))
        # the base it was built on: for full_ft the host itself has changed by now
        record = {"task": module.task, "phrases": list(module.phrases), "method": module.method,
                  "host_fingerprint": module.built_for, "sha256": file_sha256(tmp / WEIGHTS), **meta}
        (tmp / META).write_text(json.dumps(record, indent=2))
        crash_point("write:module")
    return Path(folder)


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: module folder not found")
    if not (folder / META).is_file():
        raise StoreError(f"{folder}: incomplete module (no {META}; it is written last)")
    return json.loads((folder / META).read_text())


def _weights_file(folder: Path) -> Path:
    """The safetensors file; a folder holding only pickle weights is refused, never read."""
    path = folder / WEIGHTS
    if not path.is_file():
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise StoreError(f"{folder}: only pickle weights ({', '.join(pickles)}); they are never loaded, "
                             f"save the module as {WEIGHTS}")
        raise StoreError(f"{folder}: no {WEIGHTS}")
    return path


def _read_weights(path: Path) -> dict:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise StoreError(f"{path}: unreadable safetensors file ({err})") from err


def load_module(folder: str | Path, host) -> PeftModule:
    """Load a module folder onto the host; returns the module attached, with its weights. A module saved on
    another host (fingerprint), or whose weights changed since, is refused.

        stack.push(load_module("runs/smoke/modules/00-base-adapter", host))
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: module folder not found")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except FileNotFoundError as err:
        raise StoreError(f"{folder}: no {CONFIG}") from err
    except json.JSONDecodeError as err:
        raise StoreError(f"{folder / CONFIG}: not valid JSON ({err})") from err
    if "method" not in config and config.get("peft_type") == "LORA":
        return _load_peft_lora(folder, config, host)
    meta = read_meta(folder)
    method = config.get("method")
    if method not in METHODS:
        raise StoreError(f"{folder}: unknown method {method!r}; known: {', '.join(sorted(METHODS))}")
    fingerprint = host.fingerprint()
    if meta.get("host_fingerprint") != fingerprint:
        raise StoreError(f"{folder}: module was trained on host {str(meta.get('host_fingerprint'))[:12]}, "
                         f"not on this one ({fingerprint[:12]}, {host.source})")
    weights = _weights_file(folder)
    if meta.get("sha256") != file_sha256(weights):
        raise StoreError(f"{weights}: sha256 does not match {META} (the file changed after it was saved)")
    state = _read_weights(weights)
    module = build_module(method, config.get("config", {}), task=meta.get("task"))
    module.phrases = tuple(meta.get("phrases", ()))  # none recorded: policy `route` never enables it
    module.attach(host, fingerprint)
    try:
        module.load_module_state(state)
    except RuntimeError as err:
        module.detach()
        raise StoreError(f"{folder}: weights do not fit a {method} module on this host ({err})") from err
    return module


def _load_peft_lora(folder: Path, config: dict, host) -> PeftModule:
    """A LoRA folder written by Hugging Face peft for this base model."""
    module = build_module("lora", {"r": config["r"], "alpha": config.get("lora_alpha", config["r"]),
                                   "dropout": config.get("lora_dropout", 0.0),
                                   "target_modules": list(config["target_modules"])}, task=config.get("task"))
    state = _read_weights(_weights_file(folder))
    module.attach(host)
    try:
        module.load_module_state(state)
    except (KeyError, RuntimeError) as err:
        module.detach()
        raise StoreError(f"{folder}: peft LoRA weights do not fit this host's layers ({err})") from err
    return module
