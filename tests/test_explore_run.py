"""make explore RUN=...: a finished run explored live writes only under the interactive folder."""

from __future__ import annotations

import json
from pathlib import Path

import papermill
import pytest

from fsfsl_utils import explore_run


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def test_explore_prepares_05_live_and_leaves_the_run_untouched(smoke_runs, tmp_path):
    run = Path(smoke_runs[0].record["_path"]).parents[1]
    before = snapshot(run)
    notebook = explore_run.prepare(run, tmp_path / "interactive")
    assert notebook.parents[1] == tmp_path / "interactive" / f"explore-{run.name}"
    parameters = json.loads(notebook.read_text())["metadata"]["papermill"]["parameters"]
    assert parameters == {"RESULTS_DIR": str(run), "OUTPUT_DIR": str(notebook.parent), "WIDGETS": True,
                          "PROGRESS": True}
    papermill.execute_notebook(str(notebook), str(notebook), kernel_name="python3", progress_bar=False,
                               cwd=str(notebook.parent))
    assert snapshot(run) == before                                   # the finished run is only read
    written = {p.name for p in notebook.parent.iterdir()}
    assert {"report.html", "summary.md", "figures"} <= written
    second = explore_run.prepare(run, tmp_path / "interactive")      # a second look: a new folder
    assert second.parent != notebook.parent


def test_explore_names_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert explore_run.main([str(tmp_path / "missing"), "--no-lab"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no run records"):
        explore_run.prepare(tmp_path / "empty", tmp_path / "interactive")


def test_make_explore_runs_the_module_and_asks_for_a_run(tmp_path):
    """The README's ``make explore RUN=...`` line calls this module; without RUN it says how to call it."""
    import subprocess

    root = Path(explore_run.__file__).resolve().parents[1]
    keep = ["-o", ".venv/.fsfsl-installed"]  # the environment as it is: never reinstalled by a test
    shown = subprocess.run(["make", *keep, "-n", "-s", "explore", f"RUN={tmp_path}"], cwd=root, capture_output=True,
                           text=True, check=True).stdout
    assert f'-m fsfsl_utils.explore_run "{tmp_path}"' in shown
    bare = subprocess.run(["make", *keep, "-s", "explore"], cwd=root, capture_output=True, text=True)
    assert bare.returncode != 0 and "usage: make explore RUN=runs/<folder>" in bare.stdout
