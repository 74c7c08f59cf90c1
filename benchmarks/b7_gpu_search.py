"""B7 GPU search: a whole CGI-HRDC-sized search on one GPU, and what a trial checkpoint costs.

Part 1, everywhere: the cost of one trial checkpoint through Ray's storage. Trials holding a real
ResNet-18 / ResNet-50 + AdamW state (what `models.Trainer.state_dict` saves for a fine-tuning
trial) report 5 epochs each through the real search stack, one at a time, alternately with a
checkpoint on every report and with none; the seconds of `torch.save` + `tune.report` per
report, side by side in one search.

Part 2, on CUDA only (elsewhere a skip line): the search of issue 15, on synthetic data of
CGI-HRDC's size (712 images generated at 64 px, upscaled to 512 by the preprocessing), ResNet-50,
imagenet / flair / random inits from weight files (random values: speed does not depend on them),
27 trials, ASHA grace 2 / reduction 3, 10 epochs, 5 folds, `gpus_per_trial {lp: 0.125, ft: 0.25,
lp_ft: 0.25}`, 2 CPUs a trial, run once per variant in one call (`VARIANTS`: checkpoint every
epoch, the old behaviour, against `benchmarks/b7_search.yaml` as shipped). Recorded per variant:
wall time, time to the first epoch, the trial span (first to last epoch report), aggregate
fine-tuning images/s over the span, GPU utilisation and memory sampled with `nvidia-smi` every
0.5 s during the span, and the seconds between consecutive epochs not spent in them (reporting
and checkpointing).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from ray import tune

from benchmarks.common import local_ray, machine, main, median, results_dir, write
from fundus_search.models import InitSpec, build_feature_net
from fundus_search.models.backbones import Classifier, Head
from fundus_search.models.pretrain import save_flair_checkpoint
from fundus_search.search.engine.tuner import start_search

CONFIG = Path(__file__).parent / "b7_search.yaml"
REPORTS = 5
VARIANTS = {  # overrides of b7_search.yaml; the first is the behaviour issue 15 measured
    "checkpoint_every_epoch": {"storage": {"checkpoint_every": 1}},
    "as_shipped": {},
}


# ---- part 1: one checkpoint through Ray's storage ----


def trainer_state(backbone: str) -> dict:
    """A fine-tuning trial's checkpoint: network, head and AdamW state after one step."""
    net = build_feature_net(InitSpec(source="random"), backbone)
    model = Classifier(net, Head(net.feature_dim, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return {"epoch": 1, "net": net.state_dict(), "head": model.head.state_dict(), "optimizer": optimizer.state_dict()}


def checkpoint_search(folder: Path, backbone: str, reports: int, pairs: int) -> list[dict]:
    """`pairs` x 2 trials, one after the other, of `reports` reports each: even trials save a
    checkpoint with every report, odd ones none. The seconds of each report (and of its save)."""
    log = folder / f"times-{backbone}.jsonl"

    def trial_fn(params, **kwargs):
        checkpoint = params["optuna_number"] % 2 == 0
        state = trainer_state(backbone)
        for epoch in range(1, reports + 1):
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                if checkpoint:
                    torch.save(state, Path(tmp) / "trainer.pt")
                saved = time.perf_counter()
                tune.report(
                    {"epoch": epoch, "val_average": 0.5, "epochs_planned": reports},
                    checkpoint=tune.Checkpoint.from_directory(tmp) if checkpoint else None,
                )
            with log.open("a") as out:
                out.write(
                    json.dumps(
                        {"checkpoint": checkpoint, "save_s": saved - start, "report_s": time.perf_counter() - saved}
                    )
                    + "\n"
                )

    config = {
        "name": "b7",
        "data": {"source": "synthetic", "synthetic": {"n": 20, "size": 32}, "image_size": 32, "folds": 2},
        "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
        "search": {
            "num_samples": 2 * pairs,
            "max_epochs": reports,
            "cover_cells": False,
            "scheduler": {"type": "fifo"},
            "space": {"strategy": ["ft"], "batch_size": [16]},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 1},
        "storage": {"path": str(folder / "runs")},
    }
    path = folder / f"b7-{backbone}.yaml"
    path.write_text(yaml.safe_dump(config))
    start_search(path, name=f"b7-{backbone}", train_fn=trial_fn)
    return [json.loads(line) for line in log.read_text().splitlines()]


def checkpoint_costs(tiny: bool) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ("resnet18",) if tiny else ("resnet18", "resnet50"):
            state_mb = _state_bytes(trainer_state(backbone)) / 1e6
            times = checkpoint_search(Path(tmp), backbone, reports=2 if tiny else REPORTS, pairs=1 if tiny else 2)
            with_ckpt = [r["save_s"] + r["report_s"] for r in times if r["checkpoint"]]
            bare = median([r["report_s"] for r in times if not r["checkpoint"]])
            out[backbone] = {
                "checkpoint_mb": state_mb,
                "report_with_checkpoint_seconds": median(with_ckpt),
                "report_without_checkpoint_seconds": bare,
                "save_seconds": median([r["save_s"] for r in times if r["checkpoint"]]),
                "checkpoint_seconds": median(with_ckpt) - bare,
            }
    return out


def _state_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    return 0


# ---- part 2: the search on a GPU ----


class GpuSampler:
    """`nvidia-smi` utilisation (%) and memory (MiB) of GPU 0 every `period` s, in a thread."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        query = ["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                util, memory = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split(",")
                self.samples.append((time.monotonic(), float(util), float(memory)))
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def during(self, start: float, end: float) -> dict:
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"gpu_utilisation_mean": None, "gpu_memory_peak_mib": None, "samples": 0}
        return {
            "gpu_utilisation_mean": float(np.mean([u for u, _ in inside])),
            "gpu_memory_peak_mib": max(m for _, m in self.samples),
            "samples": len(inside),
        }


class EpochClock(tune.Callback):
    """Driver-side monotonic time of the first and the last epoch report."""

    def __init__(self):
        self.first = self.last = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        self.first = self.first or now
        self.last = now


def make_weights(folder: Path) -> dict[str, Path]:
    """ResNet-50 weight files in torchvision's and FLAIR's layouts (random values)."""
    net = build_feature_net(InitSpec(source="random"), "resnet50")
    torchvision_file = folder / "resnet50-random.pth"
    torch.save(net.backbone.state_dict(), torchvision_file)
    return {"imagenet": torchvision_file, "flair": save_flair_checkpoint(net, folder / "flair_resnet.pth")}


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def search_config(folder: Path, weights: dict[str, Path], overrides: dict, tiny: bool) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    config["model"]["inits"]["imagenet"]["path"] = str(weights["imagenet"])
    config["model"]["inits"]["flair"]["path"] = str(weights["flair"])
    config["data"]["cache_dir"] = str(folder / "cache")
    config["storage"]["path"] = str(folder / "runs")
    if tiny:
        config = merge(
            config,
            {
                "data": {"synthetic": {"n": 60}, "image_size": 128},
                "model": {"backbone": "resnet50"},
                "search": {"num_samples": 9, "max_epochs": 2, "scheduler": {"grace_period": 1}},
            },
        )
    path = folder / "b7.yaml"
    path.write_text(yaml.safe_dump(merge(config, overrides)))
    return path


def gpu_search(folder: Path, weights: dict[str, Path], name: str, overrides: dict, tiny: bool) -> dict:
    clock = EpochClock()
    config = search_config(folder, weights, overrides, tiny)
    with GpuSampler() as gpu:
        start = time.monotonic()
        search, _ = start_search(config, name=name, extra_callbacks=(clock,))
        wall = time.monotonic() - start
    epochs = pd.read_parquet(search.epochs_file).sort_values(["trial_id", "epoch"])
    ft = epochs[epochs["phase"] == "ft"]
    ft_images = float((ft["images_per_second"] * ft["epoch_seconds"]).sum())
    # between two epoch reports of a trial, what the epochs themselves did not take: report + checkpoint
    gaps = epochs.groupby("trial_id")["time_total_s"].diff() - epochs["epoch_seconds"]
    span = clock.last - clock.first
    return {
        "wall_seconds": wall,
        "first_epoch_seconds": clock.first - start,
        "trial_span_seconds": span,
        "epochs": len(epochs),
        "ft_epochs": len(ft),
        "ft_epoch_seconds_median": float(ft["epoch_seconds"].median()),
        "ft_images_per_second_per_trial_median": float(ft["images_per_second"].median()),
        "ft_images_per_second_aggregate": ft_images / span,
        "seconds_between_epochs_outside_them": float(gaps.sum()),
        **gpu.during(clock.first, clock.last),
    }


def run(tiny: bool = False) -> dict:
    gpu_machine = {"num_cpus": None, "object_store_memory": None} if torch.cuda.is_available() else {}
    with local_ray(**gpu_machine):
        figures = {"checkpoint": checkpoint_costs(tiny)}
        if not torch.cuda.is_available():
            figures["search"] = {"skipped": "no CUDA device here: the search part runs on a GPU machine"}
            print("b7_gpu_search: no CUDA device; measured the checkpoint cost only (the search part needs a GPU)")
            kept = results_dir() / "b7_gpu_search.json"
            if kept.exists() and not tiny:  # keep the GPU machine's search figures
                previous = json.loads(kept.read_text())
                if "variants" in previous.get("search", {}):
                    figures["search"] = previous["search"]
        else:
            with tempfile.TemporaryDirectory() as tmp:
                weights = make_weights(Path(tmp))
                variants = {
                    name: gpu_search(Path(tmp), weights, f"b7-{name}", overrides, tiny)
                    for name, overrides in VARIANTS.items()
                }
            first, last = variants[next(iter(VARIANTS))], variants[list(VARIANTS)[-1]]
            figures["search"] = {
                "machine": machine(),
                "variants": variants,
                "wall_speedup": first["wall_seconds"] / last["wall_seconds"],
                "ft_throughput_ratio": last["ft_images_per_second_aggregate"] / first["ft_images_per_second_aggregate"],
            }
    return write(
        "b7_gpu_search",
        figures,
        tiny=tiny,
        target="one H100/H200: search <= 75 s wall, <= 15 s to the first epoch, >= 85% GPU utilisation, "
        ">= 1,100 FT img/s aggregate",
    )


if __name__ == "__main__":
    main(run, __doc__, ("checkpoint", "search"))
