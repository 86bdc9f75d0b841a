"""The HTML report, checked as text: sections, numbers, no external references,
escaping of outside strings, flagged strata, well-formed markup.

Inputs are synthetic (vglpipe.report.synthetic): a procedural orthophoto,
random cell scores, two trained experiments and an untrained baseline.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import re
from html.parser import HTMLParser

import cv2
import numpy as np
import pandas as pd
import pytest

from vglpipe.errors import InputError
from vglpipe.geo.sphere import offset_m
from vglpipe.report import (
    SECTION_IDS,
    RunFacts,
    example_figure,
    render_localization_page,
    render_report,
    write_report,
)
from report_inputs import HOSTILE_FACT, HOSTILE_USERNAME, synthetic_inputs

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Element:
    def __init__(self, tag: str, attrs: dict, parent: Element | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element] = []
        self.text_parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self.text_parts + [c.text for c in self.children]).strip()

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs) -> list[Element]:
        return [
            e for e in self.iter()
            if (tag is None or e.tag == tag) and all(e.attrs.get(k) == v for k, v in attrs.items())
        ]

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())


class StrictParser(HTMLParser):
    """Builds a tree; records structural errors (unclosed/mismatched tags, duplicate ids)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.cur = self.root
        self.errors: list[str] = []
        self.ids: dict[str, int] = {}
        self.doctype: str | None = None
        self.all_attrs: list[tuple[str, str, str | None]] = []

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        if len(d) != len(attrs):
            self.errors.append(f"duplicate attribute in <{tag}>")
        self.all_attrs += [(tag, k, v) for k, v in attrs]
        if "id" in d:
            self.ids[d["id"]] = self.ids.get(d["id"], 0) + 1
        el = Element(tag, d, self.cur)
        self.cur.children.append(el)
        if tag not in VOID:
            self.cur = el

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.cur = self.cur.parent

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if self.cur.tag != tag:
            self.errors.append(f"</{tag}> closes <{self.cur.tag}> at {self.getpos()}")
            return
        self.cur = self.cur.parent

    def handle_data(self, data):
        self.cur.text_parts.append(data)

    def close(self):
        super().close()
        if self.cur is not self.root:
            self.errors.append(f"unclosed <{self.cur.tag}> at end of document")
        self.errors += [f"duplicate id {i!r}" for i, n in self.ids.items() if n > 1]


def parse(html: str) -> StrictParser:
    p = StrictParser()
    p.feed(html)
    p.close()
    return p


@pytest.fixture(scope="module")
def inputs():
    return synthetic_inputs(seed=3, n_examples=4)


@pytest.fixture(scope="module")
def html(inputs) -> str:
    return render_report(**inputs)


@pytest.fixture(scope="module")
def doc(html) -> StrictParser:
    return parse(html)


def section(doc: StrictParser, sid: str) -> Element:
    found = doc.root.find_all(id=sid)
    assert len(found) == 1, f"section #{sid}: {len(found)} elements"
    return found[0]


# ------------------------------------------------------------------ structure


def test_html_parses_without_errors(doc):
    assert doc.doctype and doc.doctype.lower() == "doctype html"
    assert doc.errors == []
    assert [e.tag for e in doc.root.children] == ["html"]
    assert [e.tag for e in doc.root.children[0].children] == ["head", "body"]


def test_every_section_present_with_heading(doc):
    for sid in SECTION_IDS:
        el = section(doc, sid)
        heads = [h for h in el.iter() if h.tag in ("h1", "h2")]
        assert heads and heads[0].text, f"section #{sid} has no heading"
    for sid in ("summary-table", "recall-table", "examples-successes", "examples-failures"):
        section(doc, sid)
    # the table of contents links every section
    links = {a.attrs["href"] for a in section(doc, "overview").find_all("a")}
    assert {f"#{s}" for s in SECTION_IDS if s != "overview"} <= links


