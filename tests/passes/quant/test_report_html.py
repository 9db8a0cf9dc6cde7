"""The HTML report (``slimfx.report(..., html=)``, ``slimfx report --html``).

Content is checked by parsing the file (tables against :func:`measure` and the int8
graph); rendering is checked in headless Chromium (``make chromium``): the DOM after layout
(every table and picture has a size, nothing refers to another file) and a screenshot
(the bars of the SQNR plot and the int8 edges of the graph picture are drawn).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import slimfx
from slimfx import cli
from slimfx.errors import SlimfxError
from slimfx.ir import save_graph
from slimfx.passes.quant import report_html
from slimfx.passes.quant.report import measure

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-headless-shell",
                                                         "chromium-browser", "google-chrome"))
                 if p), None)
HAS_DOT = shutil.which("dot") is not None


class Tables(HTMLParser):
    """Rows (lists of cell texts) of every table, by table id; plus tags and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs)["id"]
            self.tables[self._table] = []
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.tables[self._table].append([])
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Tables:
    p = Tables()
    p.feed(text)
    return p


@pytest.fixture(scope="module")
def model_and_data() -> tuple[slimfx.Graph, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5), nn.Softmax(-1),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    return slimfx.trace(model, (x,)), [torch.randn(2, 3, 8, 8) for _ in range(4)]


