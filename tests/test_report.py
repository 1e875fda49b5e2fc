"""`labkit report`: one self-contained HTML page, checked as headless Chromium renders it:
every figure decoded, the grid's table and a failed run's reason on the page, nothing
fetched from anywhere."""
import json
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from test_figures import GRID, train_grid

from labkit.cli import cli

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
# run inside the page after load: what the browser made of it
CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const out = document.createElement('pre');
  out.id = 'labkit-check';
  out.textContent = JSON.stringify({
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 100).length,
    rows: document.querySelectorAll('#grid tbody tr').length,
    failed_rows: document.querySelectorAll('#grid tbody tr.failed').length,
    fetched: performance.getEntriesByType('resource').map(e => e.name),
    text: document.body.innerText,
  });
  document.body.appendChild(out);
});
</script>"""


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "figures_grid"
    train_grid(base)  # the shared grid, then the same grid with a learning rate that fails
    failing = {**GRID, "optimizer": [GRID["optimizer"], {"name": "sgd", "lr": 1e30}],
               "seed": 0}
    spec = train_grid(base, failing, "with_failure.json")
    path = base / "report.html"
    result = CliRunner().invoke(cli, ["report", str(spec), "--run-id", "G", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_report_is_one_file_that_loads_nothing(report):
    page = report.read_text()
    assert "http://" not in page.replace('xmlns="http://www.w3.org', "") and "https://" not in page
    assert "<link" not in page and "<script" not in page and 'src="data:image/png;base64,' in page


@pytest.mark.skipif(BROWSER is None, reason="no Chromium/Chrome binary (apt-get install "
                                             "chromium) to render the report")
def test_report_renders_in_chromium_with_table_reasons_and_figures(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", CHECK + "</body>"))
    dom = chromium("--dump-dom", probe.as_uri())
    assert "labkit-check" in dom.stdout, dom.stderr[-2000:]
    text = dom.stdout.split('<pre id="labkit-check">')[1].split("</pre>")[0]
    check = json.loads(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert check["fetched"] == []
    assert check["rows"] == 2 and check["failed_rows"] == 1
    # every run with a log has learning curves and saturation; plus the grid's tail pattern
    assert check["images"] >= 1 + 2 and check["decoded"] == check["images"]
    assert "non-finite training loss" in check["text"] and "Tail pattern" in check["text"]
    assert "grid figgrid, run-id G" in check["text"]

    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,1600", f"--screenshot={shot}", report.as_uri())
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=int)
    # matplotlib's blue (C0, #1f77b4) lines: the figures are drawn on the page
    blue = (np.abs(pixels - [31, 119, 180]) < 30).all(axis=-1).sum()
    assert blue > 200
