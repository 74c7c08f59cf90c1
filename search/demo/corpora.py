"""The demo's pretraining corpora: stand-ins for the data ImageNet and FLAIR were trained on.

- `generate_shapes_corpus`: natural-image-like pictures (a textured, coloured background with
  one large object of a labelled shape class and a few small distractors). Nothing in it looks
  like a fundus: a backbone pretrained on it learns generic edges, colours and shapes, as an
  ImageNet backbone does.
- `generate_pretraining_corpus`: synthetic fundus images labelled with the retinopathy signs
  that were drawn, never with the diagnosis: the stand-in for a foundation model's fundus data.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fundus_search.data_io.preprocess import resize_and_pad
from fundus_search.data_io.synthetic import draw_fundus

SHAPES = ("disc", "square", "triangle", "cross", "ring", "star")
_SUPERSAMPLE = 2
NARROWED_AVR = 0.55  # artery-to-vein width ratio below which arteries count as narrowed (normal: about 2/3)


def _polygon(kind: str, center: np.ndarray, radius: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * np.pi
        r = np.full(4, radius)
    elif kind == "triangle":
        t = np.array([0.5, 0.5 + 2 / 3, 0.5 + 4 / 3]) * np.pi
        r = np.full(3, radius)
    elif kind == "star":
        t = np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, radius, radius * 0.45)
    else:  # cross
        t = np.arange(12) * np.pi / 6 + np.pi / 12
        r = np.where(np.arange(12) % 3 == 1, radius, radius * 0.5)
    t = t + angle
    return [tuple(p) for p in np.stack([np.cos(t) * r, np.sin(t) * r], 1) + center]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, center, radius: float, angle: float, color) -> None:
    if kind == "disc":
        draw.ellipse([center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius], fill=color)
    elif kind == "ring":
        draw.ellipse(
            [center[0] - radius, center[1] - radius, center[0] + radius, center[1] + radius],
            outline=color,
            width=max(2, int(radius * 0.35)),
        )
    else:
        draw.polygon(_polygon(kind, np.asarray(center), radius, angle), fill=color)


def generate_shape_image(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """One picture whose large object is SHAPES[label], (size, size, 3) uint8."""
    side = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:side, 0:side] / side
    c0, c1 = rng.random(3), rng.random(3)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * xx + np.sin(direction) * yy)[..., None]
    freq = rng.uniform(4, 16)
    stripes = 0.15 * np.sin(2 * np.pi * freq * (xx * np.cos(direction + 1) + yy * np.sin(direction + 1)))[..., None]
    field = np.clip(c0 + (c1 - c0) * ramp + stripes * rng.random() + rng.normal(0, 0.05, (side, side, 3)), 0, 1)
    image = Image.fromarray((field * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 3)):  # small distractors of any class
        _draw_shape(
            draw,
            SHAPES[rng.integers(len(SHAPES))],
            rng.uniform(0, side, 2),
            side * rng.uniform(0.05, 0.1),
            rng.uniform(0, 2 * np.pi),
            tuple(int(v) for v in rng.integers(0, 256, 3)),
        )
    center = rng.uniform(side * 0.35, side * 0.65, 2)
    _draw_shape(
        draw,
        SHAPES[label],
        center,
        side * rng.uniform(0.2, 0.32),
        rng.uniform(0, 2 * np.pi),
        tuple(int(v) for v in rng.integers(0, 256, 3)),
    )
    image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0, 1.0) * _SUPERSAMPLE))
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def generate_shapes_corpus(n: int, size: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A labelled generic corpus: images (n, size, size, 3) uint8, one-hot targets (n, 6), class names."""
    labels = np.arange(n) % len(SHAPES)
    images = np.stack(
        [generate_shape_image(np.random.default_rng([seed, 11, i]), size, int(label)) for i, label in enumerate(labels)]
    )
    return images, np.eye(len(SHAPES), dtype=np.float32)[labels], SHAPES


def generate_pretraining_corpus(n: int, size: int, *, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """A fundus corpus labelled with the signs that were drawn, not with a diagnosis.

    The stand-in for a foundation model's pretraining data (FLAIR learnt from text naming
    lesions): sign strengths are uniform, so each sign appears in part of the images, and the
    targets are the hypertensive-retinopathy signs themselves (haemorrhages, cotton-wool
    spots, arteriolar narrowing, AV nicking), never the label. A backbone pretrained on it
    carries the signs the downstream label depends on: the demo's built-in positive control.
    Drawn at twice `size` and resized as a dataset's images are; seeds are disjoint from
    datasets'. (No eye-side target: the pretraining's flips would make it noise.)

    Returns:
        images (n, size, size, 3) uint8, targets (n, 4) float32 in {0, 1}, target names.
    """
    names = ("haemorrhages", "cotton_wool", "narrowed_arteries", "av_nicking")
    images, targets = np.empty((n, size, size, 3), np.uint8), np.empty((n, len(names)), np.float32)
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        pixels, drawn = draw_fundus(rng, 2 * size, float(rng.random()), difficulty=0.5)
        images[i] = resize_and_pad(pixels, size)
        targets[i] = [drawn["haemorrhages"], drawn["cotton_wool"], drawn["avr"] < NARROWED_AVR, drawn["nicks"] > 0]
    return images, targets, names
