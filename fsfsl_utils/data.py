"""Data: load ELPV or an ImageFolder tree into a :class:`Dataset`, the study's split, export.

A Dataset holds every image in memory as one uint8 array (``N x H x W`` for grayscale,
``N x H x W x 3`` for RGB) next to a metadata table with one row per image. Nothing is
re-decoded from PNG after loading.

A *pack* is one portable, lossless file of a Dataset (a zip of lossless WebP images, a metadata
table and checksums) for moving a data set to a machine without the ``elpv-dataset`` package or
network access, e.g. an air-gapped GPU server. Loading needs only numpy, pandas and Pillow and
gives the same arrays bit for bit; a damaged pack is refused whole, naming the file.

Command line::

    python -m fsfsl_utils.data export OUT [--seed 0] [--labels study] [--force]
    python -m fsfsl_utils.data pack OUT [--labels study] [--source elpv|FOLDER]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

LABEL_POLICIES = ("study", "threshold", "four_level")
STUDY_TRAIN_COUNTS = {"normal": 754, "defective": 358}
STUDY_VAL_COUNTS = {"normal": 754, "defective": 357}
T = TypeVar("T")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
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


def elpv_root() -> Path:
    """Folder of the `elpv-dataset` package's labels.csv and images/."""
    try:
        import elpv_dataset
    except ImportError as err:  # pragma: no cover - a dependency of the kit
        raise DataError("the package 'elpv-dataset' is not installed: pip install elpv-dataset") from err
    return Path(elpv_dataset.__file__).parent / "data"


def load_elpv(labels: str = "study", limit_per_class: int | None = None, seed: int = 0) -> Dataset:
    """Load ELPV from the `elpv-dataset` package under a label policy.

    ``study``: p = 0 -> normal, p = 1 -> defective, 1/3 and 2/3 left out (1508 + 715 images).
    ``threshold``: p >= 0.5 -> defective, else normal (all 2,624 images).
    ``four_level``: classes p0, p33, p67, p100 (all 2,624 images).
    ``limit_per_class`` keeps a seeded random subset per class (for smoke runs).
    """
    check_label_policy(labels)
    root = elpv_root()
    table = pd.read_csv(root / "labels.csv", sep=r"\s+", header=None,
                        names=["path", "probability", "cell_type"])
    probs = table["probability"].to_numpy()
    level = np.rint(probs * 3).astype(int)  # 0, 1, 2, 3
    if labels == "study":
        class_names = ["normal", "defective"]
        keep = (level == 0) | (level == 3)
        label = (level == 3).astype(int)
    elif labels == "threshold":
        class_names = ["normal", "defective"]
        keep = np.ones(len(table), bool)
        label = (probs >= 0.5).astype(int)
    else:
        class_names = ["p0", "p33", "p67", "p100"]
        keep = np.ones(len(table), bool)
        label = level
    index = np.flatnonzero(keep)
    if limit_per_class is not None:
        rng = np.random.default_rng(seed)
        picked = []
        for c in range(len(class_names)):
            members = index[label[index] == c]
            picked.append(np.sort(rng.permutation(members)[:limit_per_class]))
        index = np.sort(np.concatenate(picked))
    images = np.stack([_read_gray(root / table["path"][i]) for i in index])
    names = [Path(table["path"][i]).name for i in index]
    meta = make_meta(names, label[index], cell_type=table["cell_type"].to_numpy()[index],
                 probability=probs[index])
    return Dataset(images, meta, class_names)


ELPV_MODULES = 44  # "extracted from 44 different solar modules" (the data set's README)
MODULE_BLOCK = 60  # cells per module block: most ELPV modules are 6 x 10 cells


