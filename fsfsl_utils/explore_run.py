"""A finished run, live and read-only: ``make explore RUN=runs/<folder>`` (``python -m fsfsl_utils.explore_run``).

The executed notebooks of a run show static figures (batch runs turn widgets off); making them live
used to mean editing a cell and rerunning, which wrote into the finished run. This prepares notebook
05 with its widgets on, reading the run's records, and every file it writes (summary, report,
figures) going to a new folder under ``runs/interactive/``; then opens it in JupyterLab. The run
folder is only read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from . import results
from .run import new_run_dir

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_analysis.ipynb"


def prepare(run: str | Path, interactive: str | Path | None = None) -> Path:
    """Notebook 05 parameterised to explore ``run`` live, in a new folder of ``interactive`` (default
    ``<project>/runs/interactive``), ``explore-<run>/<time>``; returns the notebook's path. ValueError when
    ``run`` is not a folder of run records."""
    import papermill

    run = Path(run).resolve()
    if not run.is_dir():
        raise ValueError(f"RUN {run} is not a folder; give a results folder of a run, e.g. runs/<name>")
    try:
        results.load_records(run)
    except FileNotFoundError:
        raise ValueError(f"RUN {run} holds no run records (records/*.json); give a results folder of a run") \
            from None
    out = new_run_dir(Path(interactive or ROOT / "runs" / "interactive") / f"explore-{run.name}")  # never reused
    target = out / NOTEBOOK.name
    papermill.execute_notebook(str(NOTEBOOK), str(target), prepare_only=True, kernel_name="python3",
                               parameters={"RESULTS_DIR": str(run), "OUTPUT_DIR": str(out), "WIDGETS": True,
                                           "PROGRESS": True}, progress_bar=False)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.explore_run", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run's results folder (runs/<name>)")
    parser.add_argument("--interactive", default=None, help="where the new folder goes (default runs/interactive)")
    parser.add_argument("--no-lab", action="store_true", help="prepare the notebook, print its path, do not open it")
    args = parser.parse_args(argv)
    try:
        notebook = prepare(args.run, args.interactive)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"prepared {notebook}: run all cells to explore {args.run} live (nothing is written there)")
    if args.no_lab:
        return 0
    lab = [shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter", "lab"]
    lab += ["--allow-root"] if os.name == "posix" and os.geteuid() == 0 else []
    if notebook.is_relative_to(ROOT):
        return subprocess.call(lab + [f"--ServerApp.root_dir={ROOT}",
                                      f"--ServerApp.default_url=/lab/tree/{notebook.relative_to(ROOT).as_posix()}"])
    return subprocess.call(lab + [str(notebook)])


if __name__ == "__main__":
    sys.exit(main())
