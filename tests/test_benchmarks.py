"""Each benchmark runs at a tiny size and writes a valid JSON record (no timing is asserted)."""

from __future__ import annotations

import json

import pytest

from benchmarks import run_all
from benchmarks.common import RESULTS_ENV

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def one_ray_for_all():
    """One local Ray for every tiny run (benchmarks.common.local_ray uses it): a start each is
    most of a tiny run."""
    import ray

    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 1024**2
    )
    yield
    ray.shutdown()


@pytest.mark.parametrize("name", sorted(run_all.BENCHMARKS))
def test_benchmark_runs_tiny_and_writes_json(name, tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))  # tiny runs write nothing into the checkout
    record = run_all.BENCHMARKS[name].run(tiny=True)
    written = json.loads((tmp_path / f"{name}.tiny.json").read_text())
    assert written["benchmark"] == name and written["tiny"] is True
    assert {"cpu", "cores"} <= written["machine"].keys() and written["versions"]["torch"]
    assert "target" in written and run_all.summary_line(name, record).startswith(name)
    if not written.get("skipped"):
        assert any(
            k in written
            for k in (
                "speedup",
                "speedup_min",
                "overhead_median",
                "shared_two_over_single",
                "results",
                "methods",
                "checkpoint",
                "max_false_positive_rate",
                "false_positive_rate",
                "ahead",
            )
        )