def elpv_module_groups(names: Sequence[str]) -> list[str]:
    """A module label per ELPV cell name (``cell0421.png``), for clustered statistics and grouped splits.

    The data set says its 2,624 cells come from 44 modules, but names no module. Its labels list the
    cells module by module: the cell type (mono / poly) changes only at multiples of 60 cells at
    first, and a module is of one type. So a module is taken to be a block of 60 consecutive cells
    within a run of one cell type (a proxy; the runs that are not multiples of 60 end in a shorter
    block). Names that are not ELPV cells get their own group each."""
    table = pd.read_csv(elpv_root() / "labels.csv", sep=r"\s+", header=None, names=["path", "probability", "type"])
    run = (table["type"] != table["type"].shift()).cumsum().to_numpy()
    start = {r: i for i, r in reversed(list(enumerate(run)))}  # first row of each run
    label = {Path(path).name: f"{kind}-run{r}-block{(i - start[r]) // MODULE_BLOCK}"
             for i, (path, kind, r) in enumerate(zip(table["path"], table["type"], run))}
    return [label.get(Path(str(n)).name.split("#")[0], f"image:{n}") for n in names]


def load_imagefolder(root: str | os.PathLike, size: int = 300, mode: str = "auto") -> Dataset:
    """Load ``root/<class>/*`` or ``root/{train,val}/<class>/*`` into a Dataset.

    Every image is resized to ``size`` x ``size`` (bilinear) and converted to 8-bit gray
    (``mode="L"``) or RGB (``mode="RGB"``); ``auto`` keeps gray when every file is gray.
    With train/ and val/ folders, the ``split`` column records the given split and
    :func:`split` keeps it. Class names are the folder names, sorted (as ImageFolder).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    if mode not in ("auto", "L", "RGB"):
        raise ValueError(f"mode must be 'auto', 'L' or 'RGB', got {mode!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    groups, class_names = _imagefolder_layout(root)
    for _, folder in groups:
        real = {}
        for cname in class_names:
            cdir = folder / cname
            if cdir.is_dir():
                target = cdir.resolve()
                if target in real:
                    warnings.warn(f"class folders {folder / real[target]} and {cdir} are the same folder (a link): "
                                  "its images count in both classes", stacklevel=2)
                real[target] = cname
    files, labels, splits = [], [], []
    for split_name, folder in groups:
        for c, cname in enumerate(class_names):
            cdir = folder / cname
            found = sorted(f for f in cdir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES
                           and not f.name.startswith(".")) if cdir.is_dir() else []  # skips macOS ._x.png
            if not found:
                raise DataError(f"class folder {cdir} has no images ({', '.join(IMAGE_SUFFIXES)})")
            files += found
            labels += [c] * len(found)
            splits += [split_name] * len(found)
    if mode == "auto":  # from the files' headers: nothing is decoded yet
        mode = "L" if all(_header_mode(f) in GRAY_MODES for f in files) else "RGB"
    images = np.empty((len(files), size, size) if mode == "L" else (len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):  # one image decoded at a time: memory stays that of the final array
        images[i] = np.asarray(_read_resized(f, size, mode))
    names = [str(f.relative_to(root)).replace(os.sep, "/") for f in files]
    return Dataset(images, make_meta(names, np.array(labels), split=splits), class_names)


def _imagefolder_layout(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The (split, folder) groups of an ImageFolder tree and its class names, sorted; DataError says
    what is wrong with the layout. Reads folder names only."""
    parts = [p for p in ("train", "val") if (root / p).is_dir()]
    if parts and len(parts) != 2:
        raise DataError(f"{root} has a {parts[0]}/ folder but no {'val' if parts[0] == 'train' else 'train'}/ folder")
    groups = [(p, root / p) for p in parts] if parts else [("", root)]
    class_names = sorted({d.name for _, g in groups for d in _class_dirs(g)})
    if not class_names:
        raise DataError(f"{root} is empty: expected one folder per class, e.g. {root}/normal/*.png")
    if len(class_names) < 2:
        raise DataError(f"{root} has only one class folder ({class_names[0]!r}): need at least two classes")
    return groups, class_names


def class_names_of(source: str | os.PathLike, labels: str = "study") -> list[str]:
    """The class names a data source loads with (:func:`load_source`), read without decoding an image:
    ELPV's for a label policy, a pack's header, or an ImageFolder tree's folder names."""
    if str(source) == "elpv":
        check_label_policy(labels)
        return ["p0", "p33", "p67", "p100"] if labels == "four_level" else ["normal", "defective"]
    if is_pack(source):
        return list(read_pack_header(source)["class_names"])
    root = Path(source).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return _imagefolder_layout(root)[1]


