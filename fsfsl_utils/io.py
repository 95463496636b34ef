"""Files written so that nothing is lost: atomic writes (readers never see half a file), claims that
never replace an earlier file, and folders checked for writing before work starts. The lowest layer:
it imports nothing of the kit."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask: read from ``/proc/self/status`` where Linux shows it (nothing changes),
    else with ``os.umask``, which can only read it by setting it (it is put back at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a fresh temp file beside ``path`` (its name ends in ``.tmp``: a writer that
    infers the format from the name must be told it), then rename it to ``path``: readers never
    see half a file, two writers never share a temp file, a failed write leaves the old file as it
    was and no temp file. The file gets the permissions ``open()`` would give (0666 less the umask)."""
    return _publish(Path(path), write, None)


def atomic_write_new(path: str | os.PathLike, write: Callable[[Path], object],
                     next_free: Callable[[Path], Path]) -> Path:
    """Like :func:`atomic_write`, but never replaces a file: the finished temp file is hard-linked to
    ``path``, an atomic claim that fails if any writer got there first; then ``next_free(path)`` is
    tried, and so on. Returns the path written. Two processes saving at once keep both files."""
    return _publish(Path(path), write, next_free)


def _publish(path: Path, write: Callable[[Path], object], next_free: Callable[[Path], Path] | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # ".<name>.<random>.tmp": hidden, and no glob of the real files' suffix ("*.json") can match it
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        if next_free is None:
            os.replace(tmp, path)
            return path
        while True:
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                path = next_free(path)
    finally:
        tmp.unlink(missing_ok=True)


def discard_orphan_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files that writers of ``path`` left when they were killed mid-write (a process
    killed by its node's death cannot clean up after itself); returns them. Call it only when no
    writer of ``path`` is running, e.g. once every training of a study has returned."""
    path = Path(path)
    orphans = sorted(path.parent.glob(f".{glob_escape(path.name)}.*.tmp"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (:func:`atomic_write`)."""
    return atomic_write(path, json_writer(obj))


def json_writer(obj: Any) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, allow_nan=False, default=_jsonable)
    return write


def ensure_writable_dir(path: str | os.PathLike, what: str = "results folder") -> Path:
    """Create ``path`` if needed; PermissionError / OSError naming it when it cannot be written."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"{what} {path} cannot be created: {err}") from err
    if not os.access(path, os.W_OK):
        raise PermissionError(f"{what} {path} is not writable")
    return path


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a run record")
