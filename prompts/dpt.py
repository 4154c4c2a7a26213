"""DPT: dual-modality prompt tuning with class-aware visual prompts (Xing et al., TMM 2023).

Three parts, each one a config switch (the paper's ablations):
- text: CoOp, ``text_tokens`` unified context vectors, N(0, 0.02), before every
  class name (a ``coop`` module inside this one);
- image, in the blocks below the class-aware ones: VPT-deep, ``visual_tokens``
  tokens per block, dropped after it (a ``vpt`` module inside this one);
- CAVPT, in blocks ``layers_from`` .. last (default: the last one). Before the
  forward, each image's top-M classes by the zero-shot ranking (the host as this
  module found it, i.e. with this module off; M = ``class_prompts`` or the
  number of classes). In each CAVPT block, those classes' prompted text features
  (the text projection's output while the context is on) go through a linear map
  and become the queries of a single-head attention (d_k = ``attention_dim``, no
  biases) over the block's input tokens, detached, plus ``key_tokens`` learned
  tokens. LayerNorm(attention output + queries) are M class-aware prompts,
  appended for that block and dropped after it. A linear auxiliary classifier on
  LayerNorm(attention output) scores each prompt; its cross-entropy on the prompt
  of the image's ground-truth class, when that class is among the M, joins the
  loss with weight ``alpha``.

Objective, as the authors' script: for the first ``general_knowledge`` fraction
of the steps (30 of 60 epochs there), CE(zero-shot image, prompted text) +
CE(prompted image, hand-made text) + 0.1 CE(prompted image, prompted text); then
the last term alone; the auxiliary term throughout.

On a grounding host (Grounding DINO, the SDPT paper's DPT baseline on GLIP):
CoOp context before every phrase of the prompt, VPT-deep in every Swin block,
and CAVPT in the fusion layers ``layers_from`` .. last (default: the last):
each phrase's mean text feature entering the layer is a class query over the
image tokens entering it (detached) plus the learned tokens, and the prompts
join the image side of the layer's image-text attention (text queries attend
to them; their own rows are cut). Every phrase of the prompt gets a prompt (a
detection image holds several classes, so there is no top-M ranking), and there
is no auxiliary loss and no general-knowledge phase: both need one class per
image.

DPT is not the identity at attach, and cannot be: its context replaces the
hand-made template, and any appended token joins every attention softmax of its
block. With all three parts off it is the identity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prompts.base import MethodError, PeftModule, check_at_least, register_method
from prompts.coop import Coop, CoopConfig
from prompts.tokens import FusionKeys, add_fusion_keys, append_to_sequence
from prompts.vpt import VisualPromptTuning, VptConfig, block_width

GENERAL_KNOWLEDGE_MAIN_WEIGHT = 0.1  # the prompted-image-vs-prompted-text term's weight in that phase


@dataclass
class DptConfig:
    text_tokens: int = 16  # CoOp context vectors; 0 = no text prompts (the hand-made template)
    visual_tokens: int = 10  # VPT-deep tokens per block below CAVPT; 0 = no VPT
    class_prompts: int = 10  # M, top classes per image; 0 = no CAVPT (VPT-deep then covers every block)
    layers_from: int = -1  # first CAVPT block; negative counts from the end (-1: the last block only)
    key_tokens: int = 10  # learned tokens beside the block's tokens in CAVPT's keys and values
    attention_dim: int = 32  # d_k of CAVPT's attention
    alpha: float = 0.3  # weight of the auxiliary classification loss
    general_knowledge: float = 0.5  # fraction of the steps with the general-knowledge terms; 0 = never
    init_std: float = 0.02

    def __post_init__(self):
        for key in ("text_tokens", "visual_tokens", "class_prompts", "key_tokens"):
            check_at_least("dpt", key, getattr(self, key), 0)
        check_at_least("dpt", "attention_dim", self.attention_dim, 1)
        check_at_least("dpt", "alpha", self.alpha, 0)
        check_at_least("dpt", "general_knowledge", self.general_knowledge, 0)
        if isinstance(self.layers_from, bool) or not isinstance(self.layers_from, int):
            raise MethodError(f"dpt: layers_from must be a block index, got {self.layers_from!r}")


class ClassAwarePrompts(nn.Module):
    """One block's CAVPT: class text features -> class-aware prompts and the auxiliary head's input."""

    def __init__(self, text_dim: int, width: int, cfg: DptConfig):
        super().__init__()
        self.queries = nn.Linear(text_dim, width)  # the authors' meta-net
        self.q = nn.Linear(width, cfg.attention_dim, bias=False)
        self.k = nn.Linear(width, cfg.attention_dim, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.keys = nn.Parameter(torch.randn(cfg.key_tokens, width) * cfg.init_std)
        self.prompt_norm = nn.LayerNorm(width)
        self.head_norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor, class_text: torch.Tensor):
        """tokens (B, N, W), the block's input; class_text (B, M, D) -> prompts (B, M, W), head input (B, M, W)."""
        queries = self.queries(class_text.to(self.queries.weight.dtype))
        memory = torch.cat([tokens.detach().to(queries.dtype), self.keys.expand(tokens.shape[0], -1, -1)], 1)
        weights = (self.q(queries) @ self.k(memory).transpose(1, 2) / math.sqrt(self.q.out_features)).softmax(-1)
        attended = self.v(weights @ memory)
        return self.prompt_norm(attended + queries), self.head_norm(attended)