def test_title_and_header_say_what_was_evaluated(inputs, doc):
    title = doc.root.find_all("title")[0].text
    assert title == inputs["title"]
    header = section(doc, "overview").text
    assert inputs["facts"].region in header
    assert "2,052" in header  # query photos
    assert "demo model" in header


# ------------------------------------------------------------------ numbers


def _rows(table: Element) -> dict[str, dict[str, Element]]:
    out = {}
    for tr in table.find_all("tr"):
        cells = [td for td in tr.children if td.tag == "td"]
        if cells:
            out[cells[0].text] = {td.attrs["data-key"]: td for td in cells if "data-key" in td.attrs}
    return out


def _shown_ok(text: str, fraction: float) -> bool:
    """Shown as percent: one decimal, or two significant digits for tiny values."""
    expected = 100 * fraction
    return abs(float(text) - expected) <= max(0.051, 0.05 * expected)


@pytest.mark.parametrize("table_id", ["summary-table", "recall-table"])
def test_experiment_numbers_in_tables(inputs, doc, table_id):
    rows = _rows(section(doc, table_id))
    experiments = inputs["experiments"]
    assert len(experiments) == 3
    expected_keys = (
        {"R@1<50m", "R@10<50m", "R@100<50m"}
        if table_id == "summary-table"
        else {f"R@{n}<{r}m" for n in (1, 5, 10, 50, 100) for r in (25, 50, 100)}
    )
    for e in experiments:
        assert e.name in rows, f"{e.name} missing from #{table_id}"
        assert set(rows[e.name]) == expected_keys
        for key, td in rows[e.name].items():
            assert float(td.attrs["data-value"]) == pytest.approx(e.recall[key], abs=1e-12)
            assert _shown_ok(td.text, e.recall[key]), (e.name, key, td.text)
    chance = [name for name in rows if name.startswith("chance")]
    assert len(chance) == 1
    main_chance = experiments[0].chance
    for key, td in rows[chance[0]].items():
        assert float(td.attrs["data-value"]) == pytest.approx(main_chance[key])
        assert _shown_ok(td.text, main_chance[key]), (key, td.text)


def test_best_value_per_column_is_bold_and_main_marked(inputs, doc):
    rows = _rows(section(doc, "summary-table"))
    main = inputs["experiments"][0]
    for key, td in rows[main.name].items():
        assert td.find_all("strong"), f"best {key} not bold"
    for td in rows["untrained"].values():
        assert not td.find_all("strong")
    marked = [tr for tr in section(doc, "summary-table").find_all("tr") if "main-exp" in tr.classes()]
    assert len(marked) == 1 and marked[0].attrs["data-experiment"] == main.name


# ------------------------------------------------------------------ self-contained


def _data_uris(html: str) -> list[tuple[str, bytes]]:
    return [
        (m.group(1), base64.b64decode(m.group(2)))
        for m in re.finditer(r'data:([a-z+/]+);base64,([A-Za-z0-9+/=]+)', html)
    ]


def test_no_external_references(html, doc):
    # every src/href/srcset/action/poster attribute is in-page (#...) or inline (data:)
    for tag, attr, value in doc.all_attrs:
        if attr in ("src", "href", "srcset", "action", "poster", "data", "formaction", "xlink:href"):
            assert value and (value.startswith("data:") or value.startswith("#")), (tag, attr, value[:80])
    assert not re.search(r"https?://", html), "an http(s) URL in the document"
    assert not re.search(r"(?i)<link\b|@import|url\(", html)
    assert not re.search(r'(?i)\b(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', html)
    # embedded SVGs: no scripts, no links outside the file (namespace names aside)
    uris = _data_uris(html)
    svgs = [payload.decode() for mime, payload in uris if mime == "image/svg+xml"]
    assert len(svgs) == 3  # curves, by-year, by-hour
    for svg in svgs:
        assert "<script" not in svg.lower()
        for ref in re.findall(r'(?:xlink:)?href="([^"]*)"', svg):
            assert ref.startswith("#"), ref
        urls = set(re.findall(r"https?://[^\"' >]*", svg))
        assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}, urls


