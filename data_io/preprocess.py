"""Image decoding and geometric preprocessing: file -> (S, S, 3) uint8."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

log = logging.getLogger(__name__)

# The fundus disc is found against its surround, whatever the surround's colour: black in
# CGI-HRDC, white or grey on a scanned page. The surround's colour is the median of the four
# corners (a disc inscribed in its frame never covers them); a pixel belongs to the disc when
# one channel differs from that colour by more than _SURROUND_DIFFERENCE (of 255).
_CORNER_SHARE = 0.04  # side of each corner patch, as a share of the short side
_SURROUND_DIFFERENCE = 20  # CGI-HRDC's near-black surround stays under 20 in every channel
_MIN_DISC_SHARE = 0.05  # a component smaller than this share of the image is not a fundus


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides the pixels of the cached array (part of the cache key).

    Args:
        image_size: S in px: the long side is resized to S, then zero-padded to S x S.
        crop_foreground: find the fundus disc (see `fundus_mask`), set everything outside it
            to black (captions, logos, page colour) and crop to its bounding box before resizing.
    """

    image_size: int = 512
    crop_foreground: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def decode_image(path: str | Path) -> np.ndarray:
    """Decode any Pillow-readable file to (H, W, 3) uint8 RGB.

    EXIF orientation is applied; grayscale becomes 3 equal channels; RGBA and palette
    images are flattened onto black (the fundus surround); 16-bit images keep their top 8 bits.

    Raises:
        OSError, ValueError: the file does not decode (Pillow's own errors), or claims more
            pixels than Pillow's decompression-bomb limit (a ValueError that says so).
    """
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise ValueError(f"{exc.args[0].split(', could be')[0]} (Pillow's decompression-bomb limit)") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # (H, W) uint16 range -> uint8 by dropping the low byte
        gray = (np.asarray(img, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(black, img.convert("RGBA"))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def fundus_mask(image: np.ndarray) -> np.ndarray | None:
    """(H, W) bool mask of the fundus disc: the largest region that differs from the colour of
    the image's corners, holes filled. None when no region covers _MIN_DISC_SHARE of the image."""
    h, w = image.shape[:2]
    k = max(1, round(min(h, w) * _CORNER_SHARE))
    corners = np.concatenate(
        [c.reshape(-1, 3) for c in (image[:k, :k], image[:k, -k:], image[-k:, :k], image[-k:, -k:])]
    )
    surround = np.median(corners, axis=0)  # (3,)
    differs = np.abs(image.astype(np.int16) - surround.astype(np.int16)).max(axis=2) > _SURROUND_DIFFERENCE
    labels, count = ndimage.label(differs)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    disc = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    return disc if disc.sum() >= _MIN_DISC_SHARE * h * w else None


def crop_to_fundus(image: np.ndarray, *, name: str = "image") -> np.ndarray:
    """The fundus disc on black, cropped to its bounding box; the image unchanged (with a
    warning naming it) when no disc is found."""
    disc = fundus_mask(image)
    if disc is None:
        log.warning("%s: no fundus disc found against its surround; using the whole image", name)
        return image
    rows, cols = np.flatnonzero(disc.any(axis=1)), np.flatnonzero(disc.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return (image * disc[:, :, None])[top:bottom, left:right]


def resize_and_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the long side is `size` px (aspect kept, antialiased), zero-pad bottom/right.

    Pillow's LANCZOS runs one axis at a time, width then height: given both axes at once, the
    order of its two passes depends on the Pillow build (13.0.0 goes height first for some
    shapes), and so do the pixels. One axis per call pins them, and they are what the challenge
    export's numpy port reproduces exactly (models/challenge/model.py).
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray(image)
    resized = resized.resize((new_w, h), Image.Resampling.LANCZOS)  # no-op copy when new_w == w
    resized = resized.resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = np.zeros((size, size, 3), dtype=np.uint8)  # (S, S, 3) uint8
    out[:new_h, :new_w] = np.asarray(resized)
    return out


def preprocess_file(path: str | Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode, optionally crop to the fundus, resize and pad: the pixels a trial sees."""
    return preprocess_image(decode_image(path), preprocessing, name=str(path))


def preprocess_image(image: np.ndarray, preprocessing: Preprocessing, *, name: str = "image") -> np.ndarray:
    """A decoded (H, W, 3) uint8 image, optionally cropped to the fundus, resized and padded."""
    if preprocessing.crop_foreground:
        image = crop_to_fundus(image, name=name)
    return resize_and_pad(image, preprocessing.image_size)
