"""Where images come from: ELPV (the PyPI package), an ImageFolder tree or a pack; each decoded
into a :class:`Dataset`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import DataError, Dataset, check_label_policy, make_meta
from .images import GRAY_MODES, IMAGE_SUFFIXES, class_dirs, header_mode, read_gray, read_resized
from .pack import is_pack, load_pack, read_pack_header

STUDY_TRAIN_COUNTS = {"normal": 754, "defective": 358}


STUDY_VAL_COUNTS = {"normal": 754, "defective": 357}


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
    ``soft``: the study's classes and cells, plus the 401 cells of p = 1/3 or 2/3 with their
    probability as a soft label (column ``soft``; :func:`split` puts them in the training part only,
    and the study's cells are split exactly as under ``study``).
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
    elif labels == "soft":
        class_names = ["normal", "defective"]
        keep = np.ones(len(table), bool)
        label = (probs >= 0.5).astype(int)
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
    images = np.stack([read_gray(root / table["path"][i]) for i in index])
    names = [Path(table["path"][i]).name for i in index]
    meta = make_meta(names, label[index], cell_type=table["cell_type"].to_numpy()[index],
                 probability=probs[index])
    if labels == "soft":  # a soft label where the experts were unsure; NaN: a hard label
        meta["soft"] = np.where((level[index] == 1) | (level[index] == 2), probs[index], np.nan)
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
    groups, class_names = imagefolder_layout(root)
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
        mode = "L" if all(header_mode(f) in GRAY_MODES for f in files) else "RGB"
    images = np.empty((len(files), size, size) if mode == "L" else (len(files), size, size, 3), np.uint8)
    for i, f in enumerate(files):  # one image decoded at a time: memory stays that of the final array
        images[i] = np.asarray(read_resized(f, size, mode))
    names = [str(f.relative_to(root)).replace(os.sep, "/") for f in files]
    return Dataset(images, make_meta(names, np.array(labels), split=splits), class_names)


def imagefolder_layout(root: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """The (split, folder) groups of an ImageFolder tree and its class names, sorted; DataError says
    what is wrong with the layout. Reads folder names only."""
    parts = [p for p in ("train", "val") if (root / p).is_dir()]
    if parts and len(parts) != 2:
        raise DataError(f"{root} has a {parts[0]}/ folder but no {'val' if parts[0] == 'train' else 'train'}/ folder")
    groups = [(p, root / p) for p in parts] if parts else [("", root)]
    class_names = sorted({d.name for _, g in groups for d in class_dirs(g)})
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
    if labels == "soft":
        raise DataError("label policy 'soft' is ELPV's (its p = 1/3 and 2/3 cells): give DATA 'elpv'")
    if is_pack(source):
        return list(read_pack_header(source)["class_names"])
    root = Path(source).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return imagefolder_layout(root)[1]


def class_counts_of(source: str | os.PathLike) -> dict[str, int] | None:
    """Images per class of an ImageFolder tree (its files counted, nothing decoded), to name the class the
    kit takes as the target before a run starts; None for ELPV and packs."""
    if str(source) == "elpv" or is_pack(source):
        return None
    groups, names = imagefolder_layout(Path(source).expanduser())
    return {c: sum(1 for _, g in groups if (g / c).is_dir() for f in (g / c).iterdir()
                   if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")) for c in names}


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