@register_method
class DualModalityPromptTuning(PeftModule):
    method = "dpt"
    Config = DptConfig
    default_lr = 0.01

    def __init__(self, config=None, task: str | None = None):
        super().__init__(config, task)
        self._batch: dict | None = None  # what the hooks and the objective need of the current batch
        self._ids: torch.Tensor | None = None  # grounding host: the running prompt's token ids

    def required_sites(self):
        return ("image_blocks", "text_embeddings")

    # -- construction -------------------------------------------------------------
    def build(self, host) -> None:
        """CAVPT in the last ViT blocks of a dual encoder, or in the fusion layers of a grounding host."""
        cfg = self.config
        if "projections" in host.site_kinds and host.block_layout("image_blocks") == "sequence":
            self.placement, sites = "image_blocks", host.sites("image_blocks")
        elif "fusion" in host.site_kinds:
            self.placement, sites = "fusion", host.sites("fusion")
        else:
            raise MethodError(f"dpt: class-aware prompts need ViT image blocks and projections (a dual encoder) or "
                              f"fusion layers (a grounding host); a {host.kind} host has {', '.join(host.site_kinds)}")
        names = list(sites)
        if not -len(names) <= cfg.layers_from < len(names):
            raise MethodError(f"dpt: layers_from {cfg.layers_from} out of range; the host has {len(names)} "
                              f"{'image blocks' if self.placement == 'image_blocks' else 'fusion layers'}")
        first = cfg.layers_from % len(names) if cfg.class_prompts else len(names)
        self.cavpt_sites = names[first:]
        # VPT-deep below the class-aware blocks; on a grounding host CAVPT sits after the backbone: every block
        below = list(range(first)) if self.placement == "image_blocks" else None
        self.text_prompts = Coop(CoopConfig(cfg.text_tokens, cfg.init_std), task=self.task)
        self.visual_prompts = VisualPromptTuning(VptConfig(cfg.visual_tokens, cfg.init_std, below), task=self.task)
        if self.placement == "image_blocks":
            dims = [(host.sites("projections")["text_projection"].out_features, block_width(sites[name]))
                    for name in self.cavpt_sites]
        else:  # the fusion attention's text and image inputs
            dims = [(sites[name].text_proj.in_features, sites[name].vision_proj.in_features)
                    for name in self.cavpt_sites]
        self.class_aware = nn.ModuleList(ClassAwarePrompts(text_dim, width, cfg) for text_dim, width in dims)
        self.heads = nn.ModuleList()  # auxiliary classifiers, sized to a task's classes by prepare()

    def prepare(self, task) -> None:
        """One auxiliary classifier per CAVPT block over the task's classes (training only)."""
        if self.config.alpha > 0 and self.placement == "image_blocks":
            self._make_heads(len(task.phrases))

    def _make_heads(self, classes: int) -> None:
        device = self.class_aware[0].keys.device if self.class_aware else None
        self.heads = nn.ModuleList(nn.Linear(part.v.out_features, classes, bias=False, device=device)
                                   for part in self.class_aware)

    def load_module_state(self, state: dict) -> None:
        if any(k.startswith("heads.") for k in state):
            self._make_heads(state["heads.0.weight"].shape[0])
        super().load_module_state(state)

    # -- hooks ------------------------------------------------------------------------
    def install(self, host):
        self.text_prompts.bind(host, self.built_for)
        self.visual_prompts.bind(host, self.built_for)
        host.batch_readers.append(self)
        if self.placement == "fusion":
            return self._install_fusion(host)
        projections = host.sites("projections")
        handles = [projections["text_projection"].register_forward_hook(self._keep_text),
                   projections["visual_projection"].register_forward_hook(self._keep_image)]
        blocks = host.sites("image_blocks")
        for i, name in enumerate(self.cavpt_sites):
            handles += append_to_sequence(blocks[name], self._class_prompts(i), self._cavpt_active)
        return handles

    def _install_fusion(self, host):
        """Grounding host: each phrase's mean text feature entering a CAVPT fusion layer is a class query;
        its class-aware prompt joins the image tokens of that layer's image-text attention."""
        (embeddings,) = host.sites("text_embeddings").values()
        handles = [embeddings.register_forward_hook(self._keep_ids)]
        fusion = host.sites("fusion")

        def keys(i):
            def keys_for(vision, text):
                if not self._cavpt_active():
                    return None
                spans = host.phrase_spans(self._ids[0])
                phrases = torch.stack([text[:, a:b].mean(1) for a, b in spans], 1)  # (B, P, d_text)
                prompts, _ = self.class_aware[i](vision, phrases)
                return FusionKeys(vision=prompts)
            return keys_for

        handles += [add_fusion_keys(fusion[name], keys(i)) for i, name in enumerate(self.cavpt_sites)]
        return handles

    def _keep_ids(self, module, args, output):
        if self.enabled:
            self._ids = args[0]  # the prompt's token ids (B, L), with the context slots

    def uninstall(self) -> None:
        self.text_prompts.detach()
        self.visual_prompts.detach()
        self.host.batch_readers.remove(self)
        self._batch = None

    def on_enabled_changed(self) -> None:
        self.text_prompts.enabled = self.visual_prompts.enabled = self.enabled

    def acts_inside(self, part: nn.Module) -> bool:
        return (super().acts_inside(part) or self.text_prompts.acts_inside(part)
                or self.visual_prompts.acts_inside(part))

    def read_batch(self, host, batch) -> None:
        """The zero-shot ranking -> each image's top-M classes; the batch's labels.

        The host calls this with the module off (Host.begin), so the ranking is
        the host's as this module found it.
        """
        if self.placement == "fusion":  # no per-image class to rank or to classify on a detection image
            return
        labels = torch.stack([t["label"] for t in batch.targets]) if batch.targets else None
        # "pass": what the current forward pass captured so far; "done": the last completed pass
        self._batch = {"labels": labels, "top": None, "pass": {"text": [], "aux": []}, "done": None}
        if not (self.config.class_prompts or labels is not None):
            return
        with torch.no_grad():
            text = host.text_features(batch.phrases, batch.template)
            image = host.image_features(batch.pixels)
        self._batch.update(zero_shot_text=text, zero_shot_image=image)
        if self.config.class_prompts:
            m = min(self.config.class_prompts, len(batch.phrases))
            self._batch["top"] = host.scores(image, text).topk(m, dim=-1).indices  # (B, M)

    def _keep_text(self, module, args, output):
        if self.enabled and self._batch is not None:
            self._batch["pass"]["text"].append(output)

    def _keep_image(self, module, args, output):
        """The image projection ends a forward pass (a reader above this one runs one of its own first)."""
        if self.enabled and self._batch is not None:
            self._batch["done"] = {**self._batch["pass"], "image": output}
            self._batch["pass"] = {"text": [], "aux": []}

    def _cavpt_active(self) -> bool:
        return self.enabled and self.config.class_prompts > 0

    def _class_prompts(self, i: int):
        """The tokens CAVPT block i appends: class-aware prompts of each image's top-M classes."""
        def tokens_for(x: torch.Tensor) -> torch.Tensor:
            batch = self._batch
            if batch is None or batch["top"] is None or not batch["pass"]["text"]:
                raise MethodError("dpt: the class-aware prompts need the batch's classes and their prompted text "
                                  "features first; go through the host's logits, loss or predict")
            if batch["top"].shape[0] != x.shape[0]:
                raise MethodError(f"dpt: the image tower got {x.shape[0]} images, the batch shown first had "
                                  f"{batch['top'].shape[0]}")
            text = torch.stack(batch["pass"]["text"]).mean(0)  # (C, D) prompted class features, not normalised
            prompts, head_input = self.class_aware[i](x, text[batch["top"]])
            if self.heads:
                batch["pass"]["aux"].append(self.heads[i](head_input))  # (B, M, C)
            return prompts
        return tokens_for

    # -- training objective ----------------------------------------------------------
    def objective(self, loss, progress: float):
        batch, cfg = self._batch, self.config
        if batch is None or batch["labels"] is None or batch["done"] is None:
            return loss
        host, labels, done = self.host, batch["labels"].to(loss.device), batch["done"]
        if progress < cfg.general_knowledge and done["text"]:
            prompted_text = F.normalize(torch.stack(done["text"]).mean(0), dim=-1)
            prompted_image = F.normalize(done["image"], dim=-1)
            loss = (GENERAL_KNOWLEDGE_MAIN_WEIGHT * loss
                    + F.cross_entropy(host.scores(batch["zero_shot_image"], prompted_text).float(), labels)
                    + F.cross_entropy(host.scores(prompted_image, batch["zero_shot_text"]).float(), labels))
        if cfg.alpha > 0 and done["aux"]:
            hit = batch["top"].to(labels.device) == labels[:, None]  # (B, M): the ground-truth class's prompt
            if hit.any():
                logits = torch.stack(done["aux"])[:, hit]  # (blocks, hits, C)
                targets = labels[:, None].expand_as(hit)[hit].repeat(logits.shape[0])
                loss = loss + cfg.alpha * F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets)
        return loss