def test_embedded_images_decode(html, inputs):
    uris = _data_uris(html)
    rasters = [payload for mime, payload in uris if mime in ("image/jpeg", "image/png")]
    assert len(rasters) == len(inputs["examples"])
    for payload in rasters:
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] >= 800 and img.std() > 10


# ------------------------------------------------------------------ escaping


def test_hostile_strings_are_escaped(html, doc):
    assert "&lt;script&gt;alert(" in html
    assert not re.search(r"(?i)<script", html), "raw <script in the document"
    assert "<img src=x" not in html
    assert not [t for t, *_ in doc.all_attrs if t == "script"]
    assert not [(t, a) for t, a, _ in doc.all_attrs if a.startswith("on")], "event-handler attribute"
    # ... and the literal text survives as text (decoded by the parser)
    assert HOSTILE_USERNAME in section(doc, "examples").text
    assert HOSTILE_FACT in section(doc, "facts").text


def test_hostile_experiment_name_and_title(inputs):
    bad = copy.deepcopy(inputs)
    evil = '$\\frac{1}{0}$ _x</td><script>alert(1)</script>'
    bad["experiments"][1] = dataclasses.replace(bad["experiments"][1], name=evil)
    bad["title"] = "</title><script>alert(3)</script>"
    bad["examples"] = bad["examples"][:1]
    html = render_report(**bad)
    doc = parse(html)
    assert doc.errors == []
    assert not re.search(r"(?i)<script", html)
    assert evil in section(doc, "summary-table").text
    assert doc.root.find_all("title")[0].text == bad["title"]


# ------------------------------------------------------------------ strata


@pytest.mark.parametrize("sid,attr,unit", [("by-year", "by_year", "year"), ("by-hour", "by_hour", "hour")])
def test_flagged_strata_marked(inputs, doc, sid, attr, unit):
    table = getattr(inputs["experiments"][0], attr)
    flagged = set(table.loc[table["flagged"], unit])
    assert flagged and len(flagged) < len(table), "the synthetic data must have flagged and unflagged strata"
    rows = section(doc, f"table-{sid}").find_all("tr")[1:]
    assert len(rows) == len(table)
    for tr, (_, rec) in zip(rows, table.iterrows(), strict=True):
        label = tr.find_all("td")[0].text
        assert label.startswith(str(rec[unit]) if unit == "year" else f"{rec[unit]:02d}:00")
        is_marked = "flagged" in tr.classes() and "flagged" in tr.text
        assert is_marked == bool(rec["flagged"]), (label, rec["flagged"])
        assert tr.find_all("td")[1].text == f"{rec['count']:,}"
    # a visible note names the flagged strata, and the figure is there
    note = [p for p in section(doc, sid).find_all("p") if "flag-note" in p.classes()]
    assert len(note) == 1 and f"Flagged ({len(flagged)} {unit}" in note[0].text
    if unit == "year":
        for y in flagged:
            assert str(y) in note[0].text
    src = section(doc, f"fig-{sid}").find_all("img")[0].attrs["src"]
    assert src.startswith("data:image/svg+xml;base64,")
    svg = base64.b64decode(src.split(",", 1)[1]).decode()
    assert "<pattern" in svg, "flagged bars are not hatched in the figure"


def test_missing_strata_say_so(inputs):
    inp = copy.deepcopy(inputs)
    inp["experiments"][0] = dataclasses.replace(inp["experiments"][0], by_hour=None)
    inp["examples"] = []
    doc = parse(render_report(**inp))
    assert doc.errors == []
    assert "No per-hour breakdown" in section(doc, "by-hour").text
    assert "No examples" in section(doc, "examples").text
    assert section(doc, "by-year").find_all("img")


# ------------------------------------------------------------------ examples


