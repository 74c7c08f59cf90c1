"""B6 GPU: ResNet-50 fine-tuning and feature extraction at 512 px, bf16 autocast, channels_last,
with and without torch.compile: images/s, achieved TFLOP/s, seconds per CGI-HRDC-sized FT epoch.

Two views: the bare step on one resident batch (the GPU's ceiling for this model), and the
product's own path: `models.Trainer` fine-tuning epochs over 570 uint8 training images (batch
from host memory, on-GPU augmentation, validation on 142 images included) and
`models.extract_features` over all 712 images. Runs only where CUDA is present; elsewhere it
prints a skip line and writes a skip record.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import REPEATS, main, median, results_dir, write
from fundus_search.models import InitSpec, Trainer, TrainSettings, build_feature_net, extract_features
from fundus_search.models.backbones import Classifier, Head

EPOCH_IMAGES = 570  # CGI-HRDC: 712 training images, 4/5 of them train in a 5-fold split
DATASET_IMAGES = 712


def measure(model, x, y, *, train: bool, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16), torch.set_grad_enabled(train):
            out = model(x)
            if train:
                loss = F.cross_entropy(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def flops(model, x, y, train: bool) -> int:
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
        if train:
            F.cross_entropy(out.float(), y).backward()
    return counter.get_total_flops()


def run(tiny: bool = False) -> dict:
    if not torch.cuda.is_available():
        kept = results_dir() / "b6_gpu.json"
        previous = json.loads(kept.read_text()) if kept.exists() and not tiny else {"skipped": True}
        if not previous.get("skipped"):  # figures from a GPU machine: keep them
            print(
                f"b6_gpu: skipped (no CUDA device); {kept} keeps the figures of {previous['when']} "
                f"on {previous['machine']['gpu']}"
            )
            return {**previous, "skipped": f"no CUDA device (figures of {previous['when']} kept)"}
        print("b6_gpu: skipped (no CUDA device)")
        return write("b6_gpu", {"skipped": "no CUDA device"}, target="report only", tiny=tiny)
    size, batch, steps = (64, 4, 3) if tiny else (512, 32, 20)
    figures = {"image_size": size, "batch": batch, "results": {}}
    for suffix, compiled, cudnn_benchmark in (
        ("", False, False),
        ("_compiled", True, False),
        ("_cudnn_benchmark", False, True),
    ):
        torch.backends.cudnn.benchmark = cudnn_benchmark
        try:
            figures["results"].update(step_figures(size, batch, steps, compiled=compiled, suffix=suffix))
        except Exception as error:  # a compiler failure on this machine is a finding, not a crash
            figures["results"][suffix.strip("_")] = {"error": repr(error)[:500]}
    torch.backends.cudnn.benchmark = False
    figures["trainer"] = trainer_figures(tiny)
    return write("b6_gpu", figures, target="report only", tiny=tiny)


def step_figures(size: int, batch: int, steps: int, *, compiled: bool, suffix: str) -> dict:
    """Bare FT and extraction steps on one resident batch: images/s, TFLOP/s, peak memory."""
    net = build_feature_net(InitSpec(source="random"), "resnet50")
    model = Classifier(net, Head(net.feature_dim, 2)).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device="cuda")
    runner = torch.compile(model) if compiled else model
    out = {}
    for train in (True, False):
        name = ("ft" if train else "extract") + suffix
        runner.train(train)
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        measure(runner, x, y, train=train, steps=3)  # warm-up (and compilation)
        warmup = time.perf_counter() - start
        times = measure(runner, x, y, train=train, steps=steps)
        per_step = median(times)
        out[name] = {
            "step_seconds": times,
            "images_per_second": batch / per_step,
            "tflops": flops(model, x, y, train) / per_step / 1e12,
            "epoch_seconds_570_images": EPOCH_IMAGES / (batch / per_step),
            "warmup_seconds": warmup,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
        }
    return out


def trainer_figures(tiny: bool, device: str = "cuda") -> dict:
    """FT epochs of the real Trainer and feature extraction, on random uint8 images of CGI-HRDC's size."""
    n, size, epochs = (40, 64, 3) if tiny else (DATASET_IMAGES, 512, 1 + REPEATS)
    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    labels = np.arange(n) % 2
    train_idx, val_idx = np.arange(n * EPOCH_IMAGES // DATASET_IMAGES), np.arange(n * EPOCH_IMAGES // DATASET_IMAGES, n)

    def build():
        return build_feature_net(InitSpec(source="random"), "resnet50")

    trainer = {}
    for resident in (False, True):  # batches copied from host memory vs indexed on the GPU
        settings = TrainSettings(
            strategy="ft", max_epochs=epochs, ft_lr=1e-4, batch_size=32, device=device, images_on_device=resident
        )
        fit = Trainer(
            settings,
            images=images,
            labels=labels,
            train_idx=train_idx,
            val_idx=val_idx,
            build_net=build,
            load_features=lambda: None,
        )
        seconds = [m["epoch_seconds"] for m in fit.epochs()][1:]  # the first pays cuDNN's warm-up
        trainer["images_on_gpu" if resident else "images_from_host"] = {
            "ft_epoch_seconds": seconds,
            "ft_epoch_seconds_median": median(seconds),
            "ft_images_per_second_incl_validation": len(train_idx) / median(seconds),
        }
    net = build()
    extract_features(net, images[:64], device=device)  # warm-up
    extract = []
    for _ in range(1 if tiny else REPEATS):
        start = time.perf_counter()
        extract_features(net, images, device=device)  # returns host memory: synchronised
        extract.append(time.perf_counter() - start)
    host, gpu = (
        trainer["images_from_host"]["ft_epoch_seconds_median"],
        trainer["images_on_gpu"]["ft_epoch_seconds_median"],
    )
    return {
        "images": n,
        "image_size": size,
        "train_images": len(train_idx),
        **trainer,
        "ft_epoch_seconds_median": gpu,
        "images_on_gpu_speedup": host / gpu,
        "extract_seconds": extract,
        "extract_images_per_second": n / median(extract),
    }


if __name__ == "__main__":
    main(run, __doc__, ("results", "trainer", "skipped"))