def pick_per_class(labels: np.ndarray, n: int | None, rng: np.random.Generator,
                   classes: Sequence[int]) -> list[np.ndarray]:
    """For each class in ``classes``, in that order, up to ``n`` of its indices in random order
    (one ``rng.permutation`` per class; ``n=None``: all of them)."""
    labels = np.asarray(labels)
    return [rng.permutation(np.flatnonzero(labels == c))[:n] for c in classes]


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


def export(out: str | os.PathLike, seed: int = 0, labels: str = "study", force: bool = False,
           datasets: tuple[Dataset, Dataset] | None = None) -> Path:
    """Write the split as ``OUT/{train,val}/<class>/<name>.png`` plus ``OUT/manifest.csv``.

    The tree is built in a temporary folder beside OUT and renamed into place, so an
    interrupted export leaves nothing half-written. A non-empty OUT is refused unless
    ``force`` is set, and ``force`` replaces only an earlier export: a folder holding the kit's
    marker (:data:`EXPORT_MARKER`, the manifest's SHA-256) and nothing the export did not write.
    Images whose names share a stem (``x.png``, ``x.jpg``) get distinct file names.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"export target {out} exists and is not a folder")
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents \
            or resolved == Path.home().resolve() or resolved == Path(resolved.anchor):
        raise DataError(f"export target {out} is the current folder, one of its parents, the home folder or the "
                        "root: choose a new folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise FileExistsError(f"export target {out} is not empty; choose an empty folder or pass --force")
        check_earlier_export(out)
    train, val = datasets if datasets is not None else study_split(seed=seed, labels=labels)
    for name in [*train.class_names, *val.class_names]:
        if name in ("", ".", "..") or "/" in name or "\\" in name or Path(name).is_absolute():
            raise DataError(f"class name {name!r} cannot be a folder name inside {out}: use a plain name")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    from .io import current_umask

    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: the export follows the umask like any new folder
    try:
        rows, taken = [], set()
        for part, ds in (("train", train), ("val", val)):
            for i, row in ds.meta.iterrows():
                cname = ds.class_names[int(row["label"])]
                rel = _unique_file(Path(part) / cname, str(row["name"]), i, taken)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ds.images[i]).save(tmp / rel, compress_level=1)  # lossless; fast
                rows.append({"file": rel.as_posix(), "source": row["source"], "split": part,
                             "label": cname, "probability": row["probability"],
                             "cell_type": row["cell_type"]})
        pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
        marker = {"format": EXPORT_FORMAT, "manifest_sha256": _file_sha256(tmp / "manifest.csv"), "images": len(rows)}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


EXPORT_MARKER = ".fsfsl-export"  # written only by export(): what --force recognises an earlier export by
EXPORT_FORMAT = "fsfsl-export/1"
EXPORT_ENTRIES = {"train", "val", "manifest.csv", EXPORT_MARKER}


def check_earlier_export(out: Path) -> None:
    """DataError unless ``out`` is an earlier export, untouched at its top: the kit's marker whose
    fingerprint matches the manifest beside it, and nothing else than what an export writes."""
    refuse = f"export target {out} is not empty and is not an earlier export"
    try:
        marker = json.loads((out / EXPORT_MARKER).read_text())
    except (OSError, ValueError):
        raise DataError(f"{refuse} (no readable {EXPORT_MARKER} marker): --force replaces only an earlier export; "
                        "choose another folder") from None
    if not isinstance(marker, dict) or marker.get("format") != EXPORT_FORMAT \
            or marker.get("manifest_sha256") != _file_sha256(out / "manifest.csv"):
        raise DataError(f"{refuse} (its {EXPORT_MARKER} marker does not match its manifest.csv): --force replaces "
                        "only an earlier export; choose another folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_ENTRIES)
    if others:
        raise DataError(f"{refuse} alone: it also holds {', '.join(others[:5])}, which --force would delete; "
                        "move them or choose another folder")


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _unique_file(folder: Path, name: str, index: int, taken: set[str]) -> Path:
    """``folder/<stem>.png`` for an image named ``name``, a new one per image: a second ``x`` (``x.jpg``
    beside ``x.png``) becomes ``x_jpg.png``, then ``x_jpg-2.png`` (names compared case-insensitively,
    as some file systems do)."""
    path = Path(name.replace("\\", "/"))
    stem = path.stem.lstrip(".") or f"image{index}"
    candidates = [stem, f"{stem}_{path.suffix.lstrip('.').lower()}" if path.suffix else f"{stem}_{index}"]
    candidates += [f"{candidates[1]}-{k}" for k in range(2, len(taken) + 3)]
    for candidate in candidates:
        rel = folder / f"{candidate}.png"
        if rel.as_posix().lower() not in taken:
            taken.add(rel.as_posix().lower())
            return rel
    raise AssertionError("unreachable: more candidates than names taken")


PACK_FORMAT = "fsfsl-pack/1"
PACK_SUFFIX = ".fsfslpack"


def write_pack(ds: Dataset, out: str | os.PathLike, origin: str = "", labels: str = "",
               progress: bool | None = None) -> Path:
    """Write ``ds`` as one pack file (zip: ``pack.json`` with the metadata and checksums, one lossless
    WebP per image). Written to a temporary file and renamed, so a pack on disk is always whole.
    ``origin``/``labels`` say where the images came from (e.g. ``elpv`` / ``study``). Images are
    encoded on one thread per core (Pillow's encoder releases the GIL), a chunk at a time, and
    written in order: the file is the same whatever the number of cores."""
    from .io import atomic_write
    from .progress import progress_bar

    out = check_pack_name(out)
    files = [f"images/{i:06d}.webp" for i in range(len(ds))]
    chunk = 256  # images encoded ahead of the writer at most

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf, \
                ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # WebP is compressed already
            encoded = (pair for start in range(0, len(ds), chunk)
                       for pair in enumerate(pool.map(_webp_lossless, ds.images[start:start + chunk]), start))
            for i, webp in progress_bar(encoded, desc="pack", total=len(ds), enable=progress):
                zf.writestr(files[i], webp)
            header = {"format": PACK_FORMAT, "origin": origin, "labels": labels,
                      "class_names": list(ds.class_names), "shape": list(ds.images.shape),
                      "images_sha256": _digest(ds.images), "files": files,
                      "meta": json.loads(ds.meta.to_json(orient="columns"))}
            zf.writestr("pack.json", json.dumps(header))

    atomic_write(out, write)
    return out


def _webp_lossless(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=50, method=2)
    return buf.getvalue()


def _decoded(blob: bytes, mode: str) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        return np.asarray(im.convert(mode))


def check_pack_name(out: str | os.PathLike) -> Path:
    """``out`` as a Path; ValueError unless it names a pack file."""
    if not is_pack(out):
        raise ValueError(f"a pack file name ends in {PACK_SUFFIX}, got {out}")
    return Path(out)


def read_pack_header(path: str | os.PathLike) -> dict:
    """The metadata of a pack (format, origin, labels, classes, shape, checksum) without its images."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            header = json.loads(zf.read("pack.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as err:
        raise DataError(f"{path} is not a readable fsfsl pack ({type(err).__name__}: {err}); "
                        f"make one with: python -m fsfsl_utils.data pack {path}") from err
    if header.get("format") != PACK_FORMAT:
        raise DataError(f"{path} has pack format {header.get('format')!r}; this kit reads {PACK_FORMAT!r}")
    return header


def load_pack(path: str | os.PathLike) -> Dataset:
    """A Dataset from a pack file, checked: every member's CRC and the images' SHA-256 must match,
    else DataError names the file (nothing is returned half)."""
    path = Path(path)
    header = read_pack_header(path)
    shape = tuple(header["shape"])
    images = np.empty(shape, np.uint8)
    mode = "L" if len(shape) == 3 else "RGB"
    files, chunk = header["files"], 256
    try:  # read in order, decoded on one thread per core (Pillow releases the GIL)
        with zipfile.ZipFile(path) as zf, ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for start in range(0, len(files), chunk):
                blobs = [zf.read(name) for name in files[start:start + chunk]]
                for i, image in enumerate(pool.map(_decoded, blobs, [mode] * len(blobs)), start):
                    images[i] = image
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, UnidentifiedImageError) as err:
        raise DataError(f"pack {path} is damaged ({type(err).__name__}: {err}); make it again") from err
    if _digest(images) != header["images_sha256"]:
        raise DataError(f"pack {path} is damaged: its images do not match their SHA-256 checksum; make it again")
    meta = pd.DataFrame(header["meta"])
    meta.index = meta.index.astype(int)
    meta = meta.sort_index()
    meta["label"] = meta["label"].astype(np.int64)
    meta["probability"] = meta["probability"].astype(float)
    for col in ("name", "source", "split", "cell_type", "op", "param"):
        meta[col] = meta[col].fillna("").astype(str)
    return Dataset(images, meta[list(META_COLUMNS)], list(header["class_names"]))


