"""A fundus-search model as a CGI-HRDC challenge submission (`model.py`).

`fundus-search export --format challenge` copies this file, unchanged, into the submission zip,
beside `model.pt2` (the network, saved by torch.export) and `preprocessing.json`. The challenge
imports it, calls `model().load(dir_path)`, then `predict(cv2.imread(path, 1))` once per image.

It imports only numpy, torch and OpenCV, the challenge's environment. fundus-search's own
preprocessing (Pillow's LANCZOS resize, scipy's fundus mask) is re-implemented here with numpy
and OpenCV, pixel for pixel; fundus-search's tests hold the two equal on every pixel.
"""

import functools
import json
import math
import os

import cv2
import numpy as np
import torch

NETWORK_FILE, PREPROCESSING_FILE = "model.pt2", "preprocessing.json"


class model:  # noqa: N801 (the challenge's name)
    """The challenge's interface: `load(dir_path)`, then `predict(image) -> 0 or 1`."""

    def __init__(self):
        self.network = None
        self.preprocessing = None

    def load(self, dir_path):
        """Read the network and its preprocessing from the submission's folder."""
        with open(os.path.join(dir_path, PREPROCESSING_FILE), encoding="utf-8") as f:
            self.preprocessing = json.load(f)
        self.network = torch.export.load(os.path.join(dir_path, NETWORK_FILE)).module()

    def predict(self, input_image):
        """1 (positive) or 0 for an image as `cv2.imread(path, 1)` returns it: (H, W, 3) uint8 BGR."""
        return int(self.prob_positive(input_image) >= self.preprocessing["threshold"])

    def prob_positive(self, input_image):
        """P(positive) of a (H, W, 3) uint8 BGR image."""
        rgb = np.ascontiguousarray(np.asarray(input_image)[:, :, ::-1])  # OpenCV's BGR -> RGB
        pixels = preprocess(rgb, self.preprocessing["image_size"], self.preprocessing["crop_foreground"])
        with torch.inference_mode():
            return float(self.network(torch.from_numpy(pixels[None]))[0])  # uint8 (1, S, S, 3) in


def preprocess(image, size, crop_foreground):
    """(H, W, 3) uint8 RGB -> (size, size, 3) uint8: fundus-search's `preprocess_image`."""
    if crop_foreground:
        image = crop_to_fundus(image)
    return resize_and_pad(image, size)


def resize_and_pad(image, size):
    """Long side to `size` px by Pillow's LANCZOS (width, then height), aspect kept, zero-padded
    bottom and right."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = image
    if new_w != w:
        resized = _resample(resized, new_w, axis=1)
    if new_h != h:
        resized = _resample(resized, new_h, axis=0)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    out[:new_h, :new_w] = resized
    return out


# Pillow's resampling (libImaging/Resample.c) for 8-bit images, one axis at a time: each output
# pixel a weighted sum of its input taps in int32, weights in fixed point (22 fractional bits),
# the sum rounded and clipped to uint8.
_PRECISION_BITS = 32 - 8 - 2
_LANCZOS_SUPPORT = 3.0


def _sinc(x):
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x):
    return _sinc(x) * _sinc(x / 3.0) if -3.0 <= x < 3.0 else 0.0


@functools.lru_cache(maxsize=16)  # a challenge's images mostly share a few sizes
def _taps(in_size, out_size):
    """(out_size, taps) int: the input pixels of each output pixel and their fixed-point weights."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    taps = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, taps), dtype=np.intp)
    weight = np.zeros((out_size, taps), dtype=np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for value in k:  # in order, as Pillow sums them
            total += value
        for x, value in enumerate(k):
            value = value / total if total != 0.0 else value
            fixed = -0.5 + value * (1 << _PRECISION_BITS) if value < 0 else 0.5 + value * (1 << _PRECISION_BITS)
            weight[xx, x] = int(fixed)  # C's (int) cast: toward zero
        index[xx] = xmin + np.minimum(np.arange(taps), max(xmax - 1, 0))  # unused taps weigh 0
    return index, weight


def _resample(image, out_size, axis):
    """uint8 (H, W, 3) resampled along `axis` (1: width, 0: height) to `out_size` px."""
    index, weight = _taps(image.shape[axis], out_size)
    moved = np.ascontiguousarray(np.moveaxis(image, axis, 0))  # the resampled axis first: (in, other, 3)
    total = np.full((out_size,) + moved.shape[1:], 1 << (_PRECISION_BITS - 1), dtype=np.int32)
    for t in range(index.shape[1]):
        total += moved[index[:, t]].astype(np.int32) * weight[:, t, None, None]
    # Pillow's clip8: total >> 22 (an arithmetic shift), clipped to [0, 255]
    out = np.clip(total >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


# The fundus disc against its surround: fundus-search's `fundus_mask`, with OpenCV's labelling
# in place of scipy's (both 4-connected).
_CORNER_SHARE, _SURROUND_DIFFERENCE, _MIN_DISC_SHARE = 0.04, 20, 0.05


def fundus_mask(image):
    """(H, W) bool mask of the fundus disc, or None when no region is large enough."""
    h, w = image.shape[:2]
    k = max(1, round(min(h, w) * _CORNER_SHARE))
    corners = np.concatenate(
        [c.reshape(-1, 3) for c in (image[:k, :k], image[:k, -k:], image[-k:, :k], image[-k:, -k:])]
    )
    surround = np.median(corners, axis=0)
    differs = np.abs(image.astype(np.int16) - surround.astype(np.int16)).max(axis=2) > _SURROUND_DIFFERENCE
    count, labels = cv2.connectedComponents(differs.astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    if count <= 1:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count)[1:]
    tied = np.flatnonzero(sizes == sizes.max()) + 1
    # scipy numbers regions in the order their first pixel appears: its first largest one
    first = [np.flatnonzero(labels.ravel() == label)[0] for label in tied]
    disc = _fill_holes(labels == tied[int(np.argmin(first))])
    return disc if disc.sum() >= _MIN_DISC_SHARE * h * w else None


def _fill_holes(mask):
    """scipy's binary_fill_holes: background not 4-connected to the border becomes foreground."""
    count, background = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S)
    edge = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return ~np.isin(background, edge[edge > 0])


def crop_to_fundus(image):
    """The fundus disc on black, cropped to its bounding box; the whole image when none is found."""
    disc = fundus_mask(image)
    if disc is None:
        return image
    rows, cols = np.flatnonzero(disc.any(axis=1)), np.flatnonzero(disc.any(axis=0))
    return (image * disc[:, :, None])[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
