"""Synthetic fundus photographs with graded hypertensive-retinopathy signs, deterministic per seed.

Each image: black surround, a circular fundus with an orange-red radial gradient and
low-frequency texture, a bright optic disc, a darker macula, and a branching vessel tree
leaving the disc (veins thicker and darker than arteries). The positive class carries
hypertensive-retinopathy signs whose strength is drawn per image (Keith-Wagener-Barker
signs): arteriolar narrowing (lower artery-to-vein width ratio), AV nicking where an artery
crosses a vein, and, less often, flame haemorrhages and cotton-wool spots. `difficulty`
moves the two strength distributions together so the classes overlap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image, ImageDraw, ImageFilter

from fundus_search.data_io.cgi_hrdc import CGI_HRDC_TASKS, GROUNDTRUTHS, IMAGES
from fundus_search.data_io.spec import SyntheticSpec

GENERATOR_VERSION = 2  # bump when the pixels for a given seed change (2: lesions visible at 32 px)
_SUPERSAMPLE = 2  # draw at 2x and downsample: antialiased vessels for free
_VEIN_COLOR = np.array([0.42, 0.07, 0.05])
_ARTERY_COLOR = np.array([0.72, 0.16, 0.08])


def sign_strength(rng: np.random.Generator, positive: bool, difficulty: float) -> float:
    """Per-image strength of retinopathy signs in [0, 1]; the classes overlap as difficulty grows."""
    if positive:
        return float(np.clip(rng.normal(1.0 - 0.6 * difficulty, 0.25), 0.0, 1.0))
    return float(np.clip(rng.normal(0.25 * difficulty, 0.15), 0.0, 1.0))


def _background(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Fundus colour field (side, side, 3) float in [0, 1] and the circular mask (side, side)."""
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1) * 2 - 1
    r2 = xx**2 + yy**2
    texture = rng.random((6, 6)).astype(np.float32)
    texture = np.asarray(Image.fromarray(texture).resize((side, side), Image.Resampling.BICUBIC))
    tint = rng.uniform(0.85, 1.1)  # pigmentation differs between eyes
    field = np.stack(
        [
            (0.80 - 0.30 * r2) * tint,
            (0.36 - 0.18 * r2) * tint * rng.uniform(0.85, 1.15),
            np.full_like(r2, 0.10 + 0.04 * rng.random()),
        ],
        axis=2,
    ) + 0.06 * (texture[:, :, None] - 0.5)
    mask = r2 <= 0.92**2
    return np.clip(field, 0, 1), mask


def _blob(field: np.ndarray, center: tuple[float, float], radius: float, color, strength: float) -> None:
    """Blend a Gaussian blob of `color` into `field` in place (disc, macula)."""
    side = field.shape[0]
    yy, xx = np.mgrid[0:side, 0:side]
    weight = strength * np.exp(-((xx - center[0]) ** 2 + (yy - center[1]) ** 2) / (2 * radius**2))
    field += weight[:, :, None] * (np.asarray(color) - field)


