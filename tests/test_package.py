"""The install adds one import name, `fundus_search`, and the `fundus-search` command: both work
inside a project that has its own `models` and `results` packages."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOMS = ("search", "models", "data_io", "results", "vocabulary")


def a_training_project(root: Path) -> Path:
    """A folder such as a user's own project: a `models` package without our classes, a `results` folder."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text("MINE = True\n")
    (root / "results").mkdir()
    (root / "results" / "__init__.py").write_text("MINE = True\n")
    return root


def test_the_distribution_installs_one_top_level_name():
    top_level = metadata.distribution("fundus-search").read_text("top_level.txt").split()
    assert top_level == ["fundus_search"]
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts") if e.name == "fundus-search"}
    assert scripts == {"fundus-search": "fundus_search.search.cli.main:entry_point"}


def test_it_imports_and_runs_inside_a_project_with_its_own_models_and_results(tmp_path):
    project = a_training_project(tmp_path / "project")
    code = (
        "import json, sys\n"
        "import fundus_search.search.engine.trial, fundus_search.search.cli.main\n"
        "import models, results\n"
        f"ours = sorted({{m.split('.')[0] for m in sys.modules}} & set({ROOMS!r}))\n"
        "print(json.dumps({'mine': [models.MINE, results.MINE], 'top_level_rooms_imported': ours}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # the project's own packages are untouched; ours imported none of the old top-level names
    assert json.loads(done.stdout) == {"mine": [True, True], "top_level_rooms_imported": ["models", "results"]}
    cli = Path(sys.executable).parent / "fundus-search"
    done = subprocess.run(
        [str(cli), "data", "synth", "synthetic", "--n", "12", "--size", "32"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "wrote 12 images" in done.stdout, done.stderr


def test_version_is_the_installed_distributions(capsys):
    from importlib.metadata import version

    from fundus_search.search.cli.main import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fundus-search {version('fundus-search')}"
