"""B6 GPU: ResNet-50 fine-tuning and feature extraction at 512 px, bf16 autocast, channels_last,
with and without torch.compile: images/s, achieved TFLOP/s, seconds per CGI-HRDC-sized FT epoch.

Runs only where CUDA is present; elsewhere it prints a skip line and writes a skip record.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models import InitSpec, build_feature_net
from models.backbones import Classifier, Head

from .common import REPEATS, main, median, write

EPOCH_IMAGES = 570  # CGI-HRDC: 712 training images, 4/5 of them train in a 5-fold split


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
        print("b6_gpu: skipped (no CUDA device)")
        return write("b6_gpu", {"skipped": "no CUDA device"}, target="report only", tiny=tiny)
    size, batch, steps = (64, 4, 3) if tiny else (512, 32, 20)
    figures = {"image_size": size, "batch": batch, "results": {}}
    for compiled in (False, True):
        net = build_feature_net(InitSpec(source="random"), "resnet50")
        model = Classifier(net, Head(net.feature_dim, 2)).cuda().to(memory_format=torch.channels_last)
        x = torch.rand(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (batch,), device="cuda")
        runner = torch.compile(model) if compiled else model
        for train in (True, False):
            name = ("ft" if train else "extract") + ("_compiled" if compiled else "")
            runner.train(train)
            measure(runner, x, y, train=train, steps=3)  # warm-up (and compilation)
            times = measure(runner, x, y, train=train, steps=steps)[: max(REPEATS, steps)]
            per_step = median(times)
            figures["results"][name] = {
                "step_seconds": times, "images_per_second": batch / per_step,
                "tflops": flops(model, x, y, train) / per_step / 1e12,
                "epoch_seconds_570_images": EPOCH_IMAGES / (batch / per_step),
            }
    return write("b6_gpu", figures, target="report only", tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ('results', 'skipped'))
