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

    ``attributes``: the share of steps that name one attribute only, colour or
    shape in turn: every colour of the categories ("lime", "scarlet", ...), each
    box labelled by its own colour; or every shape. A host trained on whole
    phrases alone can lower its loss a long way by shape (after 6,000 steps
    without them its queries kept almost no colour: bench/grounding.py's linear
    probe told the six colours apart 20% of the time from the decoder's states,
    chance 17%, and 91% from the backbone's); "find the scarlet things" has no
    answer without colour.
    """

    def __init__(self, categories: list[str], negatives: int, seed: int = 0, attributes: float = 0.0):
        import numpy as np

        self.parts = [split_phrase(c) for c in categories]
        self.negatives = negatives
        self.attributes = attributes
        self.rng = np.random.default_rng(seed)
        self.attribute_steps = 0

    def state(self) -> dict:
        """What a resumed pretraining run needs to draw the same prompts from here on."""
        return {"rng": self.rng.bit_generator.state, "attribute_steps": self.attribute_steps}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.attribute_steps = state["attribute_steps"]

    def name(self, index: int) -> str:
        colour, shape = self.parts[index]
        return f"{self.rng.choice(COLOURS[colour].train)} {self.rng.choice(SHAPES[shape].train)}"

    def __call__(self, targets: list[dict]) -> tuple[list[str], list[dict]]:
        if self.attributes and self.rng.random() < self.attributes:  # no draw at 0: the whole-phrase recipe
            self.attribute_steps += 1
            return self.attribute_prompt(targets, part=self.attribute_steps % 2)  # shape, colour, shape, ...
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
        return [self.name(i) for i in order], _relabelled(targets, index)

    def attribute_prompt(self, targets: list[dict], part: int) -> tuple[list[str], list[dict]]:
        """Every value of one attribute (0: colour, 1: shape), in random order, each in a drawn word."""
        values = sorted({p[part] for p in self.parts})
        order = [str(v) for v in self.rng.permutation(values)]
        words = COLOURS if part == 0 else SHAPES
        index = {category: order.index(p[part]) for category, p in enumerate(self.parts)}
        return [str(self.rng.choice(words[v].train)) for v in order], _relabelled(targets, index)


def _relabelled(targets: list[dict], index: dict[int, int]) -> list[dict]:
    """The targets with each class label c replaced by index[c]."""
    import torch

    return [{**t, "class_labels": torch.as_tensor([index[int(c)] for c in t["class_labels"]], dtype=torch.long,
                                                  device=t["class_labels"].device)} for t in targets]
