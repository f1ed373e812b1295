"""The whole app in a real browser: upload a ZIP, train a U-Net, watch it live, compare it, predict with it.

The run is named with Markdown and HTML a user could type (a link, an image, bold, LaTeX, Streamlit's colour and
icon shortcodes): every page must show those characters as typed, with no link or picture in the DOM, and so must
the Monitor's error box for a ?run= address that holds them.

A second test, after it on the same server, turns the workspace into a class (accounts and an assignment made
with the CLI): a student logs in (a reload keeps the session), trains a tiny run, hands it in, and the instructor
logs in and sees the leaderboard.

The first test, in order, on one server and one browser session (the pages share st.session_state, so the app is
navigated through its sidebar links, never by reloading). Screenshots land in tests/e2e/artifacts/, and the
final Monitor picture also in docs/screenshots/monitor.png for the README.

    .venv/bin/python -m pytest tests/e2e -q        (make e2e; needs /usr/bin/chromium)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")
from playwright.sync_api import Page, expect  # noqa: E402

from engine import errors  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "e2e" / "artifacts"      # git-ignored; the conftest creates it
pytestmark = pytest.mark.slow

CONNECTED = "[data-testid='stApp'][data-test-connection-state='CONNECTED']"
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
UPLOAD_INPUT = "[data-testid='stFileUploaderDropzoneInput']"
PLOT = "[data-testid='stPlotlyChart'] .js-plotly-plot"
N_IMAGES = 120               # 84 train images: 42 steps an epoch at batch size 2, so the curve grows visibly
TRAIN_SIZE = 128             # 64 px images trained at 128 px: ~7 s an epoch, several redraws of the Monitor
TRAIN_TIMEOUT = 240          # seconds for the worker to start and finish the 2-epoch run
NOWHERE = (1390, 600)        # a blank spot right of the main panel, for the mouse during screenshots
DOCS_SCREENSHOT = ROOT / "docs" / "screenshots" / "monitor.png"
# A run name a user could type, each part of which Streamlit would otherwise render as something else.
HOSTILE = ("![p](http://127.0.0.1:9/t.png) [click here to re-login](https://example.invalid/login) **bold** "
           "<b>html</b> $x^2$ :red[colour] :material/home: :smile:")

timings: dict[str, float] = {}


@contextmanager
def step(name: str):
    """Time one step and name it in the failure message."""
    start = time.monotonic()
    try:
        yield
    except Exception as err:
        raise AssertionError(f"step '{name}' failed after {time.monotonic() - start:.1f} s: {err}") from err
    finally:
        timings[name] = time.monotonic() - start


# ---- Streamlit helpers ------------------------------------------------------------------------------------

def settle(page: Page, timeout: float = 60) -> None:
    """Wait until the script rerun triggered by the last interaction is over.

    A widget change starts a rerun a moment later, so give it that moment before waiting for notRunning;
    callers then wait for the specific result they expect, which is what makes the step robust.
    """
    page.wait_for_selector(CONNECTED, timeout=timeout * 1000)
    page.wait_for_timeout(400)
    page.wait_for_selector(IDLE, timeout=timeout * 1000)


def main_text(page: Page) -> str:
    return page.locator("[data-testid='stMain']").inner_text()


def open_page(page: Page, slug: str, title: str) -> None:
    """Follow a sidebar link (keeps the session, unlike page.goto) and wait for the page's title."""
    page.locator(f"a[data-testid='stSidebarNavLink'][href$='/{slug}']").click()
    page.wait_for_url(re.compile(rf"/{slug}(\?|$)"))
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible(timeout=30_000)
    settle(page)


def choose(page: Page, label: str, option: str | re.Pattern) -> None:
    """Pick an option of a selectbox (a combobox with the widget's label)."""
    box = page.get_by_role("combobox", name=label, exact=True)
    box.click()
    page.get_by_role("option", name=option).first.click()
    settle(page)
    expect(box).to_have_value(option)


