"""`make bench`: every benchmark in turn, then a summary table (each figure a side-by-side ratio)."""

from __future__ import annotations

import argparse

from benchmarks import (
    b1_data_path,
    b2_lp_trials,
    b3_search_efficiency,
    b4_orchestration,
    b5_memory,
    b6_gpu,
    b7_gpu_search,
    b8_evaluation,
    b9_calibration,
    b9_real_nulls,
    b10_positive_control,
)

BENCHMARKS = {
    "b1_data_path": b1_data_path,
    "b2_lp_trials": b2_lp_trials,
    "b3_search_efficiency": b3_search_efficiency,
    "b4_orchestration": b4_orchestration,
    "b5_memory": b5_memory,
    "b6_gpu": b6_gpu,
    "b7_gpu_search": b7_gpu_search,
    "b8_evaluation": b8_evaluation,
    "b9_calibration": b9_calibration,
    "b9_real_nulls": b9_real_nulls,
    "b10_positive_control": b10_positive_control,
}


def summary_line(name: str, record: dict) -> str:
    if record.get("skipped"):
        return f"{name:<18} skipped: {record['skipped']}"
    figure = {
        "b1_data_path": lambda r: f"speedup {r['speedup_min']:.1f}x (min over sizes)",
        "b2_lp_trials": lambda r: f"speedup {r['speedup']:.1f}x",
        "b4_orchestration": lambda r: (
            f"overhead {100 * r['overhead_median']:.1f}%, first report after "
            f"{r['first_report_latency_median_seconds']:.2f} s"
        ),
        "b8_evaluation": lambda r: f"overhead {100 * r['overhead_median']:.1f}% over {r['runs_per_evaluation']} runs",
        "b9_calibration": lambda r: (
            f"null studies: printed tests <= {100 * r['max_false_positive_rate']:.1f}% "
            f"false positives, Holm family-wise <= {100 * r['max_family_wise_error_rate']:.1f}%"
        ),
        "b9_real_nulls": lambda r: (
            f"{r['studies']} real null studies: {100 * r['false_positive_rate']['rate']:.0f}% "
            f"false positives (95% CI {100 * r['false_positive_rate']['ci95'][0]:.0f}-"
            f"{100 * r['false_positive_rate']['ci95'][1]:.0f}%)"
        ),
        "b10_positive_control": lambda r: ", ".join(f"{c} ahead in {n}/{r['studies']}" for c, n in r["ahead"].items()),
        "b5_memory": lambda r: (
            f"2 sharing trials {r['shared_two_over_single']:.2f}x one trial "
            f"(own copies {r['own_copy_two_over_single']:.2f}x)"
        ),
        "b6_gpu": lambda r: (
            ", ".join(f"{k} {v['images_per_second']:.0f} img/s" for k, v in r["results"].items() if "error" not in v)
            + f"; Trainer FT epoch {r['trainer']['ft_epoch_seconds_median']:.2f} s"
        ),
        "b7_gpu_search": lambda r: (
            ", ".join(f"{k} checkpoint {v['checkpoint_seconds']:.2f} s" for k, v in r["checkpoint"].items())
            + "; "
            + (r["search"].get("skipped") or f"search {r['search']['wall_speedup']:.2f}x faster")
        ),
        "b3_search_efficiency": lambda r: (
            ", ".join(
                f"{m} {'-' if v['fraction_of_grid_epochs'] is None else format(v['fraction_of_grid_epochs'], '.0%')}"
                for m, v in r["methods"].items()
            )
            + " of grid epochs"
        ),
    }[name](record)
    return f"{name:<18} {figure:<60} target: {record['target']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="seconds-long sizes (the tests use this)")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    args = parser.parse_args()
    records = {name: module.run(args.tiny) for name, module in BENCHMARKS.items() if not args.only or name in args.only}
    print("\nsummary" + (" (tiny sizes: not meaningful figures)" if args.tiny else ""))
    for name, record in records.items():
        print(summary_line(name, record))


if __name__ == "__main__":
    main()
