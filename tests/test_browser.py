"""JupyterLab in a real browser: the widgets render (no "Error displaying widget") and respond.

Starts JupyterLab from this environment on a free localhost port with a token, opens notebook 01
(parameterised to the smoke profile) in Debian's Chromium driven by Playwright, runs all cells,
waits for the sensitivity explorer, clicks a bin and checks that the gallery caption follows.
Then notebook 05 over the record 01 wrote, and the summary.md it wrote, rendered by a Markdown
renderer that lets HTML through. The images carry hostile file names
(``<img src=x onerror=alert(1)> 3.png``) and their classes hostile folder names
(``<img src=x onerror=alert(1)>``, ``<svg onload=alert(2)>``): they must show as text, and no
JavaScript dialog may open. Screenshots are saved in the test's output folder.
``make test-browser`` runs these tests alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.request
from pathlib import Path

import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_CLASSES = ("<img src=x onerror=alert(1)>", "<svg onload=alert(2)>")


def hostile_folder(root: Path) -> Path:
    """16 ELPV cells per class as an ImageFolder whose class and file names are script injections."""
    from PIL import Image

    from fsfsl_utils import data

    ds = data.load_elpv("study", limit_per_class=16, seed=0)
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
        folder = root / HOSTILE_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{HOSTILE} {i}.png")
    return root


@pytest.fixture
def lab(tmp_path):
    assert Path(CHROMIUM).exists(), "Chromium is missing: apt-get install chromium (make test installs it as root)"
    work = tmp_path / "lab"
    work.mkdir()
    papermill.execute_notebook(str(ROOT / "notebooks" / "01_baseline.ipynb"), str(work / "01_baseline.ipynb"),
                               parameters={"PROFILE": "smoke", "RESULTS_DIR": str(tmp_path / "runs"),
                                           "DATA": str(hostile_folder(tmp_path / "hostile")),
                                           "PROGRESS": False, "SWEEP_IMAGES": 0, "WIDGETS": True},
                               prepare_only=True, kernel_name="python3")
    papermill.execute_notebook(str(ROOT / "notebooks" / "05_analysis.ipynb"), str(work / "05_analysis.ipynb"),
                               parameters={"RESULTS_DIR": str(tmp_path / "runs"), "PROGRESS": False, "WIDGETS": True},
                               prepare_only=True, kernel_name="python3")
    port, token = free_port(), "fsfsl-test-token"
    env = {**os.environ, "FSFSL_CACHE": str(tmp_path / "cache"), "FSFSL_PROGRESS": "0",
           "JUPYTER_PATH": str(Path(sys.prefix) / "share" / "jupyter"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                             f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}", "--allow-root",
                             "--LabApp.news_url=", "--LabServerApp.announcements_url="],
                            stdout=open(tmp_path / "lab.log", "w"), stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    log = (tmp_path / "lab.log").read_text()[-3000:]
                    raise RuntimeError(f"JupyterLab did not start:\n{log}") from None
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/01_baseline.ipynb?token={token}", tmp_path
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def open_and_run_all(page, url: str) -> None:
    """Open a notebook in JupyterLab, take the kernel it offers, and run all its cells."""
    page.goto(url)
    page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
    select = page.locator(".jp-Dialog button", has_text="Select")   # JupyterLab may ask for the kernel
    try:
        select.wait_for(timeout=8_000)
        select.click()
    except Exception:  # no dialog: the kernel started by itself
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def test_sensitivity_explorer_renders_and_responds_in_jupyterlab(lab):
    from playwright.sync_api import sync_playwright

    url, out = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        try:
            open_and_run_all(page, url)
            buttons = page.locator(".widget-toggle-buttons")
            buttons.first.wait_for(state="visible", timeout=180_000)
            caption = page.locator("text=images in the brightness bin").first
            caption.wait_for(timeout=30_000)
            before = caption.inner_text()
            target = "0% - 20%" if "40% - 60%" in before else "40% - 60%"   # a bin other than the weakest shown
            page.locator(".widget-toggle-button", has_text=target).first.click()
            page.wait_for_function("() => [...document.querySelectorAll('.widget-html-content')]"
                                   f".some(e => e.innerText.includes('brightness bin {target}'))", timeout=30_000)
            after = page.locator("text=images in the brightness bin").first.inner_text()
            assert after != before and target in after
            enlarge = page.locator("button", has_text="enlarge")
            if enlarge.count():                                  # the bin has images: enlarge the first
                large_before = page.locator(".widget-image:visible").count()
                enlarge.first.click()
                page.wait_for_function(f"() => [...document.querySelectorAll('.widget-image')].filter("
                                       f"e => e.offsetParent !== null).length > {large_before}", timeout=30_000)
            gallery = page.locator(".widget-image")
            assert gallery.count() > 0
            assert page.locator("text=Error displaying widget").count() == 0
            news = page.locator(".jp-toast-button", has_text="No")  # the news question covers the view
            if news.count():
                news.first.click()
            plot = page.locator(".widget-image").first
            assert plot.evaluate("e => e.naturalWidth") > 300      # the recall plot, rendered as an image
            caption.scroll_into_view_if_needed()
            page.screenshot(path=str(out / "sensitivity_explorer.png"))
            shown = page.evaluate("() => [...document.querySelectorAll('.widget-html-content')]"
                                  f".filter(e => e.innerText.includes({HOSTILE!r})).length")
            assert shown > 0, "the hostile file names should appear as text in the widgets"
            assert dialogs == [], f"a JavaScript dialog opened: {dialogs}"
            # 05 over the record 01 just wrote: its conclusions (Markdown) name the classes as text
            page = browser.new_page(viewport={"width": 1400, "height": 1000})  # a second tab: 01 stays open
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            open_and_run_all(page, url.replace("/lab/tree/01_baseline.ipynb",
                                               "/lab/workspaces/w05/tree/05_analysis.ipynb"))
            page.wait_for_function("() => document.body.innerText.includes('runs/report.html')", timeout=240_000)
            assert "Traceback" not in page.inner_text("body")
            rendered = ".jp-OutputArea .jp-RenderedMarkdown"
            assert page.locator(rendered).count() > 0
            assert page.locator(f"{rendered} img, {rendered} svg").count() == 0
            conclusions = " ".join(page.locator(rendered).all_text_contents())
            assert HOSTILE_CLASSES[1] + " recall" in conclusions, conclusions[:500]
            page.screenshot(path=str(out / "05_conclusions.png"))
            # summary.md in a renderer that lets HTML through
            import mistune

            summary = (out / "runs" / "summary.md").read_text()
            html_page = out / "summary.html"
            html_page.write_text(mistune.create_markdown(escape=False, plugins=["table"])(summary))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(html_page.as_uri())
            page.wait_for_load_state("load")
            assert page.evaluate("() => document.querySelectorAll('img, svg, script').length") == 0
            assert HOSTILE_CLASSES[0] in page.inner_text("body")
            assert dialogs == [], f"a JavaScript dialog opened: {dialogs}"
        except Exception:
            page.screenshot(path=str(out / "failure.png"))
            raise
        finally:
            browser.close()
    assert (out / "sensitivity_explorer.png").stat().st_size > 10_000


def report_with_figures(folder: Path, records: list[dict], figures: dict) -> Path:
    """report.html of ``records`` in ``folder``, with the figures ``figures`` draws (name -> function of the
    records) saved beside it as 05 saves them."""
    import matplotlib.pyplot as plt

    from fsfsl_utils import plots, report_html

    for name, draw in figures.items():
        fig = draw(records)
        plots.save(fig, folder, name)
        plt.close(fig)
    return report_html.write(folder, records)


def test_report_html_renders_in_chromium(smoke_runs, tmp_path):
    """report.html of a smoke run in Chromium: it renders, every image loads, nothing is fetched, no
    horizontal scroll at 1280 px, and the first screen holds the bottom line and the verdicts' contents."""
    from playwright.sync_api import sync_playwright

    from fsfsl_utils import plots

    recs = [run.record for run in smoke_runs]
    path = report_with_figures(tmp_path, recs, {"05_confusion": plots.confusion_matrices,
                                                "05_scores": plots.metric_bars})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        try:
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            images = page.evaluate("() => [...document.images].map(i => [i.complete, i.naturalWidth])")
            assert len(images) == 2 and all(done and width > 100 for done, width in images)
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
            first_screen = page.evaluate("() => [...document.querySelectorAll('h2, li')].filter("
                                         "e => e.getBoundingClientRect().top < 900).map(e => e.innerText).join(' ')")
            assert "Bottom line" in first_screen and "The study claimed" in first_screen
            assert requests == []
            page.screenshot(path=str(tmp_path / "report.png"))
        finally:
            browser.close()