def set_number(page: Page, label: str, value: int) -> None:
    field = page.locator(f"[data-testid='stNumberInput'] input[aria-label='{label}']")
    field.fill(str(value))
    field.press("Enter")            # a number input commits on Enter or blur
    settle(page)
    expect(field).to_have_value(str(value))


def shot(page: Page, name: str) -> Path:
    """Screenshot of the whole page. Streamlit scrolls inside its main panel, not the document, so a full-page
    screenshot would show only the viewport: grow the viewport to the panel's height for the picture instead
    (again, as images and charts laid out at the new size can make the panel taller)."""
    path = ARTIFACTS / name
    size = page.viewport_size
    page.mouse.move(*NOWHERE)                   # no hover effects (Plotly's toolbar) in the picture
    try:
        for _ in range(3):
            height = page.evaluate("() => document.querySelector(\"[data-testid='stMain']\").scrollHeight")
            height = max(size["height"], min(int(height), 4000))
            if height == page.viewport_size["height"]:
                break
            page.set_viewport_size({"width": size["width"], "height": height})
            page.wait_for_timeout(500)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path


def plot_points(page: Page) -> int:
    """Number of points in the first (loss) chart, from Plotly's parsed traces on the graph div.

    (`data` holds numpy arrays still base64-encoded; `_fullData` has them decoded.)
    """
    return page.evaluate(
        "(sel) => { const g = document.querySelector(sel); if (!g || !g._fullData) return 0;"
        " return g._fullData.reduce((n, t) => n + (t._length || 0), 0); }", PLOT)


def shown_text(page: Page) -> str:
    """The main panel's text as a reader sees it (pages split shortcodes with invisible word joiners)."""
    return main_text(page).replace("\u2060", "")


def assert_literal(page: Page, text: str) -> None:
    """`text` is on the page as its characters, and nothing in the DOM came of its link, picture or markup."""
    assert text in shown_text(page), shown_text(page)[:3000]
    assert_nothing_rendered(page)


def assert_nothing_rendered(page: Page) -> None:
    """No link, picture, bold, LaTeX, colour or icon made of HOSTILE's parts anywhere on the page."""
    found = page.evaluate(
        """() => ({
            links: [...document.querySelectorAll("a[href*='example.invalid']")].map(a => a.outerHTML),
            pictures: [...document.querySelectorAll("img[src*='127.0.0.1:9']")].map(i => i.outerHTML),
            bold: [...document.querySelectorAll("[data-testid='stMain'] strong, [data-testid='stMain'] b")]
                  .map(b => b.textContent).filter(t => t.includes("bold") || t.includes("html")),
            latex: document.querySelectorAll("[data-testid='stMain'] .katex").length,
            colour: document.querySelectorAll("[data-testid='stMain'] .stMarkdownColoredText").length,
            icons: [...document.querySelectorAll("[data-testid='stMain'] span[role='img']")]
                   .map(s => s.textContent).filter(t => t === "home"),
        })""")
    assert found == {"links": [], "pictures": [], "bold": [], "latex": 0, "colour": 0, "icons": []}, found


def progress_text(page: Page) -> str:
    """The Monitor's progress line ("Epoch 1/2 · about 8 s left"); read in one go, as a redraw can remove it."""
    return page.evaluate("() => { const bar = document.querySelector(\"[data-testid='stProgress']\");"
                         " return bar ? bar.innerText.trim() : ''; }")


