"""The in-memory data set: :class:`Dataset` (images as one uint8 array beside a metadata table),
its errors and label policies."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd

LABEL_POLICIES = ("study", "threshold", "four_level", "soft")


T = TypeVar("T")


META_COLUMNS = ("name", "label", "source", "split", "cell_type", "probability", "op", "param")


class DataError(ValueError):
    """Bad input data: the message names the file, folder or value at fault."""


@dataclass
class Dataset:
    """Images in memory plus one metadata row per image.

    ``meta`` columns: name (unique), label (int), source (the original image's name),
    split ("train", "val" or ""), cell_type ("mono"/"poly" for ELPV, "" otherwise),
    probability (ELPV defect probability, NaN otherwise), op and param (the augmentation
    that made the image; "original" and "" for loaded images).
    """

    images: np.ndarray
    meta: pd.DataFrame
    class_names: list[str]
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8, got {self.images.dtype}")
        if len(self.images) != len(self.meta):
            raise DataError(f"{len(self.images)} images but {len(self.meta)} metadata rows")
        self.meta = self.meta.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        return self.meta["label"].to_numpy(dtype=np.int64)

    @property
    def names(self) -> list[str]:
        return self.meta["name"].tolist()

    def subset(self, index: Sequence[int] | np.ndarray) -> Dataset:
        """Rows ``index`` as a new Dataset (images copied)."""
        index = np.asarray(index, dtype=np.int64)
        return Dataset(self.images[index].copy(), self.meta.iloc[index].copy(), list(self.class_names))

    def derived(self, name: str, make: Callable[[], T]) -> T:
        """``make()`` computed once per Dataset and kept with it: data derived from its images (a
        test-time view, content hashes, feature values), which every step and seed reuses. The
        Dataset owns these; its images are never changed in place."""
        if name not in self._derived:
            self._derived[name] = make()
        return self._derived[name]

    def soft_targets(self) -> np.ndarray | None:
        """Training targets as class probabilities (``N x K``) when some rows carry a soft label (the
        ``soft`` column: the probability of the last class, from label policy ``soft``); the other rows
        are one-hot. None when every label is hard (the loss then takes class indices, as always)."""
        if "soft" not in self.meta or self.meta["soft"].isna().all():
            return None
        targets = np.eye(len(self.class_names))[self.labels]
        soft = self.meta["soft"].to_numpy(float)
        rows = ~np.isnan(soft)
        targets[rows] = 0.0
        targets[rows, -1], targets[rows, 0] = soft[rows], 1.0 - soft[rows]
        return targets

    def counts(self) -> dict[str, int]:
        """Number of images per class name, in class order."""
        bins = np.bincount(self.labels, minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, bins)}

    def describe(self) -> pd.DataFrame:
        """Counts per class (rows) and cell type / split (columns), for overviews."""
        frame = self.meta.assign(cls=[self.class_names[i] for i in self.labels])
        cols = "cell_type" if (frame["cell_type"] != "").any() else "split"
        return pd.crosstab(frame["cls"], frame[cols], margins=True, margins_name="total")


def from_arrays(images: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
                names: Sequence[str] | None = None) -> Dataset:
    """A Dataset of images already in memory (uint8 ``N x H x W`` or ``N x H x W x 3``), one label
    index per image; names default to ``image<i>``."""
    names = [f"image{i}" for i in range(len(images))] if names is None else list(names)
    return Dataset(np.asarray(images), make_meta(names, np.asarray(labels)), list(class_names))


def pick_per_class(labels: np.ndarray, n: int | None, rng: np.random.Generator,
                   classes: Sequence[int]) -> list[np.ndarray]:
    """For each class in ``classes``, in that order, up to ``n`` of its indices in random order
    (one ``rng.permutation`` per class; ``n=None``: all of them)."""
    labels = np.asarray(labels)
    return [rng.permutation(np.flatnonzero(labels == c))[:n] for c in classes]


def digest(images: np.ndarray) -> str:
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def check_label_policy(labels: str) -> None:
    if labels not in LABEL_POLICIES:
        raise ValueError(f"unknown label policy {labels!r}; valid: {', '.join(LABEL_POLICIES)}")


def make_meta(names: Sequence[str], labels: np.ndarray, split: Sequence[str] | None = None,
              cell_type: Sequence[str] | None = None, probability: Sequence[float] | None = None) -> pd.DataFrame:
    """A :class:`Dataset`'s per-image table (name, label, split, cell type, the ELPV probability)."""
    n = len(names)
    return pd.DataFrame({
        "name": list(names), "label": np.asarray(labels, dtype=np.int64), "source": list(names),
        "split": list(split) if split is not None else [""] * n,
        "cell_type": list(cell_type) if cell_type is not None else [""] * n,
        "probability": np.asarray(probability, float) if probability is not None else np.full(n, np.nan),
        "op": ["original"] * n, "param": [""] * n,
    })
