"""Category phrases -> Grounding DINO text prompts with token spans.

Grounding DINO reads its classes off the text: "red circle . fish ." gives two
classes, the tokens between '.' delimiters (HF's ``build_label_maps``). A
category list longer than the text limit is split into several prompts, each
of whole phrases; detections from all of them are merged by the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.errors import DataError

DELIMITERS = (".", "?")  # Grounding DINO splits classes on these tokens


@dataclass(frozen=True)
class TextPrompt:
    """One tokenised prompt: which phrases (by index in the task list) it holds."""

    phrase_indices: tuple[int, ...]
    input_ids: torch.Tensor  # (1, L)
    attention_mask: torch.Tensor  # (1, L)
    token_type_ids: torch.Tensor  # (1, L)
    spans: tuple[tuple[int, int], ...]  # [start, end) token range of each phrase
    context_index: torch.Tensor | None = None  # (1, L): each context slot's position in its run, else -1


def check_phrase(phrase: str, index: int) -> str:
    text = " ".join(phrase.split())
    if not text:
        raise DataError(f"category phrase #{index} is empty; every category needs a non-empty phrase")
    if any(d in text for d in DELIMITERS):
        raise DataError(f"category phrase {phrase!r} contains '.' or '?', which Grounding DINO reads as a class delimiter")
    return text


def _encode(tokenizer, phrases: list[str], indices: list[int], context: list[int], mark_context: bool) -> TextPrompt:
    """[CLS] ctx.. phrase . ctx.. phrase . [SEP]; a phrase's span covers its context tokens too,
    as Grounding DINO's label maps take every token between delimiters."""
    ids, spans, slots = [tokenizer.cls_token_id], [], [-1]
    dot = tokenizer.convert_tokens_to_ids(".")
    for phrase in phrases:
        start = len(ids)
        words = tokenizer(phrase, add_special_tokens=False)["input_ids"]
        ids += context + words
        slots += list(range(len(context))) + [-1] * (len(words) + 1)
        spans.append((start, len(ids)))
        ids.append(dot)
    ids.append(tokenizer.sep_token_id)
    input_ids = torch.tensor([ids])
    index = torch.tensor([slots + [-1]]) if mark_context and context else None
    return TextPrompt(tuple(indices), input_ids, torch.ones_like(input_ids), torch.zeros_like(input_ids), tuple(spans),
                      index)


def build_prompts(tokenizer, phrases: list[str], max_text_len: int, context: list[int] = (),
                  mark_context: bool = False) -> list[TextPrompt]:
    """Pack the phrases, in order, into as few prompts as fit ``max_text_len`` tokens.

    ``context``: token ids of the slots that go before every phrase (CoOp's learned context); with
    ``mark_context`` they are ordinary tokens and each prompt's ``context_index`` says where the slots are.
    """
    if not phrases:
        raise DataError("a task needs at least one category phrase")
    cleaned = [check_phrase(p, i) for i, p in enumerate(phrases)]
    context = list(context)
    lengths = [len(context) + len(tokenizer(p, add_special_tokens=False)["input_ids"]) + 1 for p in cleaned]  # + '.'
    chunks, used = [[]], 2  # [CLS] and [SEP]
    for index, (phrase, length) in enumerate(zip(cleaned, lengths)):
        if length + 2 > max_text_len:
            raise DataError(f"category phrase {phrase!r} is {length + 2} tokens with delimiters and context, longer "
                            f"than the text encoder's limit of {max_text_len}")
        if used + length > max_text_len:
            chunks.append([])
            used = 2
        chunks[-1].append(index)
        used += length
    return [_encode(tokenizer, [cleaned[i] for i in chunk], chunk, context, mark_context) for chunk in chunks]
