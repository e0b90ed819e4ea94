"""The HTML report in real headless Chromium: charts render, nothing errors, a screenshot is kept."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

import gradhealth

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does this)"
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB(A) PNG (what Chromium writes) into rows of RGB(A) bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color in (2, 6) and interlace == 0
            channels = 4 if color == 6 else 3
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        line = raw[y * (stride + 1) : (y + 1) * (stride + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for i in range(stride):
            a = cur[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                cur[i] = (cur[i] + a) & 255
            elif kind == 2:
                cur[i] = (cur[i] + b) & 255
            elif kind == 3:
                cur[i] = (cur[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(cur))
        prev = cur
    return width, channels, rows


def _count_color(rows: list[bytes], channels: int, rgb: str, step: int = 2) -> int:
    want = bytes.fromhex(rgb.lstrip("#"))
    return sum(1 for row in rows[::step] for i in range(0, len(row), channels * step) if row[i : i + 3] == want)


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Content Security Policy" in line or "Refused to" in line
    ]


def _dom(tmp_path: Path, url: str) -> str:
    """The page's DOM once Chromium has run it; no console errors on the way."""
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)
    return dom.stdout


def _screenshot(tmp_path: Path, shot: Path, url: str) -> tuple[int, list[bytes]]:
    """A 1200x2000 screenshot of the page, kept at `shot`, as (channels, pixel rows)."""
    shot.unlink(missing_ok=True)
    done = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert not _console_errors(done.stderr), _console_errors(done.stderr)
    width, channels, rows = read_png(shot)
    assert width == 1200 and len(rows) == 2000
    return channels, rows


@pytest.fixture(scope="module")
def saturated_report() -> gradhealth.Report:
    """A zoo model whose findings name parameter layers (poor init) and activations (saturation)."""
    try:
        from tests import zoo
    except ImportError:
        import zoo  # type: ignore[no-redef]
    model, loss, inputs, targets = zoo.by_name("sigmoid_mlp_std1_saturated").build()
    return gradhealth.analyze(model, loss, inputs, targets)


def test_html_report_renders_in_chromium(
    saturated_report: gradhealth.Report, artifacts_dir: Path, tmp_path: Path
) -> None:
    from gradhealth.report import html_parts

    case, report = "sigmoid_mlp_std1_saturated", saturated_report
    assert {f.rule for f in report.findings} >= {"saturated_activation", "poor_initialization"}
    page = artifacts_dir / f"report_{case}.html"
    page.write_text(report.to_html())
    url = page.resolve().as_uri()

    dom = _dom(tmp_path, url)
    charts = {
        name: re.search(rf'<svg[^>]*class="gh-chart {name}"[^>]*>(.*?)</svg>', dom, re.S)
        for name in ("gh-gradient-chart", "gh-activation-chart")
    }
    for name, match in charts.items():
        assert match is not None, f"{name} missing from the rendered DOM"
        widths = [float(w) for w in re.findall(r'<rect[^>]*width="([\d.]+)"', match.group(1))]
        assert widths and max(widths) > 10, f"{name} has no visible bars"
    gradient = charts["gh-gradient-chart"]
    assert gradient is not None
    flagged = report.findings_for("poor_initialization")[0].layers
    assert len(re.findall(f'fill="{html_parts.FLAGGED_COLOR}"', gradient.group(1))) >= len(flagged)
    assert "saturated_activation" in dom and "Content-Security-Policy" in dom

    channels, rows = _screenshot(tmp_path, artifacts_dir / f"report_{case}.png", url)
    # The bars were painted, not only put in the DOM: their colours cover real pixels on screen.
    assert _count_color(rows, channels, html_parts.FLAGGED_COLOR) > 200  # badly initialised layers
    assert _count_color(rows, channels, html_parts.SATURATED_COLOR) > 200  # the activation chart


