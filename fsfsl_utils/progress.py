"""Progress bars: tqdm.auto everywhere, one switch to turn them off for batch runs.

Off when the environment has ``FSFSL_PROGRESS=0`` (which ``set_progress(False)`` sets)
(papermill logs every bar refresh as a new line, so batch runs turn them off).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of the kit on or off for this process (and the processes it starts):
    sets ``FSFSL_PROGRESS``, the one switch."""
    os.environ["FSFSL_PROGRESS"] = "1" if enabled else "0"


def progress_enabled(enable: bool | None = None) -> bool:
    """An explicit ``enable`` wins; else ``FSFSL_PROGRESS`` (on unless it says 0, false or off)."""
    if enable is not None:
        return enable
    return os.environ.get("FSFSL_PROGRESS", "1") not in ("0", "false", "off", "")


def progress_bar(iterable: Iterable[T], desc: str = "", total: int | None = None,
                 enable: bool | None = None, **kwargs) -> Iterable[T]:
    """``tqdm(iterable)`` when progress is on, the bare iterable otherwise."""
    if not progress_enabled(enable):
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, **kwargs)
