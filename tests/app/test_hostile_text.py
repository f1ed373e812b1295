"""Names typed by users are shown as the characters typed: never a link, a picture, formatting, LaTeX or an icon.

A run, dataset, class or study name, a file name, a ?run= address and an engine sentence quoting one of them go
into Streamlit elements that render Markdown (titles, captions, alerts, labels, image captions, table cells) and
into Plotly figures, which render some HTML. In AppTest an element's value is its Markdown source: these tests check
that no hostile construct is left unescaped there, and that the source still reads as the name once rendered.
"""
from __future__ import annotations

import json
import re
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import errors
from engine.config import RunConfig
from engine.runs import execute
from engine.runs.submit import create_run
from pages import _widgets as w

LINK = "[click here to re-login](https://example.invalid/login)"
HOSTILE = (f"![p](http://127.0.0.1:9/t.png) {LINK} **bold** <b>html</b> $x^2$ :red[colour] :material/home: "
           ":smile: :streamlit: a -> b www.example.invalid x@example.invalid")
HOSTILE_CLASSES = ["<b>sick</b> [x](https://example.invalid/c)", "**well** :red[c] $y$"]
ORDINARY = "U-Net (run 3)."
# Each of these, left as typed in a Markdown source, renders as something other than its characters.
LIVE = ["](http", "![p]", "**bold**", "**well**", "<b>", "$x^2$", "$y$", ":red[", ":material/", ":smile:",
        ":streamlit:", "https://", "http://", "www.example", "x@example", " -> "]


def live_constructs(text: str) -> list[str]:
    return [construct for construct in LIVE if construct in text]


# ---- the helpers ------------------------------------------------------------------------------------------

@pytest.fixture
def rendered(lb):
    return lb.rendered          # the conftest's reading of Markdown source: escapes resolved, joiners invisible


@pytest.mark.parametrize("name", [HOSTILE, *HOSTILE_CLASSES, ":smile: and :+1:", "# heading", "> quote",
                                  "- item", "1. item", "two\n\nlines\n# heading", "back\\slash `code`",
                                  "&lt;b&gt; &amp;", "a <-> b -- c >= d <= e ~= f", "<script>alert(1)</script>",
                                  ORDINARY, "Chest X-ray pilot", "Demo: U-Net"])
def test_as_text_leaves_nothing_to_render_and_reads_as_typed(name, rendered):
    source = w.as_text(name)
    assert not live_constructs(source), source
    assert "\n" not in source
    assert not re.match(r"\s*([#>+*-]|\d+[.)])(\s|$)", source), source         # no heading, quote or list
    assert rendered(source) == " ".join(name.split()), source


def test_an_ordinary_name_reads_the_same(rendered):
    assert rendered(w.as_text(ORDINARY)) == ORDINARY
    assert "\\" not in rendered(w.as_text(ORDINARY))


def test_plot_text_escapes_the_html_plotly_draws():
    assert w.plot_text("<b>x</b> <a href='https://example.invalid'>y</a> & z") == \
        "&lt;b&gt;x&lt;/b&gt; &lt;a href='https://example.invalid'&gt;y&lt;/a&gt; &amp; z"
    assert w.plot_text(ORDINARY) == ORDINARY


# ---- what the pages show ----------------------------------------------------------------------------------

def markdown_sources(at) -> list[str]:
    """Every string the page hands Streamlit that Streamlit renders as Markdown."""
    out: list[str] = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "error", "warning", "info", "success",
                 "toast"):
        out += [str(e.value) for e in getattr(at, kind)]
    for kind in ("checkbox", "button", "selectbox", "multiselect", "radio", "text_input", "number_input", "slider",
                 "toggle", "expander", "tabs", "metric", "select_slider", "text_area"):
        for element in getattr(at, kind):
            out.append(str(getattr(element, "label", "")))
            out.append(str(getattr(element, "help", "") or ""))
    out += [str(option) for radio in at.radio for option in radio.options]      # radio options render Markdown
    out += [caption for image in at.get("image") for caption in image.captions]
    for table in at.table:                                                         # st.table cells too
        out += [str(cell) for cell in np.asarray(table.value).ravel()] + [str(c) for c in table.value.columns]
    return out


def plot_strings(at) -> list[str]:
    out: list[str] = []

    def walk(node) -> None:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    for chart in at.get("plotly_chart"):
        walk(json.loads(chart.proto.spec))
    return out


def assert_shown_as_text(at) -> str:
    """No hostile construct is left live anywhere; returns everything shown, for further checks."""
    sources = markdown_sources(at)
    live = {construct: [s for s in sources if construct in s][:2] for construct in LIVE
            if any(construct in s for s in sources)}
    assert not live, live
    html = [s for s in plot_strings(at) if re.search(r"<\s*/?\s*(b|a|i|img|span|sup|sub|em)\b", s, re.IGNORECASE)]
    assert not html, html
    return "\n".join(sources)


@pytest.fixture
def hostile_dataset(lb, cls_dataset) -> str:
    """The tiny classification dataset renamed, its classes renamed and a warning that quotes a file name."""
    path = Path(lb.home) / "datasets" / cls_dataset / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["name"] = HOSTILE
    manifest["classes"] = HOSTILE_CLASSES
    report = manifest.setdefault("report", {})
    report["warnings"] = [{"kind": "other", "message": f"The file '{HOSTILE}.png' looks odd."}]
    path.write_text(json.dumps(manifest))
    return cls_dataset