# ---- inputs -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cardiac MRI upload, written by the engine's CLI as a user would."""
    out = tmp_path_factory.mktemp("upload") / "cardiac.zip"
    done = subprocess.run([sys.executable, "-m", "engine", "demo-data", "segmentation", str(out),
                           "--n", str(N_IMAGES), "--size", "64"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"engine demo-data failed:\n{done.stdout}\n{done.stderr}"
    return out


def one_image_and_mask(archive: Path, folder: Path) -> tuple[Path, Path]:
    with zipfile.ZipFile(archive) as zf:
        name = sorted(n for n in zf.namelist() if n.startswith("images/") and n.endswith(".png"))[0]
        image, mask = folder / "image" / Path(name).name, folder / "mask" / Path(name).name
        for target, member in ((image, name), (mask, name.replace("images/", "masks/", 1))):
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(member))
    return image, mask


# ---- the test ---------------------------------------------------------------------------------------------

def test_upload_train_monitor_compare_predict(server, browser_page: Page, demo_zip: Path, tmp_path: Path,
                                              diagnostics) -> None:
    page = browser_page
    total = time.monotonic()

    with step("open the app"):
        page.goto(server.url, timeout=60_000)
        settle(page)
        expect(page.get_by_role("heading", name="Lightbox", exact=True)).to_be_visible()

    with step("data: upload the ZIP and ingest it"):
        open_page(page, "data", "Data")
        page.get_by_text("Segmentation: a mask per image", exact=True).click()
        settle(page)
        expect(page.get_by_role("radio", name="Segmentation: a mask per image")).to_be_checked()
        page.locator(UPLOAD_INPUT).first.set_input_files(str(demo_zip))
        settle(page)
        expect(page.locator("[data-testid='stFileUploader']").first).to_contain_text("cardiac.zip")
        ingest = page.get_by_role("button", name="Ingest", exact=True)
        expect(ingest).to_be_enabled()
        ingest.click()
        ready = page.get_by_text(re.compile(rf"Dataset cardiac is ready: {N_IMAGES} images\."))
        expect(ready).to_be_visible(timeout=120_000)
        settle(page)
        page.get_by_role("button", name="Explore it", exact=True).click()
        settle(page)
        expect(page.get_by_text("Every file was read; nothing was skipped.")).to_be_visible(timeout=60_000)
        report = main_text(page)
        assert "segmentation" in report.lower() and str(N_IMAGES) in report, report[:2000]
        shot(page, "01_data.png")

    with step("train: set up a 2-epoch U-Net and start it"):
        open_page(page, "train", "Train")
        choose(page, "Dataset", re.compile(r"^cardiac · segmentation"))
        # 120 images leave 18 for validation: the page warns that scores on so few images are shaky
        expect(page.get_by_text(re.compile(r"The validation split holds \d+ images")).first).to_be_visible()
        # Auto fills the form from the dataset's fingerprint and explains each choice; everything stays editable
        page.get_by_role("button", name=re.compile(r"Auto$")).click()
        expect(page.get_by_text("Why these settings (Auto)")).to_be_visible(timeout=120_000)
        expect(page.get_by_text(re.compile(r"flip", re.IGNORECASE)).first).to_be_visible()
        shot(page, "02a_train_auto.png")
        expect(page.get_by_role("combobox", name="Architecture", exact=True)).to_have_value("U-Net (2015)")  # Auto
        set_number(page, "Epochs", 2)
        set_number(page, "Batch size", 2)
        set_number(page, "Image size (px)", TRAIN_SIZE)
        name = page.get_by_role("textbox", name="Run name (optional)", exact=True)
        name.fill(HOSTILE)
        name.press("Enter")
        settle(page)
        start = page.get_by_role("button", name="Start training", exact=True)
        expect(start).to_be_enabled()
        start.scroll_into_view_if_needed()
        shot(page, "02_train.png")
        start.click()
        page.wait_for_url(re.compile(r"/monitor\?run="), timeout=60_000)
        run_id = re.search(r"[?&]run=([^&#]+)", page.url).group(1)
        expect(page.get_by_role("heading", name="Monitor", exact=True)).to_be_visible(timeout=30_000)

    with step("monitor: the curves appear and update until the run is done"):
        expect(page.get_by_text(run_id).first).to_be_visible(timeout=30_000)
        seen: list[tuple[str, int]] = []          # (progress text, loss points) as the page redraws itself
        deadline = time.monotonic() + TRAIN_TIMEOUT
        while True:
            state = (progress_text(page), plot_points(page))
            if not seen or state != seen[-1]:
                seen.append(state)
            if page.locator("[data-testid='stAlertContentSuccess']").count() and state[1] > 0 \
                    and state[0].startswith("Epoch 2/2"):
                break
            text = main_text(page)
            assert "The run failed" not in text and "interrupted" not in text.lower(), text[:3000]
            assert time.monotonic() < deadline, f"not done after {TRAIN_TIMEOUT} s; states seen: {seen}"
            page.wait_for_timeout(500)
        print(f"\nmonitor states seen: {seen}")
        # The page was loaded once, so every later state came from its own run_every redraws. While the run is
        # queued or running the progress text reads "Epoch e/E · …"; when done, just "Epoch 2/2".
        live = [points for label, points in seen if " · " in label and points > 0]
        assert live, f"the loss curve was never drawn while the run was going: {seen}"
        assert seen[-1][1] > live[0], f"the loss curve did not grow after it first appeared: {seen}"
        settle(page)
        expect(page.locator(PLOT).first).to_be_visible()
        assert page.locator(PLOT).count() >= 2, "expected the loss and the score charts"
        text = main_text(page)
        assert "Best validation Dice" in text and "model unet" in text, text[:2000]
        assert_literal(page, HOSTILE)                          # the title, as typed
        shot(page, "03_monitor.png")
        page.mouse.move(*NOWHERE)
        if os.environ.get("LIGHTBOX_UPDATE_SCREENSHOT"):    # refresh the README picture only when asked
            DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(DOCS_SCREENSHOT))     # the viewport (1400×1000) for the README

    with step("compare: the run is on the leaderboard"):
        open_page(page, "compare", "Compare")
        board = page.locator("[data-testid='stDataFrame']").first
        expect(board).to_be_visible()
        # The grid draws on a canvas; its accessible twin, a <table role=grid>, holds the cell texts.
        cell = board.locator("td", has_text=run_id).first
        expect(cell).to_be_attached(timeout=30_000)
        row = cell.locator("xpath=..").locator("td").all_inner_texts()
        assert "done" in row and any("U-Net" in c or "unet" in c for c in row), row
        assert "Validation Dice" in main_text(page)      # one dataset's runs, ranked by one named metric
        assert_literal(page, HOSTILE)                      # in what Lightbox notices about the run
        shot(page, "04_compare.png")

    with step("predict: one uploaded image gives a mask and a Dice score"):
        image, mask = one_image_and_mask(demo_zip, tmp_path)
        open_page(page, "predict", "Predict")
        box = page.get_by_role("combobox", name="Trained run", exact=True)
        expect(box).to_have_value(re.compile(r"\(unet\) · .* · done"))
        uploaders = page.locator("[data-testid='stFileUploader']")
        uploaders.filter(has_text="Images (PNG").locator(UPLOAD_INPUT).set_input_files(str(image))
        settle(page)
        expect(page.get_by_text("Foreground", exact=True)).to_be_visible(timeout=60_000)
        uploaders.filter(has_text="Ground-truth masks").locator(UPLOAD_INPUT).set_input_files(str(mask))
        settle(page)
        expect(page.get_by_text("Dice vs the given mask")).to_be_visible(timeout=60_000)
        expect(page.locator("[data-testid='stImage']").filter(has_text=image.name).first).to_be_visible()
        assert_nothing_rendered(page)
        shot(page, "05_predict.png")

    with step("monitor: a ?run= address with Markdown in it is shown as text"):
        page.goto(f"{server.url}/monitor?run={quote(HOSTILE, safe='')}", timeout=60_000)
        settle(page)
        expect(page.locator("[data-testid='stAlertContentError']").first).to_be_visible(timeout=30_000)
        assert_literal(page, f"There is no run '{errors.shown(HOSTILE)}' in this workspace")

    # Streamlit's client can break without an exception in Python (a blank page until reload): none may have
    assert not page.client_breaks, page.client_breaks
    timings["total"] = time.monotonic() - total
    (ARTIFACTS / "timings.txt").write_text("".join(f"{k}: {v:.1f} s\n" for k, v in timings.items()))
    print("step timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


# ---- classroom mode ---------------------------------------------------------------------------------------

CLASS_PASSWORDS = {"ana": "ana-pass-1", "prof": "prof-pass-3"}


def engine_cli(server, *args: str) -> dict:
    """`python -m engine ARGS --json` on the server's workspace, as the instructor would type it; its JSON."""
    env = {**os.environ, "LIGHTBOX_HOME": str(server.home)}
    env.pop("LIGHTBOX_DB_URL", None)
    done = subprocess.run([sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, f"engine {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def classroom(server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A student and an instructor, and an assignment with a hidden test on a small X-ray dataset, made with the
    CLI the way README's "Run a class" does it. (Runs after the single-user test: from now on the app asks
    who is there.)"""
    folder = tmp_path_factory.mktemp("class")
    for name, role in (("ana", "student"), ("prof", "instructor")):
        secret = folder / f"{name}.txt"
        secret.write_text(CLASS_PASSWORDS[name] + "\n")
        engine_cli(server, "user", "add", name, "--role", role, "--password-file", str(secret))
    engine_cli(server, "demo-data", "classification", str(folder / "xray.zip"), "--n", "40", "--size", "32")
    dataset = engine_cli(server, "ingest", str(folder / "xray.zip"), "--task", "classification",
                         "--name", "xray class", "--as", "prof")["dataset_id"]
    engine_cli(server, "assignment", "create", "--dataset", dataset, "--name", "lab1", "--hide-test", "--as", "prof")
    return {"dataset": dataset}


def log_in(page: Page, name: str) -> None:
    expect(page.get_by_role("heading", name="Log in", exact=True)).to_be_visible(timeout=30_000)
    page.locator("input[aria-label='User name']").fill(name)
    page.locator("input[aria-label='Password']").fill(CLASS_PASSWORDS[name])
    page.get_by_role("button", name="Log in", exact=True).click()
    expect(page.get_by_text(f"Logged in as {name}")).to_be_visible(timeout=30_000)
    settle(page)


def test_a_student_trains_and_hands_in_and_the_instructor_sees_the_leaderboard(server, browser_page: Page,
                                                                            classroom: dict, diagnostics) -> None:
    page = browser_page          # a new address loads a new session; this browser holds no session cookie yet
    with step("class: log in as a student; a reload keeps the session"):
        page.goto(server.url, timeout=60_000)
        settle(page)
        log_in(page, "ana")
        expect(page.get_by_role("heading", name="Lightbox", exact=True)).to_be_visible()
        page.wait_for_function("() => document.cookie.includes('lightbox_session=ana')", timeout=30_000)
        page.reload()
        settle(page)
        expect(page.get_by_text("Logged in as ana")).to_be_visible(timeout=30_000)
        assert "lightbox_session" not in page.url and CLASS_PASSWORDS["ana"] not in page.url

    with step("class: the student trains a tiny run on the assignment's dataset"):
        open_page(page, "train", "Train")
        choose(page, "Dataset", re.compile(r"^xray class · classification"))
        choose(page, "Architecture", re.compile(r"^LeNet-5"))
        set_number(page, "Epochs", 1)
        set_number(page, "Image size (px)", 32)
        page.get_by_role("button", name="Start training", exact=True).click()
        page.wait_for_url(re.compile(r"/monitor\?run="), timeout=60_000)
        expect(page.get_by_text("Finished.")).to_be_visible(timeout=TRAIN_TIMEOUT * 1000)
        settle(page)
        assert "Held-out test split" not in main_text(page)        # hidden from students

    with step("class: the student hands the run in"):
        page.get_by_role("button", name="Hand in", exact=True).click()
        expect(page.get_by_text("Handed in to lab1.")).to_be_visible(timeout=120_000)
        settle(page)
        shot(page, "06_handin.png")

    with step("class: the instructor logs in and sees the leaderboard"):
        page.locator("[data-testid='stSidebar']").get_by_role("button", name="Log out").click()
        settle(page)
        log_in(page, "prof")
        open_page(page, "instructor", "Instructor")
        expect(page.get_by_role("heading", name="lab1")).to_be_visible()
        board = page.locator("[data-testid='stDataFrame']").filter(has=page.locator("td", has_text="ana")).first
        expect(board).to_be_attached(timeout=30_000)
        assert "Download the leaderboard (CSV)" in main_text(page)
        shot(page, "07_instructor.png")
    assert not page.client_breaks, page.client_breaks
