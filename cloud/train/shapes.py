"""A synthetic coloured-shapes image set: one folder per shape, RGB PNGs, made from a seed.

Nothing can be downloaded here, so this is the colour image set the image pipeline is shown
on: the class is the shape (circle, square, triangle, …); fill colour, background colour,
size and position are random, so colour alone does not give the class away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "ring")


@dataclass(frozen=True)
class ShapesConfig:
    """How many images, how large, how many classes (the first ``classes`` of :data:`SHAPES`), which seed."""

    per_class: int = 40
    size: int = 96
    classes: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {self.per_class}")
        if not 16 <= self.size <= 1024:
            raise ValueError(f"size must be in [16, 1024], got {self.size}")
        if not 2 <= self.classes <= len(SHAPES):
            raise ValueError(f"classes must be in [2, {len(SHAPES)}], got {self.classes}")


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 image of ``shape`` in a random colour on a random background."""
    from PIL import Image, ImageDraw

    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    while sum(abs(a - b) for a, b in zip(fill, background)) < 200:  # keep the shape visible
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    r = float(rng.uniform(0.2, 0.35)) * size
    cx, cy = (float(v) for v in rng.uniform(r + 2, size - r - 2, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        draw.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    return np.asarray(img, dtype=np.uint8)


def make_shapes(out: Path | str, config: ShapesConfig = ShapesConfig()) -> Path:
    """Write ``out/<shape>/<i>.png`` for each class; the same config gives the same bytes."""
    from PIL import Image

    root = Path(out)
    rng = np.random.default_rng(config.seed)
    for shape in SHAPES[: config.classes]:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(config.per_class):
            Image.fromarray(draw_shape(shape, config.size, rng)).save(root / shape / f"{i:04d}.png")
    return root
