"""Executing notebooks: papermill with the kernels' messages in ``kernels.log``, each notebook written
whole or not at all."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .job_parameters import notebook_dir, notebook_parameters

LIBRARY_LOGGERS = ("traitlets", "papermill", "nbclient", "jupyter_client", "asyncio")  # what runs the notebooks


@contextlib.contextmanager
def library_messages_to(log_path: Path) -> Iterator[None]:
    """While a job runs, the messages of the libraries that execute its notebooks (papermill, nbclient
    and traitlets, asyncio) go to ``log_path`` beside the kernels' own, not to the terminal: a Ctrl-C
    mid-cell makes nbclient report the dead kernel and asyncio the cell's unfinished task ("Task
    exception was never retrieved"), which would bury the job's one line. At the end the garbage
    collector runs once, so such a task is finalised (and logged) while the messages still go there."""
    try:
        handler: logging.Handler = logging.FileHandler(log_path, encoding="utf-8")
    except OSError:  # an unwritable run folder is reported by the job itself
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        gc.collect()
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


def kernel_manager(log_path: Path) -> type:
    """A Jupyter kernel manager whose kernels write their own messages (start-up warnings, the traceback
    of a kernel stopped mid-reply by Ctrl-C) to ``log_path`` instead of the job's terminal; cell
    errors still reach the executed notebooks. Uses jupyter_client's documented hook for launching
    kernels differently (``_async_launch_kernel``)."""
    from jupyter_client import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: object) -> None:
            with open(log_path, "a") as log:  # the kernel keeps its own copy of the descriptor
                kw.setdefault("stderr", log)
                kw.setdefault("stdout", log)
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


class Published:
    """Whether :func:`publish_notebook` kept the executed notebook (truthy), and if not, why."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return not self.reason


def publish_notebook(partial: Path, target: Path) -> Published:
    """Move an executed notebook from where papermill saved it cell by cell to ``target``, atomically and
    only when it is whole JSON: a notebook cut off by a full disk (or a killed job) is never left as
    ``target``; the cut file is removed and the reason returned."""
    try:
        json.loads(partial.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Published(f"no executed notebook was written for {target.name}")
    except (OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        return Published(f"the executed {target.name} could not be written whole ({type(err).__name__}; a full "
                         "disk?): not kept")
    os.replace(partial, target)
    return Published()


def run_notebooks(steps: list[tuple[str, dict]], run_dir: Path, timings: dict[str, float], completed: list[str],
                   after_each: Callable[[], object], before_each: Callable[[], object] = lambda: None) -> str:
    """Execute the notebooks in order (those in ``completed`` are kept), stopping at the first failure;
    returns the run's status. ``before_each`` runs before every notebook (it may raise to stop the job),
    ``after_each`` after every finished one."""
    import papermill

    for i, (name, params) in enumerate(steps, 1):
        before_each()
        if name in completed:
            print(f"[{i}/{len(steps)}] {name}: kept from the earlier run", flush=True)
            continue
        params = {**params, "RESULTS_DIR": str(run_dir)} if "RESULTS_DIR" in notebook_parameters(name) else params
        target = run_dir / "notebooks" / f"{name}.ipynb"
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "RESULTS_DIR")
        print(f"[{i}/{len(steps)}] {name} ({shown}) ...", flush=True)
        t0 = time.perf_counter()
        partial = run_dir / "notebooks" / ".partial" / f"{name}.ipynb"  # papermill saves after every cell
        partial.parent.mkdir(exist_ok=True)
        try:
            try:
                papermill.execute_notebook(str(notebook_dir() / f"{name}.ipynb"), str(partial), parameters=params,
                                           kernel_name="python3", cwd=str(run_dir), progress_bar=False,
                                           kernel_manager_class=kernel_manager(run_dir / "kernels.log"))
            finally:
                kept = publish_notebook(partial, target)
        except papermill.PapermillExecutionError as err:
            timings[name] = time.perf_counter() - t0
            print(f"      FAILED after {timings[name]:.0f} s: {err.ename}: {err.evalue}\n"
                  f"      {'executed notebook with the error: ' + str(target) if kept else kept.reason}",
                  file=sys.stderr)
            return f"failed in {name}: {err.ename}: {err.evalue}"
        except OSError as err:  # e.g. the run folder became read-only, the disk full
            timings[name] = time.perf_counter() - t0
            print(f"      FAILED: {type(err).__name__}: {err}" + ("" if kept else f"\n      {kept.reason}"),
                  file=sys.stderr)
            return f"failed in {name}: {type(err).__name__}: {err}"
        timings[name] = time.perf_counter() - t0
        completed.append(name)
        try:
            after_each()
        except OSError as err:  # the next notebook (or the final run.json) reports the folder's state
            print(f"      warning: run.json not updated: {err}", file=sys.stderr)
        print(f"      done in {timings[name]:.0f} s", flush=True)
    return "ok"
