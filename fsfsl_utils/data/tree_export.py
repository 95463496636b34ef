"""The study's split written as an ImageFolder tree with a manifest, recognised by a marker only the kit writes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image

from .dataset import DataError, Dataset
from .splits import study_split


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
    from ..io import current_umask

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
