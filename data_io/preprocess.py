"""Image decoding and geometric preprocessing: file -> (S, S, 3) uint8."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

# The fundus disc is bright in the red channel; the surround of a fundus photograph is near
# black. 20/255 separates the two on CGI-HRDC and on our synthetic images.
_FOREGROUND_RED_THRESHOLD = 20


@dataclass(frozen=True)
class Preprocessing:
    """Everything that decides the pixels of the cached array (part of the cache key).

    Args:
        image_size: S in px: the long side is resized to S, then zero-padded to S x S.
        crop_foreground: crop to the bounding box of the fundus (largest bright component
            of the red channel) before resizing.
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
        OSError, ValueError: the file does not decode (Pillow's own errors).
    """
    with Image.open(path) as img:
        img.load()
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


def foreground_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right) of the largest bright red-channel component.

    The whole image is returned when nothing exceeds the threshold.
    """
    mask = image[:, :, 0] > _FOREGROUND_RED_THRESHOLD  # (H, W) bool
    labels, count = ndimage.label(mask)
    if count == 0:
        return 0, 0, image.shape[0], image.shape[1]
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = ndimage.find_objects(labels)[int(np.argmax(sizes))]
    return rows.start, cols.start, rows.stop, cols.stop


def resize_and_pad(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the long side is `size` px (aspect kept, antialiased), zero-pad bottom/right."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.LANCZOS)
    out = np.zeros((size, size, 3), dtype=np.uint8)  # (S, S, 3) uint8
    out[:new_h, :new_w] = np.asarray(resized)
    return out


def preprocess_file(path: str | Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode, optionally crop to the fundus, resize and pad: the pixels a trial sees."""
    image = decode_image(path)
    if preprocessing.crop_foreground:
        top, left, bottom, right = foreground_box(image)
        image = image[top:bottom, left:right]
    return resize_and_pad(image, preprocessing.image_size)
