"""B10 positive control: does `make run`'s study find the demo's built-in effect?

The demo's FLAIR stand-in is pretrained on synthetic fundus images labelled with the
hypertensive-retinopathy signs drawn in them (search/demo/): its features carry the signs the
label depends on, by construction. The ImageNet stand-in saw no fundus. So FLAIR - ImageNet is
a known, real difference, and ImageNet - random has no built-in effect. Each study is the
shipped demo (search/configs/demo.yaml, its stand-ins, its search and evaluation protocol) on
another data seed (the synthetic images and the fold shuffling), run through the real
`start_search` and `start_evaluation`.

Recorded per primary comparison: in how many studies the printed verdict reads "flair ahead"
(Holm p < 0.05, so the simultaneous interval excludes 0) and the differences; for the
secondary comparisons, how many read q < 0.05. The target: FLAIR ahead in most studies.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.common import local_ray, main, write
from fundus_search.results.tables import verdict_sentences
from fundus_search.search.demo.weights import FLAIR_FILE, IMAGENET_FILE, make_demo_weights
from fundus_search.search.engine.tuner import start_search
from fundus_search.search.evaluate.retrain import EvaluationRequest, start_evaluation
from fundus_search.vocabulary import COMPARISONS_FILE

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "search" / "configs" / "demo.yaml"
SEEDS = (0, 1, 2, 3, 4)


def study_config(folder: Path, seed: int, weights: Path, *, tiny: bool) -> Path:
    """The shipped demo on data seed `seed` (tiny: 48 images, ImageNet and FLAIR under LP, 2 trials)."""
    config = yaml.safe_load(DEMO.read_text())
    config["data"]["synthetic"]["seed"] = config["data"]["seed"] = seed
    config["data"]["cache_dir"] = str(folder / "cache")
    config["model"]["inits"]["imagenet"]["path"] = str(weights / IMAGENET_FILE)
    config["model"]["inits"]["flair"]["path"] = str(weights / FLAIR_FILE)
    config["storage"]["path"] = str(folder / "runs")
    if tiny:
        config["data"]["synthetic"]["n"] = 48
        config["search"].update(num_samples=2, max_epochs=1)
        config["search"]["space"].update(init=["imagenet", "flair"], strategy=["lp"])
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def summarize(comparisons: pd.DataFrame) -> dict:
    """One study's printed verdict and what its comparisons found."""
    cv = comparisons[comparisons["split"] == "cv"]
    primary, secondary = cv[cv["family"] == "primary"], cv[cv["family"] != "primary"]
    verdict = verdict_sentences(comparisons)  # one sentence per primary row, in their order
    return {
        "verdict": verdict,
        "primary": {
            r.comparison: {
                "difference": round(float(r.difference), 4),
                "ci": [r.ci_low, r.ci_high],
                "p_adjusted": r.p_adjusted,
                "excludes_0": bool(r.ci_low > 0),
                "ahead": sentence.endswith(f"{r.name_a} ahead"),
            }
            for r, sentence in zip(primary.itertuples(), verdict, strict=True)
        },
        "secondary_q_below_0.05": sorted(secondary.loc[secondary["p_adjusted"] < 0.05, "comparison"]),
    }


def run(tiny: bool = False) -> dict:
    seeds = SEEDS[:1] if tiny else SEEDS
    start = time.perf_counter()
    studies = {}
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights" if tiny else ROOT / ".cache" / "demo-weights"  # what `make run` builds
        make_demo_weights(weights, **({"images": 8, "epochs": 1} if tiny else {}))
        for seed in seeds:
            folder = Path(tmp) / f"seed{seed}"
            folder.mkdir()
            began = time.perf_counter()
            request = EvaluationRequest(folds=(0,), repeats=1) if tiny else EvaluationRequest()
            with contextlib.redirect_stdout(io.StringIO()):
                search, _ = start_search(study_config(folder, seed, weights, tiny=tiny), name=f"seed{seed}")
                evaluation = start_evaluation(search.path, request)
            studies[seed] = {
                **summarize(pd.read_parquet(evaluation / COMPARISONS_FILE)),
                "seconds": round(time.perf_counter() - began, 1),
            }
            print(f"seed {seed}:", *studies[seed]["verdict"], sep="\n  ", flush=True)
    comparisons = sorted({c for s in studies.values() for c in s["primary"]})
    figures = {
        "studies": len(studies),
        "ahead": {c: sum(s["primary"].get(c, {}).get("ahead", False) for s in studies.values()) for c in comparisons},
        "interval_excludes_0": {
            c: sum(s["primary"].get(c, {}).get("excludes_0", False) for s in studies.values()) for c in comparisons
        },
        "secondary_q_below_0.05": {
            c: sum(c in s["secondary_q_below_0.05"] for s in studies.values())
            for c in sorted({c for s in studies.values() for c in s["secondary_q_below_0.05"]})
        },
        "by_seed": studies,
        "seconds": time.perf_counter() - start,
    }
    return write(
        "b10_positive_control",
        figures,
        tiny=tiny,
        target="the demo's primary comparisons read 'flair ahead' in most of 5 data seeds",
    )


if __name__ == "__main__":
    main(run, __doc__, ("studies", "ahead", "secondary_q_below_0.05", "seconds"))
