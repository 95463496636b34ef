"""The study's train/validation split: random per class (the study's) or grouped so that no solar
module is on both sides."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .dataset import DataError, Dataset
from .sources import elpv_module_groups, load_elpv

SPLIT_KINDS = ("random", "grouped")


def split(ds: Dataset, seed: int = 0, train_fraction: float = 0.5,
          train_counts: dict[str, int] | None = None, kind: str = "random") -> tuple[Dataset, Dataset]:
    """Seeded split stratified by class and cell type; returns (train, val).

    Per class, ``ceil(n * train_fraction)`` images go to train (ELPV study policy:
    754 + 358 train, 754 + 357 validation), or exactly ``train_counts[class]``.
    Within a class, each cell type contributes in proportion (largest remainder).
    A Dataset whose ``split`` column is already filled (ImageFolder with train/ and val/)
    is split as given. ``kind="grouped"`` keeps every module (:func:`elpv_module_groups`) on one
    side, with the class counts as close to those targets as whole modules allow
    (:func:`grouped_split`): what a user whose next images come from a new module sees.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if "soft" in ds.meta and ds.meta["soft"].notna().any():
        return _with_soft_cells(ds, seed, train_fraction, train_counts, kind)
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split kind must be one of {', '.join(SPLIT_KINDS)}, got {kind!r}")
    if (ds.meta["split"] != "").all():
        tr = np.flatnonzero(ds.meta["split"].to_numpy() == "train")
        va = np.flatnonzero(ds.meta["split"].to_numpy() == "val")
        return ds.subset(tr), ds.subset(va)
    if kind == "grouped":
        groups = elpv_module_groups(ds.meta["source"].tolist())
        if all(g.startswith("image:") for g in groups):
            raise DataError("a grouped split needs to know each image's module: only ELPV cells (and packs of "
                            "them) carry it")
        return grouped_split(ds, groups, seed, train_fraction)
    rng = np.random.default_rng(seed)
    labels, strata = ds.labels, ds.meta["cell_type"].to_numpy()
    train_idx = []
    for c, cname in enumerate(ds.class_names):
        members = np.flatnonzero(labels == c)
        n_train = math.ceil(len(members) * train_fraction)
        if train_counts and cname in train_counts:
            n_train = train_counts[cname]
        if not 0 < n_train < len(members):
            raise DataError(f"class {cname!r} has {len(members)} images: cannot put {n_train} in train "
                            "and keep at least one for validation")
        kinds = sorted(set(strata[members]))
        sizes = np.array([np.sum(strata[members] == k) for k in kinds])
        quota = sizes * n_train / len(members)
        take = np.floor(quota).astype(int)
        for i in np.argsort(-(quota - take), kind="stable")[: n_train - take.sum()]:
            take[i] += 1
        for k, n in zip(kinds, take):
            group = members[strata[members] == k]
            train_idx.append(rng.permutation(group)[:n])
    train_idx = np.sort(np.concatenate(train_idx))
    val_idx = np.setdiff1d(np.arange(len(ds)), train_idx)
    train, val = ds.subset(train_idx), ds.subset(val_idx)
    train.meta["split"], val.meta["split"] = "train", "val"
    return train, val


GROUPED_TRIES = 200  # seeded orders tried by grouped_split; the closest to the target counts is kept


def grouped_split(ds: Dataset, groups: Sequence[str], seed: int = 0,
                  train_fraction: float = 0.5) -> tuple[Dataset, Dataset]:
    """Whole groups to one side: groups in a seeded random order, each put where it brings the training
    part's class counts closest to ``ceil(n_c * train_fraction)`` (L1 distance; ties to validation);
    of :data:`GROUPED_TRIES` such orders (all drawn from ``seed``) the closest is kept. No group is on
    both sides. DataError when the data have a single group or a side would lose a class."""
    labels = ds.labels
    groups = np.asarray(groups)
    names, index = np.unique(groups, return_inverse=True)
    if len(names) < 2:
        raise DataError("a grouped split needs at least two groups (modules); these images have one")
    counts = np.zeros((len(names), len(ds.class_names)), int)
    np.add.at(counts, (index, labels), 1)
    target = np.ceil(counts.sum(0) * train_fraction)
    best, best_gap = None, np.inf
    for trial in range(GROUPED_TRIES):
        in_train = np.zeros(len(names), bool)
        current = np.zeros(len(ds.class_names))
        for g in np.random.default_rng([seed, trial]).permutation(len(names)):
            if np.abs(current + counts[g] - target).sum() < np.abs(current - target).sum():
                in_train[g] = True
                current += counts[g]
        gap = np.abs(current - target).sum()
        if gap < best_gap:
            best, best_gap = in_train, gap
    tr_mask = best[index]
    for c, cname in enumerate(ds.class_names):
        if not ((labels == c) & tr_mask).any() or not ((labels == c) & ~tr_mask).any():
            raise DataError(f"a grouped split leaves class {cname!r} on one side only: too few groups")
    train, val = ds.subset(np.flatnonzero(tr_mask)), ds.subset(np.flatnonzero(~tr_mask))
    train.meta["split"], val.meta["split"] = "train", "val"
    return train, val


def study_split(seed: int = 0, labels: str = "study") -> tuple[Dataset, Dataset]:
    """ELPV with the study's counts: train 754 normal + 358 defective, validation 754 + 357."""
    return split(load_elpv(labels), seed=seed)


def _with_soft_cells(ds: Dataset, seed: int, train_fraction: float, train_counts: dict[str, int] | None,
                     kind: str) -> tuple[Dataset, Dataset]:
    """Label policy ``soft``: the cells with hard labels split exactly as without the others, then the
    soft-labelled cells added to the training part (never to validation; with a grouped split only
    those of the training part's modules, so that no module is on both sides)."""
    soft = ds.meta["soft"].notna().to_numpy()
    train, val = split(ds.subset(np.flatnonzero(~soft)), seed, train_fraction, train_counts, kind)
    extra = np.flatnonzero(soft)
    if kind == "grouped":
        modules = set(elpv_module_groups(train.meta["source"].tolist()))
        extra = extra[np.isin(elpv_module_groups(ds.meta["source"].iloc[extra].tolist()), list(modules))]
    added = ds.subset(extra)
    added.meta["split"] = "train"
    meta = pd.concat([train.meta, added.meta], ignore_index=True)
    return Dataset(np.concatenate([train.images, added.images]), meta, list(ds.class_names)), val


def label_subset(train: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A learning curve's training part: ``fraction`` of each class's images (at least one), drawn from
    one seeded order per class, so that smaller fractions are subsets of larger ones (nested) and the
    class balance is kept (stratified). ``fraction`` 1 gives the part itself; validation is untouched."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction!r}")
    if fraction == 1.0:
        return train
    rng = np.random.default_rng([seed, 0x1abe1])
    keep = []
    for c in range(len(train.class_names)):
        members = rng.permutation(np.flatnonzero(train.labels == c))
        keep.append(members[:max(1, math.ceil(fraction * len(members)))] if len(members) else members)
    return train.subset(np.sort(np.concatenate(keep)))
