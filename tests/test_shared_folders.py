"""Results folders are safe to share: `resume` unpickles nothing another user could have written
or pointed it at, `report` and the store never write through a planted symlink, and a partial
or foreign evaluation is never shown as the answer. Another user is simulated by a second uid,
which root can give files to (CI runs as root; there these tests must run)."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import yaml

from fundus_search.results import ResultsStore, ResultsWriteError
from fundus_search.results.layout import EvaluationFolder, SearchFolder, write_atomic
from fundus_search.results.store import EVALUATION_TABLES
from fundus_search.search.cli.main import main
from tests.helpers import needs, tiny_search_config, write_results_dir

OTHER_UID = 65534  # `nobody`


@pytest.fixture
def other_user() -> int:
    if os.geteuid() != 0:
        needs("needs root to give files to a second uid")
    return OTHER_UID


class _CreatesAFile:
    """Unpickling this opens `path` for writing: the file appears only if the pickle is loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def their_pickle(folder: Path, uid: int, marker: Path, name: str = "tuner.pkl") -> Path:
    """A world-writable folder of user `uid` holding a pickle that creates `marker` when loaded."""
    folder.mkdir(parents=True)
    path = folder / name
    path.write_bytes(pickle.dumps(_CreatesAFile(marker)))
    for p in (folder, path):
        os.chown(p, uid, uid)
        p.chmod(0o777)
    return path


def a_search_folder(folder: Path, **config) -> Path:
    """A search folder with six made-up trials, its search.json and config.yaml (no Ray)."""
    from pydantic import ValidationError

    from fundus_search.search.study.config import Config

    write_results_dir(folder)
    raw = tiny_search_config(storage=folder.parent, **config)
    (folder / "config.yaml").write_text(yaml.safe_dump(raw))
    try:
        facts = Config.model_validate(raw).facts()
    except ValidationError:  # a config `run` refuses: no facts to write
        facts = None
    SearchFolder(path=folder, name=folder.name, num_samples=6, facts=facts).write()
    return folder