def test_report_of_a_frozen_run_at_1280_px_and_on_paper(tmp_path):
    """The committed frozen run's report (real ELPV records): at 1280 px the bottom line and the caveat sit on
    the first screen, a contents list links every section, no table scrolls sideways, every figure has a
    caption under it; printed to PDF by Chromium, every column header and every verdict is on paper."""
    import pypdf
    from playwright.sync_api import sync_playwright

    from fsfsl_utils import experiment, plots

    recs = experiment.load_records_for_analysis(ROOT / "benchmarks" / "cpu-run-2026-12-04")
    path = report_with_figures(tmp_path, recs, {
        "05_scores": plots.metric_bars, "05_paired_differences": plots.paired_differences,
        "05_confusion": plots.confusion_matrices, "01_scores": lambda r: plots.metric_bars(r[:5])})
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            on_first = page.evaluate("() => [...document.querySelectorAll('#bottom-line, .bottom-line li, #caveat')]"
                                     ".map(e => e.getBoundingClientRect().bottom < 900)")
            assert len(on_first) == 5 and all(on_first), on_first             # title, 3 sentences, the caveat
            assert "frozen" in page.inner_text("#caveat") and "cpu-finetune" in page.inner_text("#caveat")
            toc = page.evaluate("() => [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))")
            ids = page.evaluate("() => [...document.querySelectorAll('[id]')].map(e => '#' + e.id)")
            assert len(toc) >= 8 and set(toc) <= set(ids)
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 1280
            wide = page.evaluate("() => [...document.querySelectorAll('.table-wrap')].filter("
                                 "e => e.scrollWidth > e.clientWidth + 1).length")
            assert wide == 0
            figures = page.evaluate("() => [...document.querySelectorAll('figure')].map(f => "
                                    "[f.lastElementChild.tagName, f.lastElementChild.innerText.length])")
            assert len(figures) == 3                                          # 01_scores: 05_scores' duplicate
            assert all(tag == "FIGCAPTION" and n > 40 for tag, n in figures)
            headers = page.evaluate("() => [...document.querySelectorAll('th')].map(e => e.innerText)")
            verdicts = page.evaluate("() => [...document.querySelectorAll('.badge')].map(e => e.innerText)")
            page.emulate_media(media="print")
            page.pdf(path=str(tmp_path / "report.pdf"), format="A4")
        finally:
            browser.close()
    text = " ".join(p.extract_text() for p in pypdf.PdfReader(tmp_path / "report.pdf").pages)
    flat = "".join(unicodedata.normalize("NFKC", text).split())            # ligatures (the "ff" of "effect") undone
    missing = [h for h in headers + verdicts if "".join(h.split()) and "".join(h.split()) not in flat]
    assert missing == [], missing