def test_examples_grouped_into_successes_and_failures(inputs, doc):
    ex = section(doc, "examples")
    seq = []  # (group heading id, figure class) in document order
    group = None
    for el in ex.iter():
        if el.tag == "h3":
            group = el.attrs.get("id")
        elif el.tag == "figure":
            seq.append((group, "success" if "success" in el.classes() else "failure"))
    n_ok = sum(e.success for e in inputs["examples"])
    n_bad = len(inputs["examples"]) - n_ok
    assert n_ok and n_bad
    assert seq == [("examples-successes", "success")] * n_ok + [("examples-failures", "failure")] * n_bad
    texts = [f.text for f in ex.find_all("figure")]
    assert all("Localized." in t for t in texts[:n_ok])
    assert all("Not localized." in t for t in texts[n_ok:])
    for e in inputs["examples"]:
        assert any(f"{e.creator_username}/{e.image_id}" in t for t in texts)
    # captions give the distance of the top-1 cell
    assert all(re.search(r"top-1 cell is [\d.,]+ k?m from", t) for t in texts)


def test_write_report_atomic_and_small(inputs, tmp_path):
    out = write_report(tmp_path / "sub" / "report.html", **inputs)
    assert out == tmp_path / "sub" / "report.html"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left
    size = out.stat().st_size
    assert size < 1_500_000, f"report with 4 examples is {size / 1e6:.2f} MB"
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_is_deterministic(inputs, html):
    assert render_report(**inputs) == html


# ------------------------------------------------------------------ example figure / localize page


