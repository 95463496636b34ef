"""Screenshots for the README: a run's report.html and its executed notebook 05 in JupyterLab.

    python docs/screenshots/make_screenshots.py RUN_DIR/analysis-... EXECUTED_05.ipynb

Uses Debian's Chromium through Playwright (as tests/test_browser.py does) and writes
``report.png`` and ``05_jupyterlab.png`` beside this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main(report_dir: Path, notebook: Path) -> None:
    work = Path(tempfile.mkdtemp())
    shutil.copy(notebook, work / notebook.name)
    port, token = 8899, "fsfsl-screenshot"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "cfg"), "JUPYTER_RUNTIME_DIR": str(work / "rt")}
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                            f"--ServerApp.token={token}", f"--ServerApp.root_dir={work}", "--allow-root",
                            "--LabApp.news_url=", "--LabServerApp.announcements_url="],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((report_dir / "report.html").as_uri())
            page.screenshot(path=str(HERE / "report.png"))
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
            page.wait_for_selector(".jp-NotebookPanel", timeout=60_000)
            page.wait_for_timeout(3000)
            for button in ("No", "Select"):
                found = page.locator(".jp-Dialog button, .jp-toast-button", has_text=button)
                if found.count():
                    found.first.click()
            page.locator(".jp-Notebook").first.click()
            page.keyboard.press("Control+b")  # hide the file browser: the notebook gets the width
            page.locator(".jp-RenderedMarkdown h2", has_text="Conclusions").first.evaluate(
                "e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(1000)
            page.screenshot(path=str(HERE / "05_jupyterlab.png"))
            browser.close()
    finally:
        lab.terminate()
        lab.wait(timeout=20)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())
