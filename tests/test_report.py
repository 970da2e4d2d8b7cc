"""`nasax report`: a static HTML page holding the figures of the run it was built from,
with every picture inline, rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from nasax.app.cli import main
from nasax.supernet.drawing import genotype_text
from nasax.supernet.genotypes import Genotype

IMAGE = re.compile(r'<img id="img-([\w-]+)" alt="[^"]*" src="data:(image/[\w+]+);base64,([^"]+)"')
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


def _images(page: str) -> dict[str, tuple[str, bytes]]:
    return {name: (mime, base64.b64decode(data)) for name, mime, data in IMAGE.findall(page)}


@pytest.fixture(scope="module")
def search_report(tiny_classifier) -> str:
    assert main(["report", str(tiny_classifier.search_dir)]) == 0
    return (tiny_classifier.search_dir / "report.html").read_text()


def test_search_report_holds_the_runs_figures(tiny_classifier, search_report):
    run_dir = tiny_classifier.search_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"<th>test accuracy</th><td>{summary['test_accuracy']:.4f}</td>" in search_report
    assert f"<th>steps</th><td>{summary['steps']:,}</td>" in search_report
    assert "<th>stopped at the time limit</th><td>yes</td>" in search_report
    genotype = Genotype.load(run_dir / "genotype.json")
    assert genotype_text(genotype).replace(">", "&gt;") in search_report
    assert "time_limit: 20.0" in search_report  # the config as it ran
    images = _images(search_report)
    expected = {"curves", "arch-final", "arch-evolution-normal"}
    if shutil.which("dot"):
        expected.add("cells-drawing")
    assert set(images) == expected
    for name, (mime, data) in images.items():
        if mime == "image/png":
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == "PNG" and min(image.size) > 100, name
        else:
            assert ET.fromstring(data).tag.endswith("svg")
    # Nothing is fetched: no external URLs in src/href attributes.
    assert not re.search(r'(src|href)="(https?:|//)', search_report)


def test_retraining_report_has_no_architecture_section(tiny_classifier, tmp_path):
    out = tmp_path / "final.html"
    assert main(["report", str(tiny_classifier.final_dir), "--out", str(out)]) == 0
    page = out.read_text()
    summary = json.loads((tiny_classifier.final_dir / "summary.json").read_text())
    assert f"<th>parameters</th><td>{summary['params']:,}</td>" in page
    assert "Architecture weights" not in page and "curves" in _images(page)


def test_report_of_a_folder_that_is_no_run_is_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a nasax run directory" in capsys.readouterr().err


PROBE = """<script>addEventListener("load", () => {
  const out = document.createElement("pre"); out.id = "decoded";
  out.textContent = JSON.stringify(Object.fromEntries(
    [...document.images].map(i => [i.id, [i.complete, i.naturalWidth, i.naturalHeight]])));
  document.body.appendChild(out);
});</script></body>"""


@pytest.mark.skipif(
    BROWSER is None and not os.environ.get("NASAX_REQUIRE_BROWSER"),
    reason="Chromium is not installed (apt-get install chromium)",
)
def test_report_renders_in_headless_chromium(search_report, tmp_path):
    assert BROWSER is not None, "NASAX_REQUIRE_BROWSER is set but chromium is not on PATH"
    page = tmp_path / "probe.html"
    page.write_text(search_report.replace("</body>", PROBE))
    done = subprocess.run(
        [
            BROWSER,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    decoded = re.search(r'<pre id="decoded">(.*?)</pre>', done.stdout)
    assert decoded, done.stdout[-500:]
    sizes = json.loads(decoded.group(1))
    assert set(sizes) == {f"img-{name}" for name in _images(search_report)}
    assert all(complete and width > 0 and height > 0 for complete, width, height in sizes.values())
    assert "Final figures" in done.stdout and "Architecture weights" in done.stdout
