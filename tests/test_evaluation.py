"""`fundus-search evaluate` on a real tiny search: one run per configuration x repeat x fold x
seed, every image predicted once per configuration, repeat and seed in its held-out fold, the
answer printed verdict first, metrics recomputed from
the predictions, a test split outside every fold, kill and resume, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundus_search.data_io import split_indices
from fundus_search.results.answer import evaluation_table, load_evaluation, run_metrics
from fundus_search.search.cli.main import main
from tests.helpers import EVALUATED_FOLDS as FOLDS
from tests.helpers import EVALUATED_INITS as INITS
from tests.helpers import EVALUATED_REPEATS as REPEATS
from tests.helpers import EVALUATED_SEEDS as SEEDS

CV_RUNS = len(FOLDS) * REPEATS * SEEDS  # per configuration, and SEEDS on the test split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def search(evaluated_search) -> Path:
    return evaluated_search


@pytest.fixture(scope="module")
def evaluation(evaluated_search) -> Path:
    return evaluated_search / "evaluation"


def test_one_run_per_configuration_repeat_fold_and_seed_and_per_seed_on_the_test_split(evaluation):
    runs = pd.read_parquet(evaluation / "runs.parquet")
    cells = len(INITS) * 2
    assert len(runs) == cells * (CV_RUNS + SEEDS) and runs["run_id"].is_unique
    assert (runs["status"] == "completed").all()
    cv = runs[runs["split"] == "cv"]
    assert sorted(cv.groupby("config_id").size().unique()) == [CV_RUNS]
    assert set(cv["fold"]) == set(FOLDS) and set(runs["seed"]) == set(range(SEEDS))
    assert set(cv["repeat"]) == set(range(REPEATS))
    by_fold = cv.groupby(["repeat", "fold", "seed"])["train_seed"]
    assert (by_fold.nunique() == 1).all() and by_fold.first().is_unique, (
        "a training seed of its own on every fold, shared by every configuration there (paired)"
    )
    assert runs.loc[runs["split"] == "test", ["fold", "repeat"]].isna().all().all()
    protocol = json.loads((evaluation / "evaluation.json").read_text())["protocol"]
    assert protocol["repeats"] == REPEATS and protocol["seeds"] == SEEDS and protocol["test_images"] > 0
    assert protocol["primary"] == ["lp: random - scratch", "ft: random - scratch"]  # no pretrained init: every pair
    assert (runs["epochs"] >= 1).all() and runs["search_score"].notna().all()


def test_every_image_is_predicted_once_per_configuration_repeat_and_seed_in_its_held_out_fold(search, evaluation):
    from fundus_search.search.study.config import load_config

    config = load_config(search / "config.yaml")
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    labels, groups = _dataset(search)
    cv = predictions[predictions["split"] == "cv"]
    held_out = {
        (repeat, fold): set(
            split_indices(
                labels,
                groups,
                folds=config.data.folds,
                fold=fold,
                seed=config.data.seed,
                test_fraction=0.2,
                repeat=repeat,
            )[1]
        )
        for repeat in range(REPEATS)
        for fold in FOLDS
    }
    assert held_out[0, 0] != held_out[1, 0], "each repeat re-draws the partition"
    for (config_id, repeat, seed), rows in cv.groupby(["config_id", "repeat", "seed"]):
        where = f"{config_id} repeat {repeat} seed {seed}"
        assert rows["row"].is_unique, f"{where}: an image predicted twice"
        assert set(rows["row"]) == set().union(*(held_out[repeat, f] for f in FOLDS)), f"{where}: images missing"
        assert all(row in held_out[repeat, fold] for row, fold in zip(rows["row"], rows["fold"], strict=True)), (
            "predicted outside its fold"
        )


def test_metrics_recomputed_from_the_predictions_equal_the_runs(evaluation):
    runs = pd.read_parquet(evaluation / "runs.parquet").set_index("run_id")
    recomputed = run_metrics(pd.read_parquet(evaluation / "predictions.parquet")).set_index("run_id")
    for metric in ("kappa", "f1", "specificity", "average", "auc", "accuracy", "sensitivity"):
        assert np.allclose(recomputed.loc[runs.index, metric], runs[metric], atol=1e-12, equal_nan=True), metric


def test_the_test_split_shares_no_group_with_any_fold_or_the_search(search, evaluation):
    from fundus_search.search.study.config import load_config

    config = load_config(search / "config.yaml")
    labels, groups = _dataset(search)
    train, test = split_indices(
        labels, groups, folds=config.data.folds, fold=None, seed=config.data.seed, test_fraction=0.2
    )
    assert len(test) and not set(groups[test]) & set(groups[train])
    for fold in range(config.data.folds):  # the search trained and validated on these
        fold_train, fold_val = split_indices(
            labels, groups, folds=config.data.folds, fold=fold, seed=config.data.seed, test_fraction=0.2
        )
        assert not set(groups[test]) & (set(groups[fold_train]) | set(groups[fold_val]))
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    assert set(predictions.loc[predictions["split"] == "test", "row"]) == set(test)


def _dataset(search: Path) -> tuple[np.ndarray, np.ndarray]:
    """Labels and groups of every row of the search's image array."""
    from fundus_search.data_io import prepare_images
    from fundus_search.search.study.config import load_config

    cache = prepare_images(load_config(search / "config.yaml").data.to_spec())
    return cache.labels, np.asarray(cache.groups)