def _grow_vessel(rng, start, angle, width, length, depth, step, out) -> None:
    """Random-walk `length` steps of `step` px from `start`, branching in two until `depth` runs out."""
    points = [np.asarray(start, dtype=float)]
    for _ in range(int(length)):
        angle += rng.normal(0, 0.12)
        points.append(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    out.append((np.asarray(points), width))
    if depth > 0 and width > 1.2:
        for turn in (-1, 1):
            _grow_vessel(
                rng,
                points[-1],
                angle + turn * rng.uniform(0.3, 0.7),
                width * 0.72,
                length * rng.uniform(0.6, 0.9),
                depth - 1,
                step,
                out,
            )


def _vessel_tree(rng, disc, macula, vein_width, avr, side) -> tuple[list, list]:
    """Veins and arteries leaving the disc: two arcades toward the macula, two nasal branches."""
    to_macula = np.arctan2(macula[1] - disc[1], macula[0] - disc[0])
    veins, arteries = [], []
    for offset in (-1.1, 1.1, np.pi - 0.8, np.pi + 0.8):
        base = to_macula + offset + rng.normal(0, 0.1)
        length = rng.uniform(14, 20)
        _grow_vessel(rng, disc, base + rng.normal(0, 0.15), vein_width, length, 3, side / 64, veins)
        _grow_vessel(rng, disc, base + rng.normal(0, 0.15), vein_width * avr, length, 3, side / 64, arteries)
    return veins, arteries


def _crossings(veins, arteries, min_gap: float) -> list[np.ndarray]:
    """Points where an artery passes over a vein, at least `min_gap` px apart."""
    vein_pts = np.concatenate([p for p, _ in veins])
    found: list[np.ndarray] = []
    for pts, _ in arteries:
        d = np.linalg.norm(pts[:, None, :] - vein_pts[None, :, :], axis=2).min(axis=1)
        for p in pts[d < min_gap * 0.2]:
            if all(np.linalg.norm(p - q) > min_gap for q in found):
                found.append(p)
    return found


def _rgb(color, brightness) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(np.asarray(color) * brightness * 255, 0, 255))


def generate_image(rng: np.random.Generator, size: int, *, positive: bool, difficulty: float) -> np.ndarray:
    """One synthetic fundus image, (size, size, 3) uint8."""
    return draw_fundus(rng, size, sign_strength(rng, positive, difficulty), difficulty)[0]


def draw_fundus(rng: np.random.Generator, size: int, s: float, difficulty: float) -> tuple[np.ndarray, dict]:
    """A fundus with retinopathy signs of strength `s`: the image and what was drawn.

    Returns:
        (size, size, 3) uint8 and attributes: `right_eye`, `haemorrhages`, `cotton_wool`
        (0/1), `avr` (artery-to-vein width ratio), `nicks` (count).
    """
    side = size * _SUPERSAMPLE
    field, mask = _background(rng, side)
    c = side / 2
    eye = rng.choice([-1, 1])  # left or right eye: the disc sits on the nasal side
    macula = (c - eye * side * 0.06 + rng.normal(0, side * 0.02), c + rng.normal(0, side * 0.02))
    disc = (c + eye * side * 0.24 + rng.normal(0, side * 0.02), c + rng.normal(0, side * 0.03))
    _blob(field, macula, side * 0.07, (0.35, 0.10, 0.05), 0.6)
    brightness = rng.uniform(0.8, 1.15)
    image = Image.fromarray((np.clip(field * brightness, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)

    # Arteriolar narrowing: a normal artery-to-vein width ratio is about 2/3.
    avr = 0.72 - 0.35 * s + rng.normal(0, 0.03 + 0.03 * difficulty)
    vein_width = side * rng.uniform(0.020, 0.026)
    veins, arteries = _vessel_tree(rng, disc, macula, vein_width, float(np.clip(avr, 0.3, 0.9)), side)
    for pts, width in veins:
        draw.line(
            [tuple(p) for p in pts], fill=_rgb(_VEIN_COLOR, brightness), width=max(1, round(width)), joint="curve"
        )
    # AV nicking: the vein vanishes on both sides of an artery crossing it.
    crossings = _crossings(veins, arteries, min_gap=side * 0.05)[: rng.poisson(4 * s)]
    for p in crossings:
        r = vein_width * 1.3
        x, y = int(np.clip(p[0], 0, side - 1)), int(np.clip(p[1], 0, side - 1))
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=_rgb(field[y, x], brightness))
    for pts, width in arteries:
        draw.line(
            [tuple(p) for p in pts], fill=_rgb(_ARTERY_COLOR, brightness), width=max(1, round(width)), joint="curve"
        )

    draw.ellipse(
        [disc[0] - side * 0.055, disc[1] - side * 0.065, disc[0] + side * 0.055, disc[1] + side * 0.065],
        fill=_rgb((1.0, 0.88, 0.62), brightness),
    )
    haemorrhages, cotton_wool = rng.random() < 0.9 * s, rng.random() < 0.7 * s
    if haemorrhages:  # flame haemorrhages: elongated, dark red, near the vessels
        for _ in range(rng.integers(3, 7)):
            pts, _w = veins[rng.integers(len(veins))]
            center = pts[rng.integers(len(pts))] + rng.normal(0, side * 0.02, 2)
            _draw_ellipse(
                draw,
                center,
                side * rng.uniform(0.05, 0.08),
                side * 0.03,
                rng.uniform(0, np.pi),
                _rgb((0.24, 0.02, 0.02), brightness),
            )
    if cotton_wool:  # cotton-wool spots: pale, fluffy
        for _ in range(rng.integers(1, 4)):
            center = np.array([c, c]) + rng.normal(0, side * 0.18, 2)
            _draw_ellipse(
                draw, center, side * 0.035, side * 0.026, rng.uniform(0, np.pi), _rgb((0.95, 0.88, 0.72), brightness)
            )

    image = image.filter(ImageFilter.GaussianBlur(radius=0.8 * _SUPERSAMPLE))
    pixels = np.asarray(image).copy()
    pixels[~mask] = 0
    noise = rng.normal(0, 3, pixels.shape)
    pixels = np.clip(pixels + noise * mask[:, :, None], 0, 255).astype(np.uint8)
    attributes = {
        "right_eye": int(eye > 0),
        "haemorrhages": int(haemorrhages),
        "cotton_wool": int(cotton_wool),
        "avr": float(avr),
        "nicks": len(crossings),
    }
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BOX)), attributes