def test_resume_never_restores_from_a_path_stored_in_the_folder(tmp_path, other_user, capsys):
    marker = tmp_path / "their-code-ran"
    theirs = their_pickle(tmp_path / "theirs", other_user, marker).parent
    copy = a_search_folder(tmp_path / "copy")
    (copy / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")  # Ray's state, but not its Tuner
    for results in (str(theirs), f"file://{theirs}"):
        (copy / "search.json").write_text(json.dumps({"name": "copy", "results": results, "num_samples": 6}))
        assert main(["resume", str(copy)]) == 2
        err = capsys.readouterr().err
        assert f"{copy}: Ray's experiment state is incomplete (no tuner.pkl)" in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not marker.exists(), f"resume loaded the pickle at {results}, where the folder pointed"


@pytest.mark.parametrize("link", ["evaluation/tuner.pkl", "trial_1/checkpoint_000000/trainer.pt", "the folder"])
def test_resume_follows_no_symlink_to_another_users_pickle(link, tmp_path, other_user, capsys):
    marker = tmp_path / "their-code-ran"
    theirs = their_pickle(tmp_path / "theirs", other_user, marker)
    mine = a_search_folder(tmp_path / "mine")
    (mine / "evaluation").mkdir()
    EvaluationFolder(path=mine / "evaluation", name="evaluation", search_name="mine", request={}, runs=1).write()
    if link == "the folder":
        (theirs.parent / "search.json").write_text((mine / "search.json").read_text())
        (tmp_path / "link").symlink_to(theirs.parent)
        target, expected = tmp_path / "link", f"{theirs.parent}: owned by user id {other_user}, not you"
    else:
        (mine / link).parent.mkdir(parents=True, exist_ok=True)
        (mine / link).symlink_to(theirs)
        target = mine / "evaluation" if link.startswith("evaluation") else mine
        expected = f"{mine / link}: a symlink (to {theirs})"
    assert main(["resume", str(target)]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists(), "resume loaded a pickle through a symlink"


def test_report_replaces_a_planted_symlink_and_leaves_its_target_and_the_study_alone(tmp_path, capsys):
    search = a_search_folder(tmp_path / "s")
    victim = tmp_path / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA the-victim's-key\n")
    (search / "report.html").symlink_to(victim)
    (search / "optuna.db").touch()  # an empty study file: reading it must not create Optuna's tables
    assert main(["report", str(search)]) == 0, capsys.readouterr().err
    assert victim.read_text() == "ssh-ed25519 AAAA the-victim's-key\n"
    report = search / "report.html"
    assert not report.is_symlink() and report.read_text().startswith("<!DOCTYPE html>")
    assert (search / "optuna.db").stat().st_size == 0
    assert "Cannot read the Optuna study" in report.read_text()
    assert not [p for p in search.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"


def test_whole_files_replace_a_symlink_and_the_row_log_refuses_one(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "trials.parquet").symlink_to(victim)
    write_atomic(folder / "trials.parquet", b"new")
    assert victim.read_text() == "kept\n" and (folder / "trials.parquet").read_bytes() == b"new"
    store = tmp_path / "store"
    store.mkdir()
    (store / ".rows.jsonl").symlink_to(victim)
    with pytest.raises(ResultsWriteError, match=r"\.rows\.jsonl: cannot write \(\[Errno 40\]"):
        ResultsStore(str(store), search="s")
    assert victim.read_text() == "kept\n"


def an_unfinished_evaluation(search: Path, *, belongs_to: str | None = None) -> Path:
    """An evaluation killed right after its first row: one running run of 4 planned, no prediction."""
    folder = search / "evaluation"
    store = ResultsStore(str(folder), search="evaluation", tables=EVALUATION_TABLES)
    store.put(
        "runs.parquet",
        {
            "run_id": "random-lp-1-fold0-seed0",
            "config_id": "random-lp-1",
            "rank": 1,
            "split": "cv",
            "fold": 0,
            "seed": 0,
            "status": "running",
        },
    )
    store.close()
    planned = [
        {"run_id": f"{c}-fold{f}-seed0", "config_id": c, "split": "cv", "fold": f, "seed": 0}
        for c in ("random-lp-1", "random-ft-1")
        for f in (0, 1)
    ]
    EvaluationFolder(
        path=folder,
        name="evaluation",
        search_name=belongs_to or search.name,
        request={"seeds": 1},
        runs=4,
        planned=planned,
    ).write()
    return folder


def test_an_unfinished_evaluation_says_how_much_is_missing_and_never_crashes(tmp_path, capsys):
    search = a_search_folder(tmp_path / "s")
    evaluation = an_unfinished_evaluation(search)
    assert main(["table", str(search), "--evaluation"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "INCOMPLETE: 0 of 4 runs finished; missing: random-lp-1: fold 0 seed 0, fold 1 seed 0; "
        f"random-ft-1: fold 0 seed 0, fold 1 seed 0; continue with: fundus-search resume {evaluation}"
    )
    assert main(["report", str(search)]) == 0
    page = (search / "report.html").read_text()
    assert "Incomplete evaluation: 0 of 4 runs finished" in page and "No run of the evaluation has finished yet" in page


def test_the_report_shows_only_this_searchs_evaluation_and_a_named_one_on_request(tmp_path, capsys):
    search = a_search_folder(tmp_path / "s")
    an_unfinished_evaluation(search, belongs_to="another-study")
    assert main(["report", str(search)]) == 0
    page = (search / "report.html").read_text()
    assert "an evaluation of search &#x27;another-study&#x27;, not of &#x27;s&#x27;" in page
    assert "Incomplete evaluation" not in page
    capsys.readouterr()
    assert main(["report", str(search), "--evaluation", "seeds5"]) == 2
    err = capsys.readouterr().err
    assert "no evaluation 'seeds5' here" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "scheduler,message",
    [
        ({"type": "asha", "grace_period": 1, "reduction_factor": 1}, "search.scheduler.reduction_factor: must be >= 2"),
        ({"type": "asha", "grace_period": 0, "reduction_factor": 2}, "search.scheduler.grace_period: must be >= 1"),
    ],
)
@pytest.mark.timeout(60)
def test_report_checks_the_stored_config_as_run_does_and_never_hangs(scheduler, message, tmp_path, capsys):
    search = a_search_folder(tmp_path / "s", scheduler=scheduler)
    assert main(["report", str(search)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (search / "report.html").exists()
    from fundus_search.results.layout import FolderError
    from fundus_search.results.report import write_report

    # the library alone reads the facts search.json holds, never the config: crafted ones are refused
    meta = json.loads((search / "search.json").read_text())
    bad_rungs = {"metric": "val_average", "mode": "max", "max_epochs": 9, "rungs": [3, 1], "params": {}, "dataset": ""}
    for facts in (bad_rungs, {**bad_rungs, "rungs": [1, 3, 9], "mode": "sideways"}, {"metric": 1}, ["x"]):
        (search / "search.json").write_text(json.dumps({**meta, "facts": facts}))
        with pytest.raises(FolderError, match="not what fundus-search writes"):
            write_report(search)
