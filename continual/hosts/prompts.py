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


def check_phrase(phrase: str, index: int) -> str:
    text = " ".join(phrase.split())
    if not text:
        raise DataError(f"category phrase #{index} is empty; every category needs a non-empty phrase")
    if any(d in text for d in DELIMITERS):
        raise DataError(f"category phrase {phrase!r} contains '.' or '?', which Grounding DINO reads as a class delimiter")
    return text


def _encode(tokenizer, phrases: list[str], indices: list[int]) -> TextPrompt:
    text, char_spans = "", []
    for phrase in phrases:
        char_spans.append((len(text), len(text) + len(phrase)))
        text += phrase + " . "
    enc = tokenizer(text.strip(), return_offsets_mapping=True, return_tensors="pt")
    offsets = enc["offset_mapping"][0].tolist()
    spans = []
    for (c0, c1) in char_spans:
        tokens = [i for i, (o0, o1) in enumerate(offsets) if o1 > o0 and o0 >= c0 and o1 <= c1]
        spans.append((tokens[0], tokens[-1] + 1))
    return TextPrompt(tuple(indices), enc["input_ids"], enc["attention_mask"],
                      enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])), tuple(spans))


def build_prompts(tokenizer, phrases: list[str], max_text_len: int) -> list[TextPrompt]:
    """Pack the phrases, in order, into as few prompts as fit ``max_text_len`` tokens."""
    if not phrases:
        raise DataError("a task needs at least one category phrase")
    cleaned = [check_phrase(p, i) for i, p in enumerate(phrases)]
    prompts, chunk = [], []
    for index, phrase in enumerate(cleaned):
        # phrase tokens + its '.' ; the prompt adds [CLS] and [SEP]
        alone = len(tokenizer(phrase, add_special_tokens=False)["input_ids"]) + 1
        if alone + 2 > max_text_len:
            raise DataError(f"category phrase {phrase!r} is {alone + 2} tokens with delimiters, longer than the "
                            f"text encoder's limit of {max_text_len}")
        trial = chunk + [index]
        if chunk and _encode(tokenizer, [cleaned[i] for i in trial], trial).input_ids.shape[1] > max_text_len:
            prompts.append(_encode(tokenizer, [cleaned[i] for i in chunk], chunk))
            trial = [index]
        chunk = trial
    prompts.append(_encode(tokenizer, [cleaned[i] for i in chunk], chunk))
    return prompts