def _draw_ellipse(draw, center, a, b, theta, fill) -> None:
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = (rot @ np.stack([x, y])).T + center
    draw.polygon([tuple(p) for p in pts], fill=fill)


def generate_labels(spec: SyntheticSpec) -> np.ndarray:
    """(n,) 0/1 labels with exactly round(n * positive_fraction) positives, shuffled by seed."""
    n_pos = round(spec.n * spec.positive_fraction)
    labels = np.array([1] * n_pos + [0] * (spec.n - n_pos), dtype=np.int64)
    np.random.default_rng([spec.seed, 1]).shuffle(labels)
    return labels


def write_cgi_hrdc(spec: SyntheticSpec, out_dir: str | Path, *, task: int = 2) -> Path:
    """Write the dataset in the released CGI-HRDC layout under `out_dir`; return `out_dir`.

    Image i is drawn from its own generator seeded (seed, i), so any subset is reproducible.
    """
    folder, label_file, column = CGI_HRDC_TASKS[task]
    image_dir = Path(out_dir, folder, *IMAGES)
    truth_dir = Path(out_dir, folder, GROUNDTRUTHS)
    image_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"Image,{column}"]
    for i, label in enumerate(generate_labels(spec)):
        rng = np.random.default_rng([spec.seed, 2, i])
        pixels = generate_image(rng, spec.size, positive=bool(label), difficulty=spec.difficulty)
        Image.fromarray(pixels).save(image_dir / f"{i:05d}.png", compress_level=1)
        lines.append(f"{i:05d}.png,{label}")
    (truth_dir / label_file).write_text("\n".join(lines) + "\n")
    return Path(out_dir)


def ensure_synthetic_dataset(spec: SyntheticSpec, cache_root: Path) -> Path:
    """The dataset for `spec` in the cache (CGI-HRDC layout, task 2), written once."""
    payload = json.dumps({**asdict(spec), "version": GENERATOR_VERSION}, sort_keys=True)
    target = Path(cache_root) / hashlib.sha256(payload.encode()).hexdigest()[:16]
    if (target / "spec.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "spec.json").exists():
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            write_cgi_hrdc(spec, tmp, task=2)
            (tmp / "spec.json").write_text(payload)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return target