@pytest.fixture(scope="module")
def html_file(model_and_data: tuple[slimfx.Graph, list[torch.Tensor]],
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    g, data = model_and_data
    path = tmp_path_factory.mktemp("report") / "report.html"
    text = slimfx.report(g, data, html=path)
    assert text == slimfx.report(g, data)  # html= changes nothing in the text
    return path


def test_tables_match_the_measurement(model_and_data: tuple[slimfx.Graph, list[torch.Tensor]],
                                      html_file: Path) -> None:
    g, data = model_and_data
    rep = measure(g, data)
    t = parse(html_file.read_text()).tables
    assert [r[:2] for r in t["layers-table"]] == [[x.name, x.op] for x in rep.layers]
    assert [float(r[2]) for r in t["layers-table"]] == [round(x.sqnr, 2) for x in rep.layers]
    assert len(rep.layers) == 4  # two convs, the pool and the linear; softmax stays float
    # every node of the int8 program, with the precision of its result
    assert [r[:2] for r in t["nodes-table"]] == [[n.name, n.op.name]
                                                 for n in rep.int8_graph.nodes]
    prec = {r[1]: r[3] for r in t["nodes-table"]}
    assert prec["qconv2d"] == "int32" and prec["requantize"] == "int8"
    assert prec["softmax"] == "float" and prec["dequantize"] == "float"
    by_layer = {r[0]: r[3] for r in t["precision-table"]}
    assert by_layer[rep.layers[0].name] == "int8"
    assert [r[1] for r in t["precision-table"] if r[3] == "float"] == ["softmax"]
    summary = dict(t["summary-table"])
    assert summary["constant bytes, int8"] == f"{rep.int8_bytes:,}"
    assert summary["constant bytes, float"] == f"{rep.float_bytes:,}"
    assert rep.int8_bytes < rep.float_bytes
    steps = [r[1] for r in t["steps-table"]]
    assert steps == ["remove-identity", "fold-bn", "fuse-activation", "dce", "insert-observers",
                     "calibrate", "quantize-dequantize", "convert-int8"]
    assert [int(r[4]) for r in t["steps-table"]][-1] == len(rep.int8_graph)


def test_the_file_is_self_contained(html_file: Path) -> None:
    p = parse(html_file.read_text())
    assert not [t for t, _ in p.tags if t in ("script", "img", "link", "iframe", "object")]
    refs = [a.get(k) for _, a in p.tags for k in ("src", "href", "xlink:href") if a.get(k)]
    assert all(str(r).startswith("#") for r in refs), refs  # only links inside the page
    ids = [a["id"] for _, a in p.tags if a.get("id")]
    for section in ("summary", "steps", "layers", "sqnr-plot", "precision", "graph", "nodes"):
        assert section in ids
    if HAS_DOT:
        assert "graph-picture" in ids and sum(t == "svg" for t, _ in p.tags) == 2


def test_without_graphviz_the_dot_text_is_shown(
        model_and_data: tuple[slimfx.Graph, list[torch.Tensor]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    g, data = model_and_data
    rep = measure(g, data)
    monkeypatch.setattr(report_html.shutil, "which", lambda name: None)
    text = report_html.render_html(rep)
    assert 'id="no-graphviz"' in text and "graph-picture" not in text
    assert "digraph" in text and "apt-get install graphviz" in text


def test_without_matplotlib_there_is_a_note_instead_of_the_plot(
        model_and_data: tuple[slimfx.Graph, list[torch.Tensor]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    g, data = model_and_data
    rep = measure(g, data)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    text = report_html.render_html(rep)
    assert 'id="no-plot"' in text and 'id="sqnr-plot"' not in text
    assert 'id="layers-table"' in text


def test_unwritable_path_is_a_slimfx_error(
        model_and_data: tuple[slimfx.Graph, list[torch.Tensor]], tmp_path: Path) -> None:
    g, data = model_and_data
    with pytest.raises(SlimfxError, match=r"cannot write the HTML report to .*missing"):
        slimfx.report(g, data, html=tmp_path / "missing" / "r.html")


def test_cli_report_html(model_and_data: tuple[slimfx.Graph, list[torch.Tensor]],
                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g, data = model_and_data
    save_graph(g, tmp_path / "g.safetensors")
    np.save(tmp_path / "calib.npy", torch.cat(data).numpy())
    out_html = tmp_path / "r.html"
    rc = cli.main(["report", str(tmp_path / "g.safetensors"), "--calib",
                   str(tmp_path / "calib.npy"), "--html", str(out_html)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = measure(g, data)  # what slimfx.report computes
    assert out == rep.text() + f"\nwrote {out_html}\n"
    assert parse(out_html.read_text()).tables["layers-table"] == \
        parse(report_html.render_html(rep)).tables["layers-table"]
    for bad, why in ((tmp_path / "no" / "r.html", "does not exist"),
                     (tmp_path / "r.txt", "must end in .html")):  # checked before any work
        rc = cli.main(["report", str(tmp_path / "g.safetensors"), "--calib",
                       str(tmp_path / "calib.npy"), "--html", str(bad)])
        _, err = capsys.readouterr()
        assert rc == 2 and len(err.strip().splitlines()) == 1 and why in err, err


# Appended to a copy of the report: measures the laid-out page and writes the result into
# the DOM, which --dump-dom prints (the report itself has no script).
_PROBE = """<script>
const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
document.body.setAttribute("data-probe", JSON.stringify({
  tables: Object.fromEntries([...document.querySelectorAll("table")].map(
    t => [t.id, {size: box(t), rows: t.tBodies[0].rows.length}])),
  svgs: [...document.querySelectorAll("section > div > svg")].map(
    s => ({parent: s.parentElement.id, size: box(s), shapes: s.querySelectorAll(
      "path, polygon, rect, ellipse, text").length})),
  images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
}));
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium to render the report in: run "
                    "`make chromium` (apt-get install chromium-headless-shell)")
def test_report_renders_in_headless_chromium(html_file: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probed.html"
    probe.write_text(html_file.read_text().replace("</body>", _PROBE + "\n</body>"))
    proc = _chromium("--dump-dom", probe.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = parse(proc.stdout)
    data = next(a["data-probe"] for t, a in body.tags if t == "body" and a.get("data-probe"))
    result = json.loads(str(data))
    expect_rows = {k: len(v) for k, v in parse(html_file.read_text()).tables.items()}
    assert {k: v["rows"] for k, v in result["tables"].items()} == expect_rows
    assert all(w > 100 and h > 20 for w, h in (v["size"] for v in result["tables"].values()))
    assert result["images"] == []
    pictures = {s["parent"]: s for s in result["svgs"]}
    assert set(pictures) == ({"sqnr-plot", "graph-picture"} if HAS_DOT else {"sqnr-plot"})
    for s in pictures.values():
        assert s["size"][0] > 100 and s["size"][1] > 50 and s["shapes"] > 10, s

    shot = tmp_path / "shot.png"
    proc = _chromium(f"--screenshot={shot}", "--window-size=1200,1600", html_file.as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    import matplotlib.image

    px = (matplotlib.image.imread(shot)[..., :3] * 255).round().astype(int)
    assert px.shape[:2] == (1600, 1200)
    non_white = (px < 250).any(-1).mean()
    assert 0.02 < non_white < 0.9  # text, tables and pictures on a white page
    bars = (np.abs(px - np.array([0x1F, 0x77, 0xB4])) <= 3).all(-1).sum()
    assert bars > 2000  # the blue bars of the SQNR plot (and int8 edges) are painted
