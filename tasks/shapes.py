"""Drawing primitives for the synthetic worlds.

Each painter draws one object filling the box (x0, y0, x1, y1) on an ImageDraw;
it is called twice, once on the RGB image and once on a grey mask (with
``fill=255``), so the annotated box is the tight box of what was drawn. A few
painters take a ``detail`` colour for inner markings (a sign's white bar).
"""
from __future__ import annotations

import math
from typing import Callable

Box = tuple[float, float, float, float]
Painter = Callable[..., None]


def _lerp(box: Box, u: float, v: float) -> tuple[float, float]:
    """Point at fractions (u, v) of the box's width and height."""
    x0, y0, x1, y1 = box
    return x0 + u * (x1 - x0), y0 + v * (y1 - y0)


def _poly(draw, box, fill, points):
    draw.polygon([_lerp(box, u, v) for u, v in points], fill=fill)


def _star_points(n: int, inner: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * n):
        r = 0.5 if i % 2 == 0 else 0.5 * inner
        a = -math.pi / 2 + i * math.pi / n
        pts.append((0.5 + r * math.cos(a), 0.5 + r * math.sin(a)))
    return pts


def circle(draw, box, fill):
    draw.ellipse(box, fill=fill)


def square(draw, box, fill):
    draw.rectangle(box, fill=fill)


def triangle(draw, box, fill):
    _poly(draw, box, fill, [(0.5, 0), (1, 1), (0, 1)])


def star(draw, box, fill):
    _poly(draw, box, fill, _star_points(5, 0.45))


def ring(draw, box, fill):
    width = max(2, int((box[2] - box[0]) * 0.18))
    draw.ellipse(box, outline=fill, width=width)


def cross(draw, box, fill):
    _poly(draw, box, fill, [(0.35, 0), (0.65, 0), (0.65, 0.35), (1, 0.35), (1, 0.65), (0.65, 0.65),
                            (0.65, 1), (0.35, 1), (0.35, 0.65), (0, 0.65), (0, 0.35), (0.35, 0.35)])


def hexagon(draw, box, fill):
    _poly(draw, box, fill, [(0.25, 0), (0.75, 0), (1, 0.5), (0.75, 1), (0.25, 1), (0, 0.5)])


def diamond(draw, box, fill):
    _poly(draw, box, fill, [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)])


# -- aquarium -----------------------------------------------------------------
def fish(draw, box, fill):
    draw.ellipse(_sub(box, 0.0, 0.2, 0.75, 0.8), fill=fill)
    _poly(draw, box, fill, [(0.65, 0.5), (1, 0.15), (1, 0.85)])


def jellyfish(draw, box, fill):
    draw.pieslice(_sub(box, 0, 0, 1, 0.9), 180, 360, fill=fill)
    for u in (0.2, 0.4, 0.6, 0.8):
        _poly(draw, box, fill, [(u - 0.05, 0.45), (u + 0.05, 0.45), (u + 0.02, 1), (u - 0.02, 1)])


def starfish(draw, box, fill):
    _poly(draw, box, fill, _star_points(5, 0.3))


def shark(draw, box, fill):
    _poly(draw, box, fill, [(0, 0.6), (0.3, 0.4), (0.45, 0.05), (0.55, 0.4), (0.8, 0.45), (1, 0.2),
                            (0.95, 0.6), (1, 0.95), (0.8, 0.7), (0.3, 0.8)])


def crab(draw, box, fill):
    draw.ellipse(_sub(box, 0.2, 0.35, 0.8, 0.85), fill=fill)
    draw.ellipse(_sub(box, 0.0, 0.0, 0.25, 0.3), fill=fill)
    draw.ellipse(_sub(box, 0.75, 0.0, 1.0, 0.3), fill=fill)
    for u in (0.05, 0.85):
        draw.rectangle(_sub(box, u, 0.55, u + 0.1, 1.0), fill=fill)


# -- fruit ----------------------------------------------------------------------
def apple(draw, box, fill):
    draw.ellipse(_sub(box, 0, 0.15, 1, 1), fill=fill)
    draw.rectangle(_sub(box, 0.45, 0, 0.55, 0.2), fill=fill)


def banana(draw, box, fill):
    width = max(3, int((box[3] - box[1]) * 0.35))
    draw.arc(_sub(box, 0, -1.0, 1, 1), 20, 160, fill=fill, width=width)


def grapes(draw, box, fill):
    for u, v in ((0, 0), (0.33, 0), (0.66, 0), (0.17, 0.33), (0.5, 0.33), (0.33, 0.66)):
        draw.ellipse(_sub(box, u, v, u + 0.34, v + 0.34), fill=fill)


def pear(draw, box, fill):
    draw.ellipse(_sub(box, 0.25, 0, 0.75, 0.5), fill=fill)
    draw.ellipse(_sub(box, 0, 0.3, 1, 1), fill=fill)