def load_source(source: str | os.PathLike, labels: str = "study", image_size: int = 300) -> Dataset:
    """A data source by name: ``"elpv"`` (the package, under ``labels``), a pack file, or an ImageFolder
    folder (images resized to ``image_size``). A pack made under another label policy is refused."""
    if str(source) == "elpv":
        return load_elpv(labels)
    if is_pack(source):
        header = read_pack_header(source)
        if header.get("labels") and header["labels"] != labels:
            raise DataError(f"pack {source} holds {header['labels']!r} labels, but labels={labels!r} was asked for")
        return load_pack(source)
    return load_imagefolder(source, image_size)


def source_origin(source: str | os.PathLike) -> str:
    """Where a source's images come from: ``"elpv"`` for ELPV and for a pack made from it, else the source."""
    if is_pack(source) and Path(source).is_file():
        return read_pack_header(source).get("origin") or str(source)
    return str(source)


def is_pack(source: str | os.PathLike) -> bool:
    """Whether a data source names a pack file (by its suffix)."""
    return str(source).endswith(PACK_SUFFIX)


def _digest(images: np.ndarray) -> str:
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


NOT_CLASSES = ("__MACOSX",)  # folders archivers add beside the data (macOS zip metadata)


def _class_dirs(folder: Path) -> list[Path]:
    """The class folders of ``folder``: hidden folders and archivers' metadata (``__MACOSX``) are skipped."""
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name not in NOT_CLASSES)


