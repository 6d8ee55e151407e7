"""The QC gallery and the evaluation report as a person sees them: headless Chromium.

Chromium (Debian's ``chromium``; ``.ci/run`` installs it where apt is available) loads each page
from disk. A probe copy of the page records, in the DOM that ``--dump-dom`` prints: how many
images decoded (natural width > 0), the column before and after clicking its header, every
resource the page loaded and every request a Content-Security-Policy blocked (the probe adds a
policy that lets nothing leave the file). A control page with one external image proves the
probe sees such a request. A screenshot is taken and must not be blank. Skipped without Chromium.
"""
from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from nnunet_xfer.clinical.qc import gallery_html, overlay_lines, overlay_png
from nnunet_xfer.imaging import read_image, read_mask

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed"),
              pytest.mark.slow]

#: Added by the probe: nothing may be fetched except the page's inline data and local files.
PROBE_CSP = ("default-src 'none'; img-src data: file:; style-src 'unsafe-inline'; "
             "script-src 'unsafe-inline'; font-src data:")
PROBE_HEAD = f"""<meta http-equiv="Content-Security-Policy" content="{PROBE_CSP}">
<script>window.__probe={{blocked:[]}};
document.addEventListener('securitypolicyviolation',function(e){{window.__probe.blocked.push(e.blockedURI);}});
</script>"""
PROBE_BODY = """<script>
window.addEventListener('load', function () {
  var r = {};
  var imgs = Array.prototype.slice.call(document.images);
  r.images = imgs.length;
  r.decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  r.resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
  var table = document.getElementById('cases');
  if (table) {
    var heads = table.tHead.rows[0].cells, i = -1;
    for (var k = 0; k < heads.length; k++) { if (/^SMA cm/.test(heads[k].textContent)) { i = k; } }
    var col = function (j) { return Array.prototype.map.call(table.tBodies[0].rows,
        function (row) { return row.cells[j].getAttribute('data-value'); }); };
    var cases = function () { return Array.prototype.map.call(table.tBodies[0].rows,
        function (row) { return row.getAttribute('data-case'); }); };
    r.before = col(i); r.cases_before = cases();
    heads[i].click(); r.ascending = col(i); r.cases_ascending = cases();
    heads[i].click(); r.descending = col(i);
    heads[0].click(); r.by_case = cases();
    document.getElementById('only-flagged').click();
    r.shown_when_flagged_only = Array.prototype.filter.call(table.tBodies[0].rows,
        function (row) { return row.style.display !== 'none'; }).map(
        function (row) { return row.getAttribute('data-case'); });
  }
  r.viewport = document.documentElement.clientWidth;
  r.tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) {
    var b = t.getBoundingClientRect();
    return {right: b.right, width: b.width, room: t.parentElement.clientWidth,
            first: t.tHead ? t.tHead.rows[0].cells[t.tHead.rows[0].cells.length - 1].textContent : ''};
  });
  r.blocked = window.__probe.blocked;
  var pre = document.createElement('pre');
  pre.id = 'nnunet-xfer-probe';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def probe(page: Path, tmp_path: Path, width: int = 1280) -> dict:
    """Load a probe copy of ``page`` (beside it, so relative files resolve) in a window ``width``
    pixels wide and read its results."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<head>", "<head>" + PROBE_HEAD, text, count=1)
    text = text.replace("</body>", PROBE_BODY + "</body>")
    copy = page.with_name(f"probe_{page.name}")
    copy.write_text(text, encoding="utf-8")
    proc = _chromium("--dump-dom", f"--window-size={width},1000", copy.as_uri(),
                     profile=tmp_path / "profile")
    found = re.search(r'<pre id="nnunet-xfer-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no probe results; chromium said: {proc.stderr[-2000:]}"
    import html
    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, tmp_path: Path) -> np.ndarray:
    """A 1280×1600 screenshot of ``page`` as an RGB array."""
    from PIL import Image
    shot = tmp_path / f"{page.stem}.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,1600", page.as_uri(),
              profile=tmp_path / "profile_shot")
    assert shot.is_file(), "chromium wrote no screenshot"
    with Image.open(shot) as im:
        return np.asarray(im.convert("RGB"))


def _numbers(values: list) -> list[float]:
    return [math.nan if v in (None, "") else float(v) for v in values]