def test_the_table_and_comparisons_come_back_from_parquet_without_ray(evaluation, capsys):
    runs, predictions = load_evaluation(evaluation)
    table = evaluation_table(runs, predictions)
    assert len(table) == len(INITS) * 2 and (table["folds"] == len(FOLDS)).all()
    assert main(["table", str(evaluation.parent), "--evaluation"]) == 0
    out = capsys.readouterr().out
    for r in table.itertuples():
        assert f"{r.average_mean:.3f} ± {r.average_std:.3f}" in out
    verdict = out.index("verdict (primary question")
    assert verdict < out.index("cross-validated average of each cell") < out.index("cross-validated average and its")
    assert "  lp: random - scratch = " in out[verdict:] and "  ft: random - scratch = " in out[verdict:]
    comparisons = pd.read_parquet(evaluation / "comparisons.parquet")
    assert set(comparisons["method"]) == {"corrected repeated-CV t-test", "image bootstrap (descriptive)"}
    assert set(comparisons["split"]) == {"cv", "test"} and set(comparisons["family"]) == {"primary", "secondary"}
    cv = comparisons[comparisons["split"] == "cv"]
    assert (cv["n"] == len(FOLDS) * REPEATS).all(), "one difference per (repeat, fold), seeds averaged"
    assert comparisons.loc[comparisons["split"] == "test", "p_value"].isna().all(), "the test split is descriptive"
    assert not (comparisons["p_value"] == 0).any()
    assert cv["p_value"].isna().eq(cv["reason"].notna()).all(), "an undefined p-value always says why"
    assert main(["table", str(evaluation), "--evaluation", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(table)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--folds", "9"], "folds: [9] not in the search's 3-fold split (0..2)"),
        (["--seeds", "0"], "argument --seeds: must be >= 1 (got 0)"),
        (["--folds", "a,b"], "argument --folds: expected comma-separated fold numbers"),
    ],
)
def test_bad_evaluate_arguments_are_one_line_and_write_nothing(argv, message, search, capsys):
    assert main(["evaluate", str(search), "--name", "never", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (search / "never").exists()


def test_study_refuses_folds_outside_the_split_before_it_searches(search, capsys):
    config = search.parent.parent / "c.yaml"
    assert main(["study", str(config), "--name", "never", "--folds", "0,5"]) == 2
    err = capsys.readouterr().err
    assert "--folds: [5] not in the config's 3-fold split (0..2)" in err and len(err.strip().splitlines()) == 1, err
    assert not (search.parent / "never").exists()


def test_evaluate_refuses_a_search_without_finished_trials_or_with_an_empty_cell(search, tmp_path, capsys):
    import shutil

    for case, keep in (
        ("nothing-finished", lambda t: t.assign(status="error")),
        ("empty-cell", lambda t: t[~((t["init"] == "scratch") & (t["strategy"] == "ft"))]),
    ):
        copy = tmp_path / case
        shutil.copytree(search, copy, ignore=shutil.ignore_patterns("evaluation", "killed", "trial_*"))
        keep(pd.read_parquet(search / "trials.parquet")).to_parquet(copy / "trials.parquet")
        assert main(["evaluate", str(copy)]) == 2
        err = capsys.readouterr().err
        expected = "no finished trials" if case == "nothing-finished" else "no finished trial in cell(s) scratch/ft"
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert not (copy / "evaluation").exists()


def test_a_killed_study_said_it_was_incomplete_and_resume_of_its_moved_folder_finished_it(search):
    """Right after the kill, `report` and `table --evaluation` said how much was missing (rows
    only the row log held included, no traceback); `resume` of the moved search folder then
    finished the evaluation and wrote the report there (tests.helpers.evaluated_search)."""
    planned = len(INITS) * 2 * (CV_RUNS + SEEDS)
    table = (search.parent.parent / "killed-table.txt").read_text()
    killed = (search.parent.parent / "killed-report.html").read_text()
    finished = int(table.split(" of ")[0].removeprefix("INCOMPLETE: "))
    assert 3 <= finished < planned, table[:300]
    assert table.startswith(f"INCOMPLETE: {finished} of {planned} runs finished; missing: ")
    assert f"Incomplete evaluation: {finished} of {planned} runs finished" in killed
    report = (search / "report.html").read_text()
    assert "Incomplete evaluation" not in report and "<h3>Verdict</h3>" in report


def test_a_killed_evaluation_resumes_with_nothing_lost_or_twice(evaluation):
    """The fixture's study was killed with SIGKILL after 3 evaluation runs and resumed."""
    runs = pd.read_parquet(evaluation / "runs.parquet")
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    assert len(runs) == len(INITS) * 2 * (CV_RUNS + SEEDS) and (runs["status"] == "completed").all()
    assert runs["run_id"].is_unique and not predictions.duplicated(["run_id", "row"]).any()
    assert set(predictions["run_id"]) == set(runs["run_id"])


def _copy_of_the_search(search: Path, copy: Path) -> Path:
    import shutil

    shutil.copytree(search, copy, ignore=shutil.ignore_patterns("evaluation", "report.html"))
    return copy


def test_an_evaluation_stopped_before_ray_saved_anything_is_continued_by_the_command_evaluate_prints(
    search, tmp_path, capsys
):
    """The dead end of a kill between writing evaluation.json and Tune's first snapshot: the
    `resume` that `evaluate` then advises starts the planned runs in place."""
    import subprocess
    import sys

    import yaml

    from fundus_search.results.layout import EvaluationFolder, SearchFolder

    copy = _copy_of_the_search(search, tmp_path / "s")
    config = yaml.safe_load((copy / "config.yaml").read_text())
    config["search"]["space"].update(init=["random"], strategy=["lp"])  # 1 cell x (fold 0 + test split): 2 runs
    (copy / "config.yaml").write_text(yaml.safe_dump(config))
    SearchFolder(path=copy, name="s", num_samples=4).write()  # a plain search, not a study: no report to write
    (copy / "evaluation").mkdir()
    EvaluationFolder(
        path=copy / "evaluation",
        name="evaluation",
        search_name="s",
        runs=2,
        request={"top": 1, "seeds": 1, "repeats": 1, "folds": [0], "epochs": "best"},
    ).write()
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"continue it with `fundus-search resume {copy / 'evaluation'}`" in err, err
    hint = err.split("`")[1].split()
    cli = str(Path(sys.executable).parent / "fundus-search")
    done = subprocess.run([cli, *hint[1:]], capture_output=True, text=True, timeout=600, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = pd.read_parquet(copy / "evaluation" / "runs.parquet")
    assert len(runs) == 2 and (runs["status"] == "completed").all() and set(runs["fold"].dropna()) == {0}
    assert set(runs["split"]) == {"cv", "test"} and (copy / "evaluation" / "comparisons.parquet").is_file()


def test_a_second_evaluate_of_the_same_folder_is_one_line_and_writes_nothing(search, tmp_path, monkeypatch, capsys):
    """Two `evaluate`s race: the first to create the folder owns it; the second, having passed
    the same checks, finds it created when it claims it (simulated here, without Ray)."""
    import fundus_search.search.evaluate.retrain as evaluation

    copy = _copy_of_the_search(search, tmp_path / "s")

    def the_other_evaluate_wins(config, cache):
        (copy / "evaluation").mkdir()
        return {}

    import fundus_search.search.ops.folders as checks

    monkeypatch.setattr(checks, "connect", lambda address: None)
    monkeypatch.setattr(checks, "check_resources", lambda config: None)
    monkeypatch.setattr(evaluation, "measure_cpu", the_other_evaluate_wins)
    assert main(["evaluate", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "another `fundus-search evaluate` is writing it" in err and len(err.strip().splitlines()) == 1, err
    assert not list((copy / "evaluation").iterdir()), "the second evaluate wrote into the first one's folder"


def test_the_studys_embedded_ray_listens_on_loopback_only(search):
    """Recorded by the fixture while the study's evaluation runs were reporting, just before it
    was killed: every server and worker of the Ray it started was up."""
    import os
    import stat
    import tempfile

    from tests.helpers import STUDY_SOCKETS, exposed

    recorded = json.loads((search.parent.parent / STUDY_SOCKETS).read_text())
    sockets = recorded["sockets"]
    assert len(sockets) >= 5, f"expected GCS, raylet, agents and workers, found {sockets}"
    assert not exposed(sockets), f"listening beyond 127.0.0.1: {exposed(sockets)}"
    private = Path(tempfile.gettempdir()) / f"fundus-search-{os.getuid()}"  # not the shared /tmp/ray
    assert f"{private}/ray/session_" in " ".join(recorded["command_lines"]), (
        "the embedded Ray keeps its session elsewhere"
    )
    assert stat.S_IMODE(private.stat().st_mode) == 0o700, "others can enter the folder of Ray's sessions"


def test_the_kept_model_is_the_very_model_scored_on_the_test_split(search, evaluation, tmp_path, capsys):
    """The study keeps one bundle (`--keep-models best`): a configuration's test-split run of seed
    0. `predict` on the test images, from their files, gives the probabilities predictions.parquet
    holds for that run; no other kept-model checkpoint is left behind."""
    from fundus_search.data_io import prepare_images
    from fundus_search.search.study.config import load_config

    bundles = sorted((evaluation / "models").glob("*/model.json"))
    assert len(bundles) == 1, bundles
    meta = json.loads(bundles[0].read_text())
    assert meta["seed"] == 0 and meta["ensemble"] is False and "held-out test split" in meta["metrics_on"]
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    scored = predictions[
        (predictions["config_id"] == meta["name"]) & (predictions["split"] == "test") & (predictions["seed"] == 0)
    ].sort_values("row")
    root = Path(prepare_images(load_config(search / "config.yaml").data.to_spec()).meta["root"])
    listing = tmp_path / "test.csv"
    pd.DataFrame({"path": [str(root / image) for image in scored["image"]]}).to_csv(listing, index=False)
    assert main(["predict", str(bundles[0].parent), str(listing), "-o", str(tmp_path / "p.parquet")]) == 0
    ours = pd.read_parquet(tmp_path / "p.parquet")
    assert len(ours) == len(scored) > 0
    assert np.abs(ours["prob_positive"].to_numpy() - scored["prob_positive"].to_numpy()).max() <= 1e-6
    assert not list(evaluation.glob("trial_*/checkpoint_*/model.safetensors"))
    capsys.readouterr()


def test_score_submission_on_the_test_split_reproduces_the_evaluations_test_metrics(evaluation, tmp_path, capsys):
    """The kept model exported as a CGI-HRDC submission and scored as the challenge scores it
    (model.py in its own interpreter, cv2.imread per file) on the evaluation's test split gives
    the very kappa, F1, specificity and average that runs.parquet holds for that model's run."""
    pytest.importorskip("cv2")
    from fundus_search.metrics import decision_metrics
    from fundus_search.vocabulary import AVERAGE, F1, KAPPA, SPECIFICITY

    bundle = sorted((evaluation / "models").glob("*/model.json"))[0].parent
    runs = pd.read_parquet(evaluation / "runs.parquet")
    run = runs[(runs["config_id"] == bundle.name) & (runs["split"] == "test") & (runs["seed"] == 0)].iloc[0]
    archive = tmp_path / "submission.zip"
    assert main(["export", str(bundle), "--format", "challenge", "-o", str(archive)]) == 0
    assert main(["score-submission", str(archive), str(evaluation), "-o", str(tmp_path / "scores.csv")]) == 0
    out = capsys.readouterr().out
    rows = pd.read_csv(tmp_path / "scores.csv")
    assert len(rows) == run["n_scored"] > 0 and rows["error"].isna().all()
    ours = decision_metrics(rows["label"].to_numpy(), rows["predicted"].to_numpy())
    for metric in (KAPPA, F1, SPECIFICITY, AVERAGE):
        assert abs(ours[metric] - run[metric]) <= 1e-12, (metric, ours[metric], run[metric])
        assert f"{metric} {run[metric]:.4f}" in out


def test_without_a_test_split_the_end_screen_says_why_no_model_was_kept(search, tmp_path, capsys):
    """A final model is trained on every image outside the test split; with data.test_fraction 0
    there is none, and the end screen says so and what to do, instead of keeping a fold's model."""
    from fundus_search.search.cli.evaluate import summarise_evaluation

    copy = tmp_path / "s"
    shutil.copytree(search, copy, ignore=shutil.ignore_patterns("models", "trial_*"))
    declared = json.loads((copy / "evaluation" / "evaluation.json").read_text())
    declared["protocol"]["test_images"] = 0
    (copy / "evaluation" / "evaluation.json").write_text(json.dumps(declared))
    summarise_evaluation(copy / "evaluation")
    out = capsys.readouterr().out
    assert "model:       none kept: a final model is the run trained on every image outside the test split" in out
    assert "data.test_fraction is 0" in out


def test_one_study_spans_architectures_and_input_sizes(search, evaluation):
    """A ResNet-18 init at 32 px beside a ViT init at 48 px: each trial and run trains its init's
    network on its init's pixels, and the CPU time is measured per network."""
    runs = pd.read_parquet(evaluation / "runs.parquet")
    by_init = runs.groupby("init")["weights_id"].first()
    assert by_init["random"].startswith("random-resnet18-") and by_init["scratch"].startswith(
        "random-vit_tiny_patch16_224-"
    )
    cpu = json.loads((evaluation / "evaluation.json").read_text())["cpu_ms_per_image"]
    assert sorted(cpu) == ["resnet18 at 32 px", "vit_tiny_patch16_224 at 48 px"]
    assert cpu["vit_tiny_patch16_224 at 48 px"]["inits"] == ["scratch"]
    trials = pd.read_parquet(search / "trials.parquet")
    assert set(trials["init"]) == {"random", "scratch"} and (trials["status"] == "completed").all()
    assert "vit_tiny_patch16_224 at 48 px" in (search / "report.html").read_text()


def test_every_evaluation_run_is_a_tensorboard_run_named_by_its_id(evaluation):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = pd.read_parquet(evaluation / "runs.parquet")
    folders = {p.name: p for p in (evaluation / "tensorboard").iterdir()}
    assert set(folders) == set(runs["run_id"]), "one TensorBoard run per evaluation run, killed and resumed"
    run = runs.iloc[0]
    events = EventAccumulator(str(folders[run["run_id"]])).Reload()
    assert len(events.Scalars("val/average")) >= 1 and "train/loss" in events.Tags()["scalars"]


def test_the_tensorboard_command_serves_the_evaluations_runs_beside_the_searchs(search, evaluation):
    from fundus_search.search.cli.query import tensorboard_logdirs

    assert tensorboard_logdirs([search]) == [
        (search.name, search / "tensorboard"),
        (f"{search.name}/evaluation", evaluation / "tensorboard"),
    ]