def _open_image(path: Path, draft: tuple[str, tuple[int, int]] | None = None) -> Image.Image:
    """A decoded image; ``draft`` = (mode, size) lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8)
    that still covers ``size``. Unreadable files and decompression bombs raise DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if draft is not None and im.format == "JPEG":
                    im.draft(*draft)
                rawmode = _rawmode(im)
                im.load()
                _check_high_bit_colour(im, rawmode, path)
                return ImageOps.exif_transpose(im)  # a phone photo as it is shown, not as it is stored
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"image {path} is too large to decode safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _rawmode(im: Image.Image) -> str:
    """How the file stores its pixels (e.g. ``RGB;16B``), from the first tile; "" when unknown."""
    try:
        args = im.tile[0][3]
    except (IndexError, TypeError, AttributeError):
        return ""
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _check_high_bit_colour(im: Image.Image, rawmode: str, path: Path) -> None:
    """Pillow reads colour (and gray + alpha) files of 16 bits per channel as 8-bit, keeping the high
    byte: right for data that fill the 16 bits, but 12-bit data (common for cameras) come out as values
    0-15. Such a file is refused, naming it, rather than loaded nearly black."""
    if ";16" not in rawmode or im.mode not in ("RGB", "RGBA", "LA", "RGBX"):
        return
    colour = np.asarray(im)[..., :1 if im.mode == "LA" else 3]
    top = int(colour.max(initial=0))
    if top < 128:
        raise DataError(f"image {path} has 16 bits per colour channel but its values use fewer than 16 of them "
                        f"(the high byte reaches only {top}: 12-bit data?); Pillow reads such files to 8 bits by "
                        "their high byte, which would leave a nearly black image. Convert it to 16-bit gray or to "
                        "8 bits first")


def _header_mode(path: Path) -> str:
    """An image file's Pillow mode, read from its header (no pixels decoded)."""
    try:
        with warnings.catch_warnings():  # a bomb is refused when it is decoded (_open_image), with the file named
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.mode
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


GRAY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "F")  # Pillow modes loaded as 8-bit gray


