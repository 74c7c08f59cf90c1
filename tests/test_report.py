"""`fundus-search report`: every section, every figure a real image, the answer's numbers equal to
the Parquet files', a search without evaluation still reported, a real headless browser, and
one-line errors."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fundus_search.results.answer import evaluation_table, load_evaluation
from fundus_search.results.report import SECTIONS
from fundus_search.search.cli.main import main
from tests.helpers import needs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(evaluated_search, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(evaluated_search), "-o", str(out)]) == 0
    return out.read_text(encoding="utf-8")


def images_of(page: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    ]


def test_the_report_holds_every_section_and_every_figure_is_an_image(report):
    for key, title in SECTIONS.items():
        assert f'<section id="{key}"><h2>{title}</h2>' in report, f"section {key} missing"
    images = images_of(report)
    assert len(images) >= 6, "forest plot, ROC, confusion matrices, best so far, learning curves, parameters"
    for image in images:
        image.load()
        assert image.size[0] > 100 and image.size[1] > 100
    assert not re.search(r'(src|href)="(https?:)?//', report), "the page fetches something from the network"


def test_the_answer_shows_the_numbers_of_the_parquet_files(report, evaluated_search):
    runs, predictions = load_evaluation(evaluated_search / "evaluation")
    table = evaluation_table(runs, predictions)
    answer = report[report.index('id="answer"') : report.index('id="diagnostics"')]
    for r in table.itertuples():
        for metric in ("kappa", "f1", "specificity", "average"):
            mean, std = getattr(r, f"{metric}_mean"), getattr(r, f"{metric}_std")
            assert f"{mean:.3f} ± {std:.3f}" in answer, f"{r.config_id} {metric}"
        assert f"{r.oof_auc:.3f}" in answer and f"{r.search_score:.3f}" in answer
    comparisons = pd.read_parquet(evaluated_search / "evaluation" / "comparisons.parquet")
    cv = comparisons[comparisons["split"] == "cv"]
    assert len(cv) and answer.index("<h3>Verdict</h3>") < answer.index("Secondary comparisons") < answer.index(
        "All metrics"
    )
    for c in cv[cv["family"] == "primary"].itertuples():
        head = f"{c.within}: {c.name_a} - {c.name_b} = {c.difference:+.3f} average"
        assert (
            head
            + (
                ": not testable"
                if isinstance(c.reason, str)
                else f" [95% CI {c.ci_low:+.3f}, {c.ci_high:+.3f}], Holm p = "
            )
            in answer
        ), head
    for c in cv[cv["family"] == "secondary"].itertuples():
        assert f"<td>{c.comparison}</td>\n      <td>{c.difference:+.3f}</td>" in answer, c.comparison


def test_a_search_without_evaluation_is_reported_and_says_how_to_evaluate(evaluated_search, tmp_path):
    search = tmp_path / "s"
    shutil.copytree(evaluated_search, search, ignore=shutil.ignore_patterns("evaluation", "killed", "trial_*"))
    assert main(["report", str(search)]) == 0
    page = (search / "report.html").read_text(encoding="utf-8")
    for key in ("answer", "diagnostics"):
        section = page[page.index(f'id="{key}"') :]
        assert f"fundus-search evaluate {search}" in section[:2000]
    assert len(images_of(page)) >= 3, "the search's own figures are there"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    needs("no headless browser: install Debian's chromium (apt-get install chromium; .ci/run does)")


def test_a_real_browser_renders_the_report_offline_without_errors(evaluated_search, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(evaluated_search), "-o", str(out)]) == 0
    shot = tmp_path / "page.png"
    done = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,6000",
            f"--screenshot={shot}",
            "--enable-logging=stderr",
            "--v=0",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # no network: every name fails to resolve
            f"file://{out}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.exists(), done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert not console, f"the page logged: {console}"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01, "the screenshot is blank"
    # Laid out in a 1400-px-wide frame, no table scrolls sideways, nor the page; the verdict comes first.
    probe = tmp_path / "probe.html"
    probe.write_text("""<!DOCTYPE html><html><body><iframe id="f" src="report.html" style="width:1400px;height:4000px">
</iframe><script>document.getElementById("f").onload = () => {
  const d = document.getElementById("f").contentDocument, text = d.body.innerText;
  document.body.dataset.result = JSON.stringify({
    tables: [...d.querySelectorAll(".wide")].map(e => e.scrollWidth - e.clientWidth),
    page: d.documentElement.scrollWidth - d.documentElement.clientWidth,
    verdict: text.indexOf("Verdict"), metrics: text.indexOf("All metrics")});
};</script></body></html>""")
    dom = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--dump-dom",
            f"file://{probe}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    laid_out = json.loads(html.unescape(re.search(r'data-result="([^"]*)"', dom).group(1)))
    assert laid_out["page"] <= 0 and max(laid_out["tables"]) <= 0, f"scrolls sideways at 1400 px: {laid_out}"
    assert 0 <= laid_out["verdict"] < laid_out["metrics"], laid_out


@pytest.mark.parametrize(
    "case,message",
    [
        ("not-a-search", "not a search folder"),
        ("empty-search", "the search has no trials yet"),
        ("no-such-folder", "-o: no folder"),
    ],
)
def test_report_mistakes_are_one_line_and_exit_2(case, message, evaluated_search, tmp_path, capsys):
    folder, argv = tmp_path / case, []
    folder.mkdir()
    if case == "empty-search":
        shutil.copy(evaluated_search / "search.json", folder)
        pd.read_parquet(evaluated_search / "trials.parquet").head(0).to_parquet(folder / "trials.parquet")
        pd.read_parquet(evaluated_search / "epochs.parquet").head(0).to_parquet(folder / "epochs.parquet")
    if case == "no-such-folder":
        folder, argv = evaluated_search, ["-o", str(tmp_path / "missing" / "r.html")]
    assert main(["report", str(folder), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "missing").exists()
