"""Ends a job's helper processes when the job itself is killed (kill -9, an out-of-memory kill).

The main job starts Jupyter kernels (in their own sessions, so Ctrl-C reaches only the job) and,
with ``--backend ray``, a local Ray cluster (GCS server, raylet, agents, workers). A job that ends
normally stops them; a job killed with SIGKILL cannot, and they would live on, holding memory and
a GPU. :func:`start` launches this module as a small separate process that notes the job's
descendants every second and, once the job is gone, terminates those still running (SIGTERM, then
SIGKILL after a grace period). Processes are identified by pid *and* start time, so a reused pid
is never hit.

    python -m fsfsl_utils.watchdog PID CREATE_TIME
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence

import psutil

GRACE_S = 5.0


def start(pid: int | None = None) -> subprocess.Popen:
    """Watch process ``pid`` (default: this one) from a separate process; returns that process."""
    target = psutil.Process(pid or os.getpid())
    return subprocess.Popen([sys.executable, "-m", "fsfsl_utils.watchdog", str(target.pid), repr(target.create_time())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def watch(pid: int, created: float, interval_s: float = 1.0) -> list[int]:
    """Note ``pid``'s descendants every ``interval_s`` until it is gone, then end the noted ones still
    running; returns their pids."""
    seen: dict[int, psutil.Process] = {}
    me = os.getpid()
    while True:
        try:
            job = psutil.Process(pid)
            if abs(job.create_time() - created) > 1.0 or job.status() == psutil.STATUS_ZOMBIE:
                break
            for child in job.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(interval_s)
    return end([p for p in seen.values() if p.is_running()])


def end(processes: Sequence[psutil.Process], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace_s`` for those still alive; returns the pids it ended."""
    for p in processes:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in processes]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m fsfsl_utils.watchdog PID CREATE_TIME", file=sys.stderr)
        return 2
    watch(int(args[0]), float(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
