"""The words of the base world's categories: colour and shape words, and the ways to probe a grounding host.

Every base category is a colour word and a shape word ("red circle"). Each
colour and shape has words a pretraining recipe may use (``train``) and words
kept for probing only (``held_out``): a host that grounds language, rather
than memorised prompt tokens, should find "crimson ball" where it learned
"red circle", from what its text encoder knows of the words. ``swapped``
gives each category another category's colour word: a grounding host should
then find almost nothing of it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Words:
    train: tuple[str, ...]  # the first is the word the base world's phrases use
    held_out: tuple[str, ...]


COLOURS: dict[str, Words] = {
    "red": Words(("red", "scarlet", "cherry"), ("crimson",)),
    "blue": Words(("blue", "navy", "azure"), ("cobalt",)),
    "green": Words(("green", "emerald", "lime"), ("jade",)),
    "yellow": Words(("yellow", "golden", "lemon"), ("mustard",)),
    "purple": Words(("purple", "violet", "lilac"), ("plum",)),
    "orange": Words(("orange", "amber", "tangerine"), ("apricot",)),
}
# Short words: a training prompt names up to about 20 categories within the host's 64 text tokens.
SHAPES: dict[str, Words] = {
    "circle": Words(("circle", "disc", "dot"), ("ball",)),
    "square": Words(("square", "box", "block"), ("tile",)),
    "triangle": Words(("triangle", "wedge", "delta"), ("pyramid",)),
    "star": Words(("star", "asterisk", "starburst"), ("pentagram",)),
    "ring": Words(("ring", "hoop", "loop"), ("donut",)),
    "cross": Words(("cross", "plus", "crosshair"), ("crucifix",)),
}
# Colour words cycled between categories for the swapped probe (red is asked for as blue, ...).
SWAP = dict(zip(COLOURS, [*list(COLOURS)[1:], next(iter(COLOURS))]))


def split_phrase(phrase: str) -> tuple[str, str]:
    """("red", "circle") of a base phrase "red circle"."""
    colour, shape = phrase.split(" ", 1)
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"{phrase!r} is not a colour word and a shape word of tasks.vocabulary")
    return colour, shape


def held_out_phrase(phrase: str) -> str:
    """The category in words no pretraining used: "red circle" -> "crimson ball"."""
    colour, shape = split_phrase(phrase)
    return f"{COLOURS[colour].held_out[0]} {SHAPES[shape].held_out[0]}"


def swapped_phrase(phrase: str) -> str:
    """The category under the next colour's word: "red circle" -> "blue circle"."""
    colour, shape = split_phrase(phrase)
    return f"{SWAP[colour]} {shape}"


class PromptSampler:
    """Training prompts that name categories in words drawn anew at each step (the grounding recipe).

    ``sampler(targets) -> (phrases, targets)``: the categories present in the
    batch plus ``negatives`` absent ones (half of them, where there are enough,
    sharing a colour or a shape word with a present one: the pairs a host must
    tell apart by the other word), in random order, each named by a pretraining
    colour word and shape word drawn at random ("scarlet disc"); the targets'
    class labels are re-indexed into that list. Held-out words are never drawn.
    """

    def __init__(self, categories: list[str], negatives: int, seed: int = 0):
        import numpy as np

        self.parts = [split_phrase(c) for c in categories]
        self.negatives = negatives
        self.rng = np.random.default_rng(seed)

    def name(self, index: int) -> str:
        colour, shape = self.parts[index]
        return f"{self.rng.choice(COLOURS[colour].train)} {self.rng.choice(SHAPES[shape].train)}"

    def __call__(self, targets: list[dict]) -> tuple[list[str], list[dict]]:
        import torch

        present = sorted({int(c) for t in targets for c in t["class_labels"]})
        absent = [i for i in range(len(self.parts)) if i not in present]
        words = {w for i in present for w in self.parts[i]}
        hard = [i for i in absent if set(self.parts[i]) & words]
        count = min(self.negatives, len(absent))
        chosen = list(self.rng.permutation(hard)[:count // 2]) if hard else []
        rest = [i for i in absent if i not in chosen]
        chosen += list(self.rng.permutation(rest)[:count - len(chosen)])
        order = [int(i) for i in self.rng.permutation(present + chosen)]
        index = {category: position for position, category in enumerate(order)}
        relabelled = [{**t, "class_labels": torch.as_tensor([index[int(c)] for c in t["class_labels"]],
                                                            dtype=torch.long, device=t["class_labels"].device)}
                      for t in targets]
        return [self.name(i) for i in order], relabelled