def test_run_report_renders_in_chromium(artifacts_dir: Path, tmp_path: Path) -> None:
    from gradhealth.report import html_parts, render_run_html

    from .test_run_render import LAYER_SCALES, run_report

    page = artifacts_dir / "report_run.html"
    page.write_text(run_report().to_html())
    url = page.resolve().as_uri()

    dom = _dom(tmp_path, url)
    layers = re.findall(r'<svg[^>]*class="gh-chart gh-time-chart gh-layer-chart"[^>]*>(.*?)</svg>', dom, re.S)
    assert len(layers) == len(LAYER_SCALES) and all('class="gh-series"' in chart for chart in layers)
    assert "gh-loss-chart" in dom and 'class="gh-marker gh-marker-critical"' in dom

    channels, rows = _screenshot(tmp_path, artifacts_dir / "report_run.png", url)
    # Lines, markers and non-finite ticks were painted: their colours cover real pixels on screen.
    assert _count_color(rows, channels, html_parts.OK_COLOR) > 100  # the gradient-norm lines
    assert _count_color(rows, channels, render_run_html.NONFINITE_COLOR) > 100  # ticks, fc's line, error markers
    assert _count_color(rows, channels, html_parts.COLORS["critical"]) > 20  # the critical finding's marker


_MEASURE = """<pre id="boxes"></pre><script>
const marks = ".gh-whisker,.gh-gsnr-point,.gh-stem,.gh-eigenvalue,.gh-density,.gh-band,.gh-median";
const out = {};
for (const svg of document.querySelectorAll("svg.gh-chart")) {
  const r = svg.getBoundingClientRect();
  out[svg.getAttribute("class")] = {width: r.width, height: r.height, marks: [...svg.querySelectorAll(marks)].map(
    e => { const b = e.getBBox(); return [e.getAttribute("class"), b.width, b.height]; })};
}
document.getElementById("boxes").textContent = JSON.stringify(out);
</script>"""


def test_estimate_charts_render_in_chromium(artifacts_dir: Path, tmp_path: Path) -> None:
    """The GSNR and spectrum charts lay out with real size in a browser, and the inert page raises nothing."""
    import html
    import json

    from gradhealth.report import estimate_charts

    from .test_render_estimates import GSNR, TOP, estimates_report

    report = estimates_report()
    page = artifacts_dir / "report_estimates.html"
    page.write_text(report.to_html())
    dom = _dom(tmp_path, page.resolve().as_uri())  # the real page, CSP and all: no console errors
    assert "Content-Security-Policy" in dom and "gh-gsnr-chart" in dom and "<script" not in dom

    # The page forbids scripts, so the same fragment is measured in a page of the test's own.
    probe = tmp_path / "measure.html"
    probe.write_text(f"<!DOCTYPE html><html><body>{report._repr_html_()}{_MEASURE}</body></html>")
    boxes = re.search(r'<pre id="boxes">(.*?)</pre>', _dom(tmp_path, probe.resolve().as_uri()), re.S)
    assert boxes is not None and boxes.group(1), "the measuring script did not run"
    charts = json.loads(html.unescape(boxes.group(1)))
    kinds = {"gh-gsnr-chart": {"gh-whisker", "gh-gsnr-point"}, "gh-spectrum-chart": {"gh-stem", "gh-eigenvalue"}}
    kinds["gh-density-chart"] = {"gh-density"}
    kinds["gh-dist-chart"] = {"gh-band", "gh-median"}  # the distributions across layers (the last of the two)
    for css, wanted in kinds.items():
        chart = charts[f"gh-chart {css}"]
        assert chart["width"] > 100 and chart["height"] > 50, css
        assert {kind for kind, _, _ in chart["marks"]} == wanted, css
        assert all(max(w, h) > 0 for _, w, h in chart["marks"]), css  # every mark has an extent on screen
    gsnr = charts["gh-chart gh-gsnr-chart"]["marks"]
    assert sum(kind == "gh-gsnr-point" for kind, _, _ in gsnr) == len(GSNR)
    assert sum(kind == "gh-stem" for kind, _, _ in charts["gh-chart gh-spectrum-chart"]["marks"]) == len(TOP)

    channels, rows = _screenshot(tmp_path, artifacts_dir / "report_estimates.png", page.resolve().as_uri())
    assert report.spectrum is not None
    report.spectrum.density, report.spectrum.density_grid = [], []
    without = tmp_path / "no_density.html"
    without.write_text(report.to_html())
    _, bare = _screenshot(tmp_path, tmp_path / "no_density.png", without.resolve().as_uri())
    # The density line was painted, not only put in the DOM (its legend swatch and the dead swatch share the colour).
    painted = _count_color(rows, channels, estimate_charts.DENSITY_COLOR, step=1)
    assert painted - _count_color(bare, channels, estimate_charts.DENSITY_COLOR, step=1) > 50