def image_header(path: str | os.PathLike) -> dict:
    """An image file's size and Pillow mode, from its header (nothing decoded); DataError names a bad file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return {"size": im.size, "mode": im.mode}
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def read_image(path: str | os.PathLike, size: int = 300, mode: str = "L") -> Image.Image:
    """One file as training reads it: any bit depth scaled to 8 bits (:func:`to_8bit`), EXIF orientation
    applied, ``mode`` "L" (gray) or "RGB", resized to ``size`` x ``size`` (bilinear). DataError names a
    file that cannot be read."""
    return _read_resized(Path(path), size, mode)


def _read_resized(path: Path, size: int, mode: str) -> Image.Image:
    """One file as an 8-bit ``mode`` image of ``size`` x ``size`` (bilinear). Large JPEGs decode at a
    reduced scale; a photo is reduced by whole factors before the final bilinear step
    (``reducing_gap``), so a 12 MP photo never exists in memory as more than one decoded image."""
    im = _open_image(path, draft=(mode, (size, size)))
    return to_8bit(im).convert(mode).resize((size, size), Image.BILINEAR, reducing_gap=3.0)


def _read_gray(path: Path) -> np.ndarray:
    return np.asarray(to_8bit(_open_image(path)).convert("L"))


def to_8bit(im: Image.Image) -> Image.Image:
    """An 8-bit image from any Pillow mode, scaled instead of clipped (electroluminescence cameras often
    write 12- or 16-bit files, which a plain ``convert("L")`` clips to almost all white).

    Integer images with more than 8 bits (``I;16``, ``I``) are divided by the largest value of the
    smallest bit depth that holds their maximum (10, 12, 14, 16 or 32 bits), so a 12-bit image in a
    16-bit file keeps its full range and images of one camera keep their relative brightness.
    Float images (``F``) with values in [0, 1] are multiplied by 255; other float ranges are
    stretched from their minimum to their maximum, both taken over the finite values (an ``inf`` pixel
    becomes white, not the whole image black). 8-bit modes pass unchanged."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    x = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        finite = np.isfinite(x)
        lo, hi = (float(x[finite].min()), float(x[finite].max())) if finite.any() else (0.0, 1.0)
        x = np.where(np.isnan(x), lo, np.clip(x, lo, hi))  # +-inf take the finite range's ends, NaN its lowest
        x = x * 255 if lo >= 0 and hi <= 1 else (x - lo) / ((hi - lo) or 1) * 255
    else:
        top = float(x.max(initial=0))
        bits = next((b for b in (8, 10, 12, 14, 16, 32) if top < 2 ** b), 32)
        x = np.clip(x, 0, None) / (2 ** bits - 1) * 255
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(x)), 0, 255).astype(np.uint8), "L")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the study split as an ImageFolder tree + manifest.csv")
    exp.add_argument("out", help="target folder (must be empty or absent)")
    exp.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    exp.add_argument("--labels", default="study", choices=LABEL_POLICIES, help="label policy (default study)")
    exp.add_argument("--force", action="store_true", help="replace a non-empty target folder")
    pack = sub.add_parser("pack", help="write a data set as one portable, lossless pack file (.fsfslpack)")
    pack.add_argument("out", help=f"the pack file to write (ends in {PACK_SUFFIX})")
    pack.add_argument("--labels", default="study", choices=LABEL_POLICIES, help="ELPV label policy (default study)")
    pack.add_argument("--source", default="elpv", help="'elpv' (default) or an ImageFolder folder")
    args = parser.parse_args(argv)
    if args.command == "pack":
        try:
            check_pack_name(args.out)  # before any data is loaded
            if args.source == "elpv":
                ds = load_elpv(args.labels)
            else:
                ds = load_imagefolder(args.source)
            path = write_pack(ds, args.out, origin=args.source, labels=args.labels if args.source == "elpv" else "")
        except (DataError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {len(ds)} images ({ds.counts()}) to {path}: {path.stat().st_size / 2**20:.1f} MiB")
        return 0
    try:
        path = export(args.out, seed=args.seed, labels=args.labels, force=args.force)
    except (DataError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    manifest = pd.read_csv(path / "manifest.csv")
    print(f"wrote {len(manifest)} images to {path}")
    print(manifest.groupby(["split", "label"]).size().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