@pytest.fixture
def quoting_diagnosis(monkeypatch):
    """The engine's diagnosis quoting a class name, as its sentences may."""
    import engine.diagnosis
    monkeypatch.setattr(engine.diagnosis, "diagnose",
                        lambda run, rows, manifest=None: [{"kind": "x", "message": f"Class '{HOSTILE}' is rare."}])


def test_monitor_shows_a_hostile_run_name_as_text(lb, hostile_dataset, quoting_diagnosis, rendered):
    run_id = lb.fake_run(hostile_dataset, "classification", name=HOSTILE)
    at = lb.page("monitor.py")
    at.query_params["run"] = run_id
    at.run()
    lb.no_exception(at)
    shown = assert_shown_as_text(at)
    assert f"### {w.as_text(HOSTILE)}" in lb.sources(at, "markdown")        # the title, escaped
    assert f"### {HOSTILE}" in lb.texts(at, "markdown")                      # and reading as typed
    assert "is rare" in shown


def test_monitor_shows_a_hostile_address_and_failure_as_text(lb, cls_dataset, rendered):
    lb.fake_run(cls_dataset, "classification", name="ok", status="failed",
                message=f"Could not read '{HOSTILE}.png'.")
    at = lb.page("monitor.py")
    at.query_params["run"] = HOSTILE
    at.run()
    lb.no_exception(at)
    assert_shown_as_text(at)
    boxes = lb.texts(at, "error")
    assert f"There is no run '{errors.shown(HOSTILE)}'" in boxes      # a long address is cut, never echoed whole
    assert f"Could not read '{HOSTILE}.png'." in boxes


def test_monitor_reads_well_for_an_ordinary_name(lb, cls_dataset, rendered):
    run_id = lb.fake_run(cls_dataset, "classification", name=ORDINARY)
    at = lb.page("monitor.py")
    at.query_params["run"] = run_id
    at.run()
    lb.no_exception(at)
    title = next(m.value for m in at.markdown if m.value.startswith("### "))
    assert rendered(title) == f"### {ORDINARY}"


def test_compare_shows_hostile_run_dataset_and_class_names_as_text(lb, hostile_dataset, quoting_diagnosis,
                                                                   rendered):
    lb.fake_run(hostile_dataset, "classification", name=HOSTILE, value=0.9)
    lb.fake_run(hostile_dataset, "classification", name=ORDINARY, value=0.7)
    at = lb.page("compare.py").run()
    lb.no_exception(at)
    shown = assert_shown_as_text(at)
    assert HOSTILE in rendered(shown) and ORDINARY in rendered(shown)
    strings = plot_strings(at)
    assert any(w.plot_text(HOSTILE) in s for s in strings)                 # legend and confusion-matrix title
    assert w.plot_text(HOSTILE_CLASSES[0]) in strings                      # class names on the matrix


def test_data_page_shows_hostile_dataset_and_class_names_as_text(lb, hostile_dataset, rendered):
    at = lb.page("data.py")
    at.session_state["data_section"] = "Explore a dataset"
    at.run()
    lb.no_exception(at)
    shown = assert_shown_as_text(at)
    assert f"The file '{HOSTILE}.png' looks odd." in rendered(shown)
    assert f"Yes, delete {HOSTILE}" in rendered(shown)
    assert HOSTILE_CLASSES[1] in rendered(shown)                           # class list and image captions


def test_train_page_shows_hostile_class_names_as_text(lb, hostile_dataset, rendered):
    at = lb.page("train.py").run()
    lb.no_exception(at)
    shown = assert_shown_as_text(at)
    assert ", ".join(HOSTILE_CLASSES) in rendered(shown)


def _png() -> bytes:
    buffer = BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_page_shows_hostile_names_as_text(lb, hostile_dataset, rendered):
    config = RunConfig(dataset_id=hostile_dataset, arch="lenet5", epochs=1, batch_size=8, image_size=32,
                       preview_samples=0, name=HOSTILE)
    run_id = create_run(config, status="running")
    assert execute.run_job(run_id)["status"] == "done"
    at = lb.page("predict.py").run()
    lb.no_exception(at)
    at.file_uploader(key="predict_files").set_value((f"{HOSTILE}.png", _png(), "image/png")).run()
    lb.no_exception(at)
    shown = assert_shown_as_text(at)
    assert HOSTILE_CLASSES[0] in rendered(shown)
    assert w.plot_text(HOSTILE_CLASSES[0]) in plot_strings(at)             # the probability bars


def test_search_page_shows_a_hostile_study_name_as_text(lb, seg_dataset, monkeypatch, rendered):
    from engine.search import study as search
    monkeypatch.setattr(search, "launch_search", lambda name: 4242)
    name = "[x](https://example.invalid/s) **bold** <b>h</b> $x^2$ :red[c] :smile:"     # search names: <= 100
    spec = search.StudySpec(dataset_id=seg_dataset, base={"arch": "unet", "epochs": 1, "image_size": 32},
                            space=search.SearchSpace(lr=(1e-3, 1e-2)), n_trials=2, name=name)
    search.create_study(spec)
    at = lb.page("search.py").run()
    lb.no_exception(at)
    shown = assert_shown_as_text(at)
    assert f"run named '{name} #N'" in rendered(shown)
