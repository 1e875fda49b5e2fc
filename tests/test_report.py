"""`labkit report`: one self-contained HTML page that answers "what did I find", checked
as headless Chromium renders it: the summary of every group first (mean ± sd over seeds,
with n), then the groups with their tail pattern, learning curves, projection curves and
per-layer tables, the runs named by what sets them apart, no horizontal page scroll at
1400 px, every figure decoded, a failed run's reason on the page, nothing fetched."""
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from test_figures import GRID, settle, train_grid

from labkit import hookimpl
from labkit.cli import cli
from labkit.cli.commands.common import load_runs
from labkit.cli.commands.report import plugin_sections
from labkit.cli.plugins import use
from labkit.store.identity import RunConfig
from labkit.outputs import figures
from labkit.outputs.report import Spread, run_views, summary_table

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
# run inside the page after load: what the browser made of it
CHECK = """<script>
window.addEventListener('load', () => {
  const page = document.documentElement;
  const heads = [...document.querySelectorAll('h2')];
  const section = (id) => {  // the elements from the h2 #id up to the next h2
    const out = []; let node = document.getElementById(id).nextElementSibling;
    while (node && node.tagName !== 'H2') { out.push(node); node = node.nextElementSibling; }
    return out;
  };
  const alts = (id) => section(id).flatMap(n => [...n.querySelectorAll('img')]).map(i => i.alt);
  const summary = document.getElementById('summary-table');
  const header = [...summary.querySelectorAll('thead th')].map(th => th.textContent);
  const accuracy = [...summary.querySelectorAll('thead th')].find(
      th => th.textContent === 'eval-accuracy');
  const images = [...document.images];
  const out = document.createElement('pre');
  out.id = 'labkit-check';
  out.textContent = JSON.stringify({
    viewport: window.innerWidth,
    page_width: page.scrollWidth,
    widest: Math.max(...[...document.body.querySelectorAll('*')].filter(
        e => !e.parentElement.closest('.box')).map(e => e.getBoundingClientRect().right)),
    accuracy_right: accuracy ? accuracy.getBoundingClientRect().right : null,
    boxes_scroll: [...document.querySelectorAll('.box')].filter(
        b => b.scrollWidth > b.clientWidth).length,
    headings: heads.map(h => h.id || h.textContent),
    first_table: document.querySelector('table').id,
    header: header,
    summary_rows: [...summary.querySelectorAll('tbody tr')].map(
        tr => [...tr.cells].map(td => td.textContent)),
    group_images: [alts('group-1'), alts('group-2')],
    layer_tables: document.querySelectorAll('[id^=layers-] tbody tr').length,
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 100).length,
    image_widths: images.map(i => i.getBoundingClientRect().width),
    failed_rows: document.querySelectorAll('#runs-2 tbody tr.failed').length,
    fetched: performance.getEntriesByType('resource').map(e => e.name),
    text: document.body.innerText,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-quic", "--no-first-run", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'chromium'}", "--hide-scrollbars",
                           "--window-size=1400,1000", "--virtual-time-budget=10000", *args],
                          capture_output=True, text=True, timeout=180)


# the shared grid (two seeds of lr 0.05) and two seeds of a learning rate that fails
STUDY = {**GRID, "optimizer": [GRID["optimizer"], {"name": "sgd", "lr": 1e30}]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "figures_grid"
    train_grid(base)
    spec = train_grid(base, STUDY, "study.json")
    runs = load_runs(str(spec), "G")
    settle(runs)  # older than the figure manifest's racy window: a report keeps its entries
    return spec, runs


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    spec, _ = study
    path = tmp_path_factory.mktemp("report") / "report.html"
    result = CliRunner().invoke(cli, ["report", str(spec), "--run-id", "G", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_summary_is_the_mean_and_sd_of_each_group_over_its_seeds(study):
    _, runs = study
    keys = figures.resolve_keys([r.config for r in runs], ())
    assert keys == ["optimizer.lr"]  # seed is averaged over
    groups = figures.group_runs(runs, keys)
    table = summary_table(groups, keys, run_views(runs, groups))
    assert list(table.columns[:3]) == ["lr", "n", "eval-accuracy"]  # eval metrics first
    finals = [pd.read_csv(r.directory / "log.csv")["eval-accuracy"].iloc[-1]
              for r in groups["lr=0.05"]]
    cell = table.loc[table["lr"] == "0.05", "eval-accuracy"].iloc[0]
    assert isinstance(cell, Spread) and cell.n == 2
    assert cell.mean == pytest.approx(np.mean(finals))
    assert cell.sd == pytest.approx(np.std(finals, ddof=1))
    assert table.loc[table["lr"] == "1e+30", "states"].iloc[0] == "2 failed"


class SectionPlugin:
    """A plugin with a model of its own and a report section."""

    @hookimpl
    def labkit_register(self, registries):
        registries.models.register("section_net", lambda num_classes, in_channels,
                                   resolution: None)

    @hookimpl
    def labkit_report_sections(self, runs):
        return [("Section net", f"<p>{len(runs)} run(s) asked</p>")]


def test_plugins_add_sections_only_to_grids_that_use_their_components(study):
    _, runs = study
    try:
        use(SectionPlugin())
        assert plugin_sections(runs) == []  # labkit's own components only: not asked
        theirs = [RunConfig({**r.config, "model": {"name": "section_net"}}, r.run_id)
                  for r in runs]
        assert plugin_sections(theirs) == [("Section net", f"<p>{len(runs)} run(s) asked</p>")]
    finally:
        use()


def test_report_is_one_file_that_loads_nothing(report):
    page = report.read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org', "") and "https://" not in page
    assert "<link" not in page and "<script" not in page and 'src="data:image/png;base64,' in page


def test_a_second_report_reuses_the_figures_it_drew(study, tmp_path):
    spec, runs = study
    folder = runs[0].directory.parents[3] / "figures" / "figgrid" / "G"
    assert (folder / "figures-manifest.json").exists()  # drawn through plot's folder
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}
    result = CliRunner().invoke(cli, ["report", str(spec), "--run-id", "G", "-o",
                                      str(tmp_path / "again.html")])
    assert result.exit_code == 0, result.output
    after = {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}
    assert before and {p: t for p, t in after.items() if before.get(p) != t} == {}


# CI (.ci/run) installs Debian's chromium and sets LABKIT_REQUIRE_CHROMIUM: never skipped there
@pytest.mark.skipif(BROWSER is None and not os.environ.get("LABKIT_REQUIRE_CHROMIUM"),
                    reason="no Chromium/Chrome binary (apt-get install chromium) to render "
                           "the report")
def test_report_renders_in_chromium_summary_first_groups_and_tables_that_fit(report,
                                                                            tmp_path):
    assert BROWSER is not None, "LABKIT_REQUIRE_CHROMIUM is set but no chromium is installed"
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", CHECK + "</body>"))
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert "labkit-check" in dom.stdout, dom.stderr[-2000:]
    text = dom.stdout.split('<pre id="labkit-check">')[1].split("</pre>")[0]
    check = json.loads(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert check["fetched"] == []
    # the summary leads, eval accuracy first among the metrics, visible without scrolling
    assert check["headings"][0] == "summary" and check["first_table"] == "summary-table"
    assert check["header"][:3] == ["lr", "n", "eval-accuracy"]
    assert check["accuracy_right"] < check["viewport"]
    rows = {row[0]: row for row in check["summary_rows"]}
    assert set(rows) == {"0.05", "1e+30"} and rows["0.05"][1] == "2"
    assert "±" in rows["0.05"][2] and "2 failed" in rows["1e+30"]
    # all groups compared, then each group, then the runs
    assert check["headings"][1:4] == ["compared", "group-1", "group-2"]
    assert check["headings"][-1] == "runs"
    finished = check["group_images"][0]
    assert any(a.startswith("Tail pattern of lr=0.05") for a in finished)
    assert any(a.startswith("Learning curves of the runs of lr=0.05") for a in finished)
    assert any(a.startswith("Projection curves of lr=0.05") for a in finished)
    assert check["layer_tables"] >= 2 * 3  # a row per layer and split (three layers)
    # runs named by what sets them apart; the failed ones with their reason
    assert "lr=0.05 seed=1" in check["text"] and "lr=1e+30 seed=0" in check["text"]
    assert check["failed_rows"] == 2 and "non-finite training loss" in check["text"]
    # the page never scrolls sideways at 1400 px: wide tables scroll in their own box
    assert check["page_width"] <= check["viewport"] and check["widest"] <= check["viewport"]
    assert check["images"] >= 3 + 2 * 3 and check["decoded"] == check["images"]
    assert max(check["image_widths"]) > 0.8 * (check["viewport"] - 100)  # the page's width

    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", report.as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    # the summary table is drawn, then matplotlib's blue (C0, #1f77b4): the first figure
    blue = (np.abs(pixels - [31, 119, 180]) < 30).all(axis=-1).sum()
    assert blue > 200
