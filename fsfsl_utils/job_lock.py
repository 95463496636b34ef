"""A run folder's lock (one job at a time) and the signals that stop a job: SIGINT and SIGTERM,
remembered so that a stop Python swallowed still ends the job at the next notebook."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import signal
from pathlib import Path

from . import io

LOCK_NAME = "run.lock"  # in a run folder while a job runs it: pid, host and start time of that job


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``): the job stops like Ctrl-C and marks its run as stopped."""


class StopRequest:
    """The signal that asked this job to stop (SIGINT or SIGTERM; None until one does). Its handler raises
    at once; :meth:`check` raises again at the next notebook when that first exception landed where
    Python swallows it (a ``__del__``, a callback: "Exception ignored in ..."), so a stop is never lost."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        self.signum = signum
        self.check()

    def check(self) -> None:
        if self.signum == signal.SIGTERM:
            raise Terminated
        if self.signum is not None:
            raise KeyboardInterrupt


def _lock_holder(run_dir: Path) -> dict | None:
    """The job that holds ``run_dir``'s lock when it is still alive (same host, same process, same start
    time: a reused pid does not count), else None. A job on another host counts as alive: it cannot
    be checked from here."""
    import psutil

    try:
        lock = json.loads((run_dir / LOCK_NAME).read_text())
        pid, host, created = int(lock["pid"]), str(lock["host"]), float(lock["process_created"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != platform.node():
        return lock
    try:
        alive = abs(psutil.Process(pid).create_time() - created) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        alive = False
    return lock if alive and pid != os.getpid() else None


def check_not_running(run_dir: Path) -> None:
    """ValueError naming the job when another job is running ``run_dir`` now (its lock's process is alive)."""
    holder = _lock_holder(run_dir)
    if holder is not None:
        where = "" if holder["host"] == platform.node() else f" (on host {holder['host']}: if that job is gone, " \
            f"delete {run_dir / LOCK_NAME})"
        raise ValueError(f"{run_dir} is being run by another job: pid {holder['pid']} on {holder['host']}, started "
                         f"{holder['started']}{where}; wait for it to end or stop it before --resume")


def take_lock(run_dir: Path) -> None:
    """Mark ``run_dir`` as run by this process (pid, host, start time); ValueError when a live job holds
    it. A lock left by a dead job (kill -9) is taken over."""
    import psutil

    check_not_running(run_dir)
    me = {"pid": os.getpid(), "host": platform.node(), "started": dt.datetime.now().isoformat(timespec="seconds"),
          "process_created": psutil.Process().create_time()}
    io.atomic_write_json(run_dir / LOCK_NAME, me)


def release_lock(run_dir: Path) -> None:
    try:
        if json.loads((run_dir / LOCK_NAME).read_text()).get("pid") == os.getpid():
            (run_dir / LOCK_NAME).unlink()
    except (OSError, ValueError):
        pass
