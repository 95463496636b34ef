"""A pack: one portable, lossless file of a Dataset (lossless WebP in a zip, a metadata table, checksums)."""

from __future__ import annotations

import io
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .dataset import META_COLUMNS, DataError, Dataset, digest

PACK_FORMAT = "fsfsl-pack/1"


PACK_SUFFIX = ".fsfslpack"


def write_pack(ds: Dataset, out: str | os.PathLike, origin: str = "", labels: str = "",
               progress: bool | None = None) -> Path:
    """Write ``ds`` as one pack file (zip: ``pack.json`` with the metadata and checksums, one lossless
    WebP per image). Written to a temporary file and renamed, so a pack on disk is always whole.
    ``origin``/``labels`` say where the images came from (e.g. ``elpv`` / ``study``). Images are
    encoded on one thread per core (Pillow's encoder releases the GIL), a chunk at a time, and
    written in order: the file is the same whatever the number of cores."""
    from ..io import atomic_write
    from ..progress import progress_bar

    out = check_pack_name(out)
    if "soft" in ds.meta and ds.meta["soft"].notna().any():  # a pack holds hard labels only
        raise DataError("a pack cannot hold soft labels (label policy 'soft'): pack the 'study' policy; the soft "
                        "cells would otherwise reach the validation part with rounded labels")
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
                      "images_sha256": digest(ds.images), "files": files,
                      "meta": json.loads(ds.meta.to_json(orient="columns"))}
            zf.writestr("pack.json", json.dumps(header))

    atomic_write(out, write)
    return out


def _webp_lossless(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=50, method=2)
    return buf.getvalue()


def decoded(blob: bytes, mode: str) -> np.ndarray:
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
                for i, image in enumerate(pool.map(decoded, blobs, [mode] * len(blobs)), start):
                    images[i] = image
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, UnidentifiedImageError) as err:
        raise DataError(f"pack {path} is damaged ({type(err).__name__}: {err}); make it again") from err
    if digest(images) != header["images_sha256"]:
        raise DataError(f"pack {path} is damaged: its images do not match their SHA-256 checksum; make it again")
    meta = pd.DataFrame(header["meta"])
    meta.index = meta.index.astype(int)
    meta = meta.sort_index()
    meta["label"] = meta["label"].astype(np.int64)
    meta["probability"] = meta["probability"].astype(float)
    for col in ("name", "source", "split", "cell_type", "op", "param"):
        meta[col] = meta[col].fillna("").astype(str)
    return Dataset(images, meta[list(META_COLUMNS)], list(header["class_names"]))

def is_pack(source: str | os.PathLike) -> bool:
    """Whether a data source names a pack file (by its suffix)."""
    return str(source).endswith(PACK_SUFFIX)
