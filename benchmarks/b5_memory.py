"""B5 memory: two concurrent FT trials sharing the image array through Ray's object store vs each
loading its own copy, as multiples of one trial's memory.

Each trial maps (shared) or loads (own copy) an (N, S, S, 3) uint8 array, touches every page
of it as an epoch does, runs a few ResNet-18 FT steps, then reports its private memory (the
`Anonymous` pages of /proc/self/smaps_rollup: heap, tensors, a loaded copy). The memory of a
search is the trials' private memory plus, when shared, the array once (it lives in the object
store's shared memory, mapped by every trial on the node).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ray import tune

from benchmarks.common import REPEATS, local_ray, main, median, write
from fundus_search.data_io import to_float
from fundus_search.models import InitSpec, build_feature_net
from fundus_search.models.backbones import Classifier, Head


def trial(params: dict, *, images: np.ndarray | None = None, path: str | None = None) -> None:
    """Touch the whole array, train a few FT steps, report this process's private memory."""
    torch.set_num_threads(1)
    if images is None:
        images = np.load(path)  # this trial's own copy
    pages = images.reshape(len(images), -1)[:, ::4096]  # one byte per 4 KiB page
    checksum = int(pages.sum())
    net = build_feature_net(InitSpec(source="random"), "resnet18")
    model = Classifier(net, Head(net.feature_dim, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(3):
        x = to_float(torch.from_numpy(images[step * 8 : (step + 1) * 8]))
        loss = F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tune.report({"epoch": 1, "val_average": 0.0, "checksum": checksum, "private_bytes": private_bytes()})


def private_bytes() -> int:
    """Anonymous (private) resident memory of this process, from /proc/self/smaps_rollup (Linux)."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no Anonymous line in /proc/self/smaps_rollup")


def search(trials: int, **data) -> list[int]:
    """Private bytes of each of `trials` concurrent trials; the array comes via with_parameters or a path."""
    trainable = tune.with_resources(tune.with_parameters(trial, **data), {"CPU": 1})
    with tempfile.TemporaryDirectory() as storage:
        grid = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=trials, reuse_actors=False),
            run_config=tune.RunConfig(storage_path=storage, verbose=0),
        ).fit()
    return [result.metrics["private_bytes"] for result in grid]


def run(tiny: bool = False) -> dict:
    n, size, repeats = (64, 64, 1) if tiny else (6000, 256, REPEATS)
    array = n * size * size * 3
    figures = {
        "images": n,
        "image_size": size,
        "array_bytes": array,
        "repeats": repeats,
        "single_bytes": [],
        "shared_two_bytes": [],
        "own_copy_two_bytes": [],
    }
    with local_ray(object_store_memory=max(2 * array, 300 * 1024**2)), tempfile.TemporaryDirectory() as tmp:
        images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        path = Path(tmp) / "images.npy"
        np.save(path, images)  # made before each baseline: the driver's copy is not counted
        for _ in range(repeats):
            figures["single_bytes"].append(sum(search(1, images=images)) + array)
            figures["shared_two_bytes"].append(sum(search(2, images=images)) + array)
            figures["own_copy_two_bytes"].append(sum(search(2, path=str(path))))
    single = median(figures["single_bytes"])
    figures["shared_two_over_single"] = median(figures["shared_two_bytes"]) / single
    figures["own_copy_two_over_single"] = median(figures["own_copy_two_bytes"]) / single
    return write("b5_memory", figures, target="two sharing trials <= 1.3x one trial", tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ("shared_two_over_single", "own_copy_two_over_single"))