@pytest.fixture()
def gallery(phantom_dir, tmp_path) -> Path:
    """A gallery of four phantom cases (one failed), written by the code `measure` uses."""
    rows, pictures = [], {}
    sma = {"L3-0000": 150.0, "L3-0001": 90.5, "L3-0002": math.nan, "L3-0003": 201.0}
    for case, value in sma.items():
        image = read_image(phantom_dir / "images" / f"{case}.nii.gz")
        mask = read_mask(phantom_dir / "masks" / f"{case}.nii.gz").array
        row = {"case_id": case, "sma_cm2": value, "smd_hu": 35.0, "imat_cm2": 4.0,
               "smi_cm2_m2": value / 3, "sma_mask_cm2": value, "fold_dice_min": 0.9,
               "slice_index": 0, "flags": "sma_implausible" if value < 100 else ""}
        rows.append(row)
        pictures[case] = overlay_png(image, mask.astype(bool), overlay_lines(row))
    page = tmp_path / "gallery" / "gallery.html"
    page.parent.mkdir()
    page.write_text(gallery_html(rows, pictures, {"L3-0009": "case L3-0009: no L3 in the volume"},
                                 "QC", ["model: test"]), encoding="utf-8")
    return page


def test_gallery_in_a_browser(gallery, tmp_path):
    r = probe(gallery, tmp_path)
    assert r["images"] == 4 and r["decoded"] == 4
    assert r["blocked"] == [] and [u for u in r["resources"] if not u.startswith(("data:", "file:"))] == []
    before, up, down = _numbers(r["before"]), _numbers(r["ascending"]), _numbers(r["descending"])
    assert r["cases_before"] == ["L3-0000", "L3-0001", "L3-0002", "L3-0003"]
    assert up[:3] == [90.5, 150.0, 201.0] and math.isnan(up[3])        # unknown values last
    assert down[:3] == [201.0, 150.0, 90.5] and math.isnan(down[3])
    assert r["cases_ascending"] == ["L3-0001", "L3-0000", "L3-0003", "L3-0002"]
    assert r["by_case"] == sorted(r["by_case"])
    assert not np.array_equal(before, up)
    assert r["shown_when_flagged_only"] == ["L3-0001"]                 # the one flagged case
    shot = screenshot(gallery, tmp_path)
    assert shot.shape[0] >= 1000 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 50


def test_probe_sees_a_request_that_leaves_the_file(tmp_path):
    """The control: a page with an external image is caught (so a pass above means something)."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><head><title>x</title></head><body>'
                    '<img src="https://example.invalid/x.png"></body></html>', encoding="utf-8")
    r = probe(page, tmp_path)
    assert r["blocked"] == ["https://example.invalid/x.png"]
    assert r["images"] == 1 and r["decoded"] == 0


def test_evaluation_report_in_a_browser(fake_tree, tmp_path):
    base, env = fake_tree
    evaluation, report = tmp_path / "evaluation", tmp_path / "report" / "report.html"
    run_cli("nnunet-xfer", "evaluate", "-d", "990", "-o", str(evaluation), "--observers",
            str(base / "observers"), env=env)
    run_cli("nnunet-xfer", "report", "-i", str(evaluation), "-o", str(report), env=env)
    r = probe(report, tmp_path, width=1400)
    assert r["images"] >= 3 and r["decoded"] == r["images"]
    # every table fits the page at 1400 px: none is wider than the column it sits in (issue 19:
    # the summary table's right-hand columns were cut off)
    assert r["viewport"] == 1400 and len(r["tables"]) >= 4
    for t in r["tables"]:
        assert t["right"] <= r["viewport"] and t["width"] <= t["room"] + 1, t
    assert r["blocked"] == [] and [u for u in r["resources"] if not u.startswith(("data:", "file:"))] == []
    shot = screenshot(report, tmp_path)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50


def test_overlay_png_is_a_picture_of_the_slice(phantom_dir):
    """The overlay: soft-tissue window, red outline on the mask's border, text box in the corner."""
    from PIL import Image
    image = read_image(phantom_dir / "images" / "L3-0000.nii.gz")
    mask = read_mask(phantom_dir / "masks" / "L3-0000.nii.gz").array
    png = overlay_png(image, mask.astype(bool), ["L3-0000", "SMA 1.0 cm2"])
    with Image.open(io.BytesIO(png)) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert max(rgb.shape[:2]) >= 384
    red = (rgb[..., 0] == 255) & (rgb[..., 1] == 40) & (rgb[..., 2] == 40)
    assert red.sum() > 0
    assert (rgb[3, 3] == 0).all()                                      # the text box's margin
    yellow = (rgb[..., 0] == 255) & (rgb[..., 1] == 255) & (rgb[..., 2] == 80)
    rows, cols = np.nonzero(yellow)
    assert rows.size and rows.max() < rgb.shape[0] // 3 and cols.max() < rgb.shape[1] // 2
