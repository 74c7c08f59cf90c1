"""B1 data path: augmented float batches from the uint8 image cache vs decoding PNGs every epoch.

Naive, as the FLAIR code does it: a torch DataLoader (2 workers) that opens each full-size
PNG with Pillow every epoch, resizes it to S x S and applies per-sample torchvision
transforms. Ours: rows of the decoded (N, S, S, 3) uint8 cache, converted and augmented as a
batch (data_io.augment). Both yield the same thing: augmented (B, 3, S, S) float batches.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from benchmarks.common import REPEATS, main, median, timed, write
from fundus_search.data_io import (
    DataSpec,
    augment,
    build_manifest,
    default_cache_dir,
    load_or_build_image_cache,
    to_float,
)
from fundus_search.data_io.preprocess import Preprocessing
from fundus_search.data_io.synthetic import generate_image

BATCH = 32


def camera_dataset(n: int, width: int, height: int) -> Path:
    """n synthetic fundus PNGs at camera size in the CGI-HRDC layout (written once, cached)."""
    root = default_cache_dir() / "bench" / f"camera-{n}-{width}x{height}"
    folder = root / "2-Hypertensive Retinopathy Classification"
    images = folder / "1-Images" / "1-Training Set"
    labels = folder / "2-Groundtruths" / "HRDC Hypertensive Retinopathy Classification Training Labels.csv"
    if labels.exists():
        return root
    images.mkdir(parents=True, exist_ok=True)

    def write_png(i: int) -> None:
        small = generate_image(np.random.default_rng([9, i]), 512, positive=bool(i % 2), difficulty=0.3)
        canvas = Image.new("RGB", (width, height))
        fundus = Image.fromarray(small).resize((height, height), Image.Resampling.BICUBIC)
        canvas.paste(fundus, ((width - height) // 2, 0))
        canvas.save(images / f"{i:05d}.png")

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow's resize and zlib release the GIL
        list(pool.map(write_png, range(n)))
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text("\n".join(["Image,Hypertensive Retinopathy", *(f"{i:05d}.png,{i % 2}" for i in range(n))]) + "\n")
    return root


class NaiveDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], size: int):
        self.paths = paths
        self.transform = v2.Compose(
            [
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Resize((size, size), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomAffine(degrees=10, scale=(0.9, 1.1)),
                v2.ColorJitter(brightness=0.2, contrast=0.2),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def naive_epoch(paths: list[Path], size: int) -> None:
    loader = torch.utils.data.DataLoader(NaiveDataset(paths, size), batch_size=BATCH, num_workers=2, shuffle=True)
    for _ in loader:
        pass


def cached_epoch(images: np.ndarray | torch.Tensor, generator: torch.Generator, *, augmented: bool = True) -> None:
    """Batches of the cache, augmented where `images` lives (a GPU tensor: as models.Trainer does)."""
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        batch = (
            images[idx.to(images.device)] if isinstance(images, torch.Tensor) else torch.from_numpy(images[idx.numpy()])
        )
        batch = to_float(batch)
        if augmented:
            augment(batch, generator)
    if isinstance(images, torch.Tensor) and images.is_cuda:
        torch.cuda.synchronize()


def run(tiny: bool = False, sizes: tuple[int, ...] | None = None) -> dict:
    n, width, height, default_sizes = (8, 400, 300, (64,)) if tiny else (200, 2000, 1500, (224, 512))
    sizes = sizes or default_sizes
    repeats = 1 if tiny else REPEATS
    root = camera_dataset(n, width, height)
    manifest = build_manifest(DataSpec(source="cgi-hrdc", root=root, task=2))
    paths = [manifest.absolute(i) for i in range(len(manifest))]
    figures = {"images": n, "camera_size": [width, height], "batch": BATCH, "repeats": repeats, "sizes": {}}
    torch.set_num_threads(2)
    for size in sizes:
        with tempfile.TemporaryDirectory() as fresh:  # the one-time decode, timed on an empty cache
            build = timed(partial(load_or_build_image_cache, manifest, Preprocessing(image_size=size), Path(fresh)), 1)
        cache = load_or_build_image_cache(manifest, Preprocessing(image_size=size), default_cache_dir() / "bench")
        images = np.asarray(cache.images)
        generator = torch.Generator().manual_seed(0)
        ours = timed(partial(cached_epoch, images, generator), repeats)
        delivery = timed(partial(cached_epoch, images, generator, augmented=False), repeats)
        naive = timed(partial(naive_epoch, paths, size), repeats)
        figures["sizes"][str(size)] = {
            "naive_epoch_seconds": naive,
            "cached_epoch_seconds": ours,
            "naive_images_per_second": n / median(naive),
            "cached_images_per_second": n / median(ours),
            "speedup": median(naive) / median(ours),
            "one_time_cache_build_seconds": build[0],
            # where the cached path spends its time: batches alone, without the CPU augmentation
            "cached_without_augmentation_images_per_second": n / median(delivery),
        }
        if torch.cuda.is_available():  # the cache uploaded once, augmentation on the GPU (models.Trainer's path)
            on_gpu = torch.from_numpy(images).cuda()
            cached_epoch(on_gpu, generator)  # warm-up
            gpu = timed(partial(cached_epoch, on_gpu, generator), repeats)
            figures["sizes"][str(size)].update(
                {
                    "cached_gpu_epoch_seconds": gpu,
                    "cached_gpu_images_per_second": n / median(gpu),
                    "speedup_gpu": median(naive) / median(gpu),
                }
            )
    figures["speedup_min"] = min(s["speedup"] for s in figures["sizes"].values())
    return write("b1_data_path", figures, target="cached >= 20x naive images/s", tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ("speedup_min", "sizes"))
