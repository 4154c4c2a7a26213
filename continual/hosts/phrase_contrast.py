"""A phrase-level contrastive term for Grounding DINO pretraining (MDETR's contrastive alignment, per phrase).

Grounding DINO's focal loss trains every (query, token) pair on its own, and a
negative phrase that a query scores at 0.16 beside its own at 0.17 costs almost
nothing there (the focal weight p^2 of a negative at 0.16 is 0.03), while that
margin is the ranking COCO AP reads. This term is a cross-entropy over the
prompt's phrases for each query matched to an object (a phrase's logit: the
mean of its tokens' logits), so the margin to every other phrase of the prompt
("blue circle" for a red circle) is trained whatever the level of the scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.loss.loss_grounding_dino import GroundingDinoHungarianMatcher


def phrase_contrast_loss(outputs, spans: list[tuple[int, int]], labels: list[dict], config) -> torch.Tensor:
    """Mean cross-entropy over the phrases ``spans`` of one prompt, for the final queries that Grounding DINO's
    own matcher (the same costs as its loss) assigns to the objects of ``labels`` (``class_labels``: phrase
    index into ``spans``; ``boxes``: cxcywh)."""
    logits = outputs.logits  # (B, Q, max_text_len), -inf past the prompt
    maps = torch.zeros(len(spans), logits.shape[-1], device=logits.device)
    for phrase, (start, end) in enumerate(spans):
        maps[phrase, start:end] = 1
    matcher = GroundingDinoHungarianMatcher(class_cost=config.class_cost, bbox_cost=config.bbox_cost,
                                            giou_cost=config.giou_cost)
    matches = matcher({"logits": logits, "pred_boxes": outputs.pred_boxes, "label_maps": (maps,) * len(labels)},
                      labels)
    phrase_logits = torch.stack([logits[..., start:end].mean(-1) for start, end in spans], -1)  # (B, Q, P)
    scores = torch.cat([phrase_logits[i, queries] for i, (queries, _) in enumerate(matches)])
    targets = torch.cat([label["class_labels"][objects.to(label["class_labels"].device)]
                         for label, (_, objects) in zip(labels, matches)])
    if len(targets) == 0:
        return phrase_logits.sum() * 0  # no object: nothing to contrast, the graph kept for backward
    return F.cross_entropy(scores, targets)