def _decode(png: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


def test_example_figure_png_shows_heatmap(inputs):
    ex = inputs["examples"][0]
    png = example_figure(ex, dpi=60)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = _decode(png)
    assert img.shape == (300, 600, 3)
    flat = dataclasses.replace(ex, cell_scores=np.zeros_like(ex.cell_scores), topk_scores=np.zeros(len(ex.topk_scores)))
    no_heat = _decode(example_figure(flat, dpi=60))
    assert np.abs(img.astype(int) - no_heat.astype(int)).mean() > 1.0, "scores do not change the map"
    jpg = example_figure(ex, fmt="jpeg", dpi=60)
    assert jpg[:3] == b"\xff\xd8\xff"


def test_localization_page_without_ground_truth(inputs):
    ex = dataclasses.replace(inputs["examples"][1], ground_truth_known=False)
    assert ex.success is None and ex.rank is None
    html = render_localization_page("Where was <this> taken?", ex, {"checkpoint": "<b>x</b>", "query ms": 4.25})
    doc = parse(html)
    assert doc.errors == []
    assert not re.search(r"(?i)https?://|<script", html)
    assert "&lt;this&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    lat, lon = offset_m(ex.lat, ex.lon, *ex.topk_en_m[0])
    assert f"{float(lat):.6f}" in section(doc, "table-topk").text
    assert f"{float(lon):.6f}" in section(doc, "table-topk").text
    assert len(section(doc, "table-topk").find_all("tr")) == 1 + len(ex.topk_en_m)
    assert section(doc, "result").find_all("img")[0].attrs["src"].startswith("data:image/png;base64,")


# ------------------------------------------------------------------ validation


def test_invalid_inputs_raise_input_error(inputs):
    e0 = inputs["experiments"][0]
    with pytest.raises(InputError, match="main experiment"):
        render_report(**{**inputs, "main_experiment": "nope", "examples": []})
    with pytest.raises(InputError, match="duplicate"):
        render_report(**{**inputs, "experiments": [e0, e0], "examples": []})
    with pytest.raises(InputError, match="R@N<rm"):
        dataclasses.replace(e0, recall={"R@1<50": 0.5})
    with pytest.raises(InputError, match="fraction"):
        dataclasses.replace(e0, recall={"R@1<50m": 60.6})
    with pytest.raises(InputError, match="flagged"):
        dataclasses.replace(e0, by_year=pd.DataFrame({"year": [2020], "count": [3], "R@1<50m": [0.1]}))
    with pytest.raises(InputError, match="hour outside"):
        dataclasses.replace(
            e0, by_hour=pd.DataFrame({"hour": [24], "count": [3], "flagged": [True], "R@1<50m": [0.1]})
        )
    ex = inputs["examples"][0]
    with pytest.raises(InputError, match="RGB uint8"):
        dataclasses.replace(ex, ortho=ex.ortho.astype(np.float32))
    with pytest.raises(InputError, match="success=True"):
        dataclasses.replace(ex, success=True, rank=None)
    with pytest.raises(InputError, match="cell_scores"):
        dataclasses.replace(ex, cell_scores=ex.cell_scores[:-1])
    with pytest.raises(InputError, match="decodable"):
        example_figure(dataclasses.replace(ex, photo_jpeg=b"not a jpeg"))
    with pytest.raises(InputError, match="RunFacts"):
        render_report(**{**inputs, "facts": {"region": "x"}, "examples": []})


def test_stratum_column_accepts_other_name(inputs):
    e0 = inputs["experiments"][0]
    t = e0.by_year.rename(columns={"year": "capture_year"})
    e = dataclasses.replace(e0, by_year=t)
    assert list(e.by_year.columns[:3]) == ["year", "count", "flagged"]


def test_run_facts_types():
    f = RunFacts(region="r", n_photos="5", n_cells=7.0, skipped={"x": "2"}, timings_s={"a": 1})
    assert (f.n_photos, f.n_cells, f.skipped, f.timings_s) == (5, 7, {"x": 2}, {"a": 1.0})
    with pytest.raises(InputError, match="numbers"):
        RunFacts(region="r", n_photos=1, n_cells=1, timings_s={"a": "slow"})


def test_synthetic_module_writes_a_report(tmp_path, capsys):
    import report_inputs as syn

    assert syn.main([]) == 2  # usage
    assert syn.main([str(tmp_path / "r.html"), "1"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert parse((tmp_path / "r.html").read_text(encoding="utf-8")).errors == []


def test_cell_size_estimated_when_not_given(inputs):
    from vglpipe.report.figures import estimate_cell_size

    ex = inputs["examples"][2]
    assert estimate_cell_size(ex.cells_en_m) == pytest.approx(30.0)
    assert estimate_cell_size(ex.cells_en_m[:1]) == 30.0
    png_est = example_figure(dataclasses.replace(ex, cell_size_m=None), dpi=50)
    png_given = example_figure(ex, dpi=50)
    assert png_est == png_given


# ------------------------------------------------------------------ ablations


def _ablation_inputs(inputs, factor: str = "aerial LODs") -> dict:
    """The synthetic inputs plus an ablation: 4 LODs (3 seeds) beating 1 LOD (2 seeds) beyond the
    spread, and a second factor whose variants overlap."""
    from vglpipe.report import Ablation, AblationRun
    from vglpipe.report.data import ExperimentResult

    e0 = inputs["experiments"][0]
    values = {"lod4-s0": (0.050, 0.25), "lod4-s1": (0.056, 0.27), "lod4-s2": (0.047, 0.24),
              "lod1-s0": (0.031, 0.18), "lod1-s1": (0.034, 0.19), "mean-s0": (0.049, 0.22), "mean-s1": (0.058, 0.26)}
    extra = [ExperimentResult(name=n, description=f"{n} run", recall={"R@1<50m": r1, "R@10<50m": r10, "R@100<50m": 0.7},
                              chance=e0.chance, n_queries=e0.n_queries) for n, (r1, r10) in values.items()]
    ablations = [
        Ablation(factor, [AblationRun("lod1-s1", "1 LOD", 1), AblationRun("lod4-s0", "4 LODs", 0),
                          AblationRun("lod1-s0", "1 LOD", 0), AblationRun("lod4-s1", "4 LODs", 1),
                          AblationRun("lod4-s2", "4 LODs", 2)],
                 better="4 LODs", source="paper §3.2"),
        Ablation("pooling", [AblationRun("lod4-s0", "MHA", 0), AblationRun("lod4-s1", "MHA", 1),
                             AblationRun("mean-s0", "mean", 0), AblationRun("mean-s1", "mean", 1)], better="MHA"),
    ]
    return {**inputs, "experiments": [*inputs["experiments"], *extra], "examples": [], "ablations": ablations}


def test_ablations_section_side_by_side(inputs):
    html = render_report(**_ablation_inputs(inputs))
    doc = parse(html)
    assert doc.errors == []
    sec = section(doc, "ablations")
    assert sec.find_all("h2")[0].text == "Ablations"
    assert "#ablations" in {a.attrs["href"] for a in section(doc, "overview").find_all("a")}
    # the section comes right after the summary
    order = [e.attrs["id"] for e in doc.root.find_all("section")]
    assert order.index("ablations") == order.index("summary") + 1
    rows = section(doc, "table-ablation-1").find_all("tbody")[0].find_all("tr")
    assert [r.attrs["data-variant"] for r in rows] == ["4 LODs", "1 LOD"]  # the paper's better one first
    assert "paper-better" in rows[0].classes() and "paper-better" not in rows[1].classes()
    cells = [td.text for td in rows[0].find_all("td")]
    assert cells[:2] == ["4 LODs", "0, 1, 2"]
    assert cells[2:5] == ["5.0 · 5.6 · 4.7", "5.1", "4.7–5.6"]  # R@1<50m per seed, mean, spread (percent)
    assert cells[5:8] == ["25.0 · 27.0 · 24.0", "25.3", "24.0–27.0"]  # R@10<50m
    assert [td.text for td in rows[1].find_all("td")][2:5] == ["3.1 · 3.4", "3.2", "3.1–3.4"]
    assert "<p>Paper: <strong>4 LODs</strong> is better (paper §3.2).</p>" in html
    items = sec.find_all("li")
    assert [li.attrs["data-verdict"] for li in items] == ["holds", "within the seed spread"]
    assert "4 LODs > 1 LOD: holds (mean R@1<50m 5.1 % vs 3.2 %" in items[0].text
    assert "MHA vs mean: within the seed spread (cannot be told from noise" in items[1].text
    src = section(doc, "fig-ablation-1").find_all("img")[0].attrs["src"]
    assert src.startswith("data:image/svg+xml;base64,")


def test_no_ablations_no_section(doc):
    assert not doc.root.find_all(id="ablations")
    assert "#ablations" not in {a.attrs["href"] for a in section(doc, "overview").find_all("a")}


def test_ablation_strings_are_escaped(inputs):
    evil = '<script>alert("factor")</script>'
    inp = _ablation_inputs(inputs, factor=evil)
    from vglpipe.report import Ablation, AblationRun

    inp["ablations"].append(Ablation("other", [AblationRun("lod4-s0", '<img src=x onerror="a()">', 0)],
                                     better='<img src=x onerror="a()">', source="</p><script>x</script>"))
    html = render_report(**inp)
    doc = parse(html)
    assert doc.errors == []
    assert not re.search(r"(?i)<script", html)
    assert "<img src=x" not in html
    assert not [(t, a) for t, a, _ in doc.all_attrs if a.startswith("on")]
    assert "&lt;script&gt;alert(" in html
    assert evil in section(doc, "ablation-1").text
    assert section(doc, "ablation-3").text == "other"
    row = section(doc, "table-ablation-3").find_all("tbody")[0].find_all("tr")[0]
    assert row.find_all("td")[0].text == '<img src=x onerror="a()">'
    assert "no verdict" not in row.text and "Only one variant" in section(doc, "ablations").text


def test_ablation_of_an_unknown_experiment_is_refused(inputs):
    from vglpipe.report import Ablation, AblationRun

    inp = _ablation_inputs(inputs)
    inp["ablations"] = [Ablation("x", [AblationRun("nope", "a", 0)])]
    with pytest.raises(InputError, match="nope"):
        render_report(**inp)
    with pytest.raises(InputError, match="better variant"):
        Ablation("x", [AblationRun("a", "v", 0)], better="w")
    with pytest.raises(InputError, match="no runs"):
        Ablation("x", [])