# -- vehicles -------------------------------------------------------------------
def car(draw, box, fill):
    draw.rectangle(_sub(box, 0, 0.35, 1, 0.8), fill=fill)
    draw.rectangle(_sub(box, 0.2, 0.05, 0.75, 0.4), fill=fill)
    for u in (0.1, 0.65):
        draw.ellipse(_sub(box, u, 0.65, u + 0.25, 1), fill=fill)


def bus(draw, box, fill):
    draw.rectangle(_sub(box, 0, 0, 1, 0.85), fill=fill)
    for u in (0.1, 0.75):
        draw.ellipse(_sub(box, u, 0.7, u + 0.18, 1), fill=fill)


def bicycle(draw, box, fill):
    width = max(2, int((box[2] - box[0]) * 0.07))
    for u in (0, 0.55):
        draw.ellipse(_sub(box, u, 0.45, u + 0.45, 1), outline=fill, width=width)
    draw.line([_lerp(box, 0.22, 0.72), _lerp(box, 0.5, 0.3), _lerp(box, 0.78, 0.72)], fill=fill, width=width)
    draw.line([_lerp(box, 0.4, 0.0), _lerp(box, 0.55, 0.3)], fill=fill, width=width)


def boat(draw, box, fill):
    _poly(draw, box, fill, [(0, 0.65), (1, 0.65), (0.8, 1), (0.2, 1)])
    _poly(draw, box, fill, [(0.5, 0), (0.5, 0.6), (0.1, 0.6)])


def airplane(draw, box, fill):
    _poly(draw, box, fill, [(0, 0.45), (1, 0.4), (1, 0.55), (0, 0.58)])
    _poly(draw, box, fill, [(0.4, 0), (0.6, 0.45), (0.6, 0.55), (0.4, 1)])
    _poly(draw, box, fill, [(0, 0.2), (0.1, 0.45), (0.1, 0.58), (0, 0.8)])


# -- signs ----------------------------------------------------------------------
def octagon(draw, box, fill):
    a, b = 0.29, 0.71
    _poly(draw, box, fill, [(a, 0), (b, 0), (1, a), (1, b), (b, 1), (a, 1), (0, b), (0, a)])


def inverted_triangle(draw, box, fill):
    _poly(draw, box, fill, [(0, 0), (1, 0), (0.5, 1)])


def arrow(draw, box, fill):
    _poly(draw, box, fill, [(0, 0.35), (0.55, 0.35), (0.55, 0), (1, 0.5), (0.55, 1), (0.55, 0.65), (0, 0.65)])


def no_entry(draw, box, fill, detail=None):
    draw.ellipse(box, fill=fill)
    draw.rectangle(_sub(box, 0.15, 0.4, 0.85, 0.6), fill=detail or fill)


def parking(draw, box, fill, detail=None):
    draw.rectangle(box, fill=fill)
    draw.rectangle(_sub(box, 0.3, 0.15, 0.45, 0.85), fill=detail or fill)
    draw.ellipse(_sub(box, 0.3, 0.15, 0.75, 0.55), outline=detail or fill, width=max(2, int((box[2] - box[0]) * 0.12)))


# -- space ----------------------------------------------------------------------
def planet(draw, box, fill):
    draw.ellipse(_sub(box, 0.2, 0.2, 0.8, 0.8), fill=fill)
    draw.ellipse(_sub(box, 0, 0.4, 1, 0.6), outline=fill, width=max(2, int((box[3] - box[1]) * 0.06)))


def moon(draw, box, fill):
    # crescent: the left half of an ellipse minus a narrower half-ellipse
    ts = [math.pi * (i / 16 - 0.5) for i in range(17)]
    outer = [(0.5 - 0.5 * math.cos(t), 0.5 + 0.5 * math.sin(t)) for t in ts]
    inner = [(0.5 - 0.2 * math.cos(t), 0.5 + 0.5 * math.sin(t)) for t in reversed(ts)]
    _poly(draw, box, fill, outer + inner)


def rocket(draw, box, fill):
    _poly(draw, box, fill, [(0.5, 0), (0.7, 0.25), (0.7, 0.75), (0.9, 1), (0.1, 1), (0.3, 0.75), (0.3, 0.25)])


def comet(draw, box, fill):
    draw.ellipse(_sub(box, 0.6, 0.6, 1, 1), fill=fill)
    _poly(draw, box, fill, [(0, 0), (0.65, 0.6), (0.6, 0.65)])
    _poly(draw, box, fill, [(0.1, 0), (0.75, 0.62), (0.62, 0.7)])


def satellite(draw, box, fill):
    draw.rectangle(_sub(box, 0.38, 0.3, 0.62, 0.7), fill=fill)
    draw.rectangle(_sub(box, 0, 0.4, 0.35, 0.6), fill=fill)
    draw.rectangle(_sub(box, 0.65, 0.4, 1, 0.6), fill=fill)


def _sub(box: Box, u0: float, v0: float, u1: float, v1: float) -> Box:
    """The part of the box between fractions (u0, v0) and (u1, v1)."""
    a, b = _lerp(box, u0, v0), _lerp(box, u1, v1)
    return a[0], a[1], b[0], b[1]
