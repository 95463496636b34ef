"""Run records: one JSON file per training, written atomically, never overwritten.

Layout: ``<results_dir>/records/<step>-seed<k>.json`` (``<step>-split<j>-seed<k>.json`` for split
seeds other than 0; ``.json.gz`` read too); a second run of the same step and seed
in the same folder is written as ``<step>-seed<k>-v2.json`` (and so on) and
:func:`load_records` returns the newest of each. The schema is documented in
``docs/run_record.md`` and checked by :func:`validate_record`.
"""

from __future__ import annotations

import gzip
import json
import os
import tarfile
from pathlib import Path

from .io import atomic_write, atomic_write_new, ensure_writable_dir, json_writer

SCHEMA_VERSION = 1
REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int, "step": str, "policy": str, "seed": int, "split_seed": int, "created": str,
    "profile": str, "mode": str, "backbone": str, "device": str, "config": dict, "versions": dict,
    "class_names": list, "train_counts": dict, "val_counts": dict, "wall_seconds": (int, float),
    "metrics": dict, "predictions": dict,
}
METRIC_KEYS = ("accuracy", "balanced_accuracy", "auroc", "confusion_matrix", "per_class")


class RecordError(ValueError):
    """A run record does not follow the schema."""


def validate_record(record: dict) -> None:
    """Raise RecordError naming every missing or mistyped key."""
    problems = []
    if isinstance(record.get("schema"), int) and record["schema"] != SCHEMA_VERSION:
        problems.append(f"schema {record['schema']}: this kit reads schema {SCHEMA_VERSION} (a record of another "
                        "kit version)")
    for key, typ in REQUIRED.items():
        if key not in record:
            problems.append(f"missing key {key!r}")
        elif not isinstance(record[key], typ):
            problems.append(f"{key!r} should be {typ}, got {type(record[key]).__name__}")
    if isinstance(record.get("metrics"), dict):
        problems += [f"metrics lacks {k!r}" for k in METRIC_KEYS if k not in record["metrics"]]
    preds = record.get("predictions")
    if isinstance(preds, dict):
        lengths = {k: len(preds.get(k, [])) for k in ("names", "labels", "logits")}
        if len(set(lengths.values())) != 1 or not lengths["names"]:
            problems.append(f"predictions need names, labels, logits of one non-zero length, got {lengths}")
        elif isinstance(record.get("class_names"), list) and \
                any(len(row) != len(record["class_names"]) for row in preds["logits"]):
            problems.append("every logits row needs one value per class")
    if problems:
        raise RecordError(f"run record {record.get('step', '?')}: " + "; ".join(problems))


def run_tag(step: str, seed: int, split_seed: int = 0) -> str:
    """The name of one training in file names: ``<step>-seed<k>``, ``<step>-split<j>-seed<k>`` when j > 0."""
    return f"{step}-seed{seed}" if split_seed == 0 else f"{step}-split{split_seed}-seed{seed}"


def record_path(results_dir: str | os.PathLike, step: str, seed: int, split_seed: int = 0) -> Path:
    """A fresh path for this step, seed (and split seed when not 0): never one that exists."""
    folder = Path(results_dir) / "records"
    stem = run_tag(step, seed, split_seed)
    path = folder / f"{stem}.json"
    version = 2
    while path.exists():
        path = folder / f"{stem}-v{version}.json"
        version += 1
    return path


def save_record(record: dict, results_dir: str | os.PathLike, path: Path | None = None) -> Path:
    """Validate and write a record atomically under ``results_dir/records``; returns its path.

    ``path`` (from :func:`record_path`) is used unless a file is there by then: the name is claimed
    atomically (:func:`atomic_write_new`), so concurrent saves never overwrite one another."""
    validate_record(record)
    results_dir = ensure_writable_dir(results_dir)
    fresh = lambda _taken: record_path(results_dir, record["step"], record["seed"], record["split_seed"])  # noqa: E731
    return atomic_write_new(path if path is not None else fresh(None), json_writer(record), fresh)


def load_records(results_dir: str | os.PathLike, steps: list[str] | None = None,
                 latest_only: bool = True) -> list[dict]:
    """Records under ``results_dir/records`` (newest per step and seed), each with its ``_path``.

    A file that is not valid JSON or not a run record is skipped with a warning naming it (the
    other records still load). Records compressed as ``.json.gz`` (the committed benchmark runs) load
    like the others. Raises FileNotFoundError when there are none (for example 05 run
    before 01-04).
    """
    import warnings

    folder = Path(results_dir) / "records"
    files = sorted([*folder.glob("*.json"), *folder.glob("*.json.gz")]) if folder.is_dir() else []
    records = []
    for f in files:
        try:
            rec = read_json(f)
            if not isinstance(rec, dict):
                raise RecordError(f"a record is a JSON object, got {type(rec).__name__}")
            validate_record(rec)
        except (OSError, ValueError) as err:  # JSONDecodeError and RecordError are ValueErrors
            warnings.warn(f"skipped {f}: not a readable run record ({type(err).__name__}: {err})", stacklevel=2)
            continue
        rec["_path"] = str(f)
        records.append(rec)
    if steps is not None:
        records = [r for r in records if r["step"] in steps]
    if latest_only:
        newest: dict[tuple[str, int], dict] = {}
        for r in records:
            key = (r["step"], r["split_seed"], r["seed"])
            if key not in newest or r["created"] > newest[key]["created"]:
                newest[key] = r
        records = list(newest.values())
    if not records:
        raise FileNotFoundError(f"no run records under {folder}" + (f" for steps {steps}" if steps else "")
                                + ": run the training notebooks (01-04) first")
    return sorted(records, key=lambda r: (r["step"], r["split_seed"], r["seed"]))


def read_json(path: str | os.PathLike) -> object:
    """A JSON file, or a gzip-compressed one (``.gz``): how the committed benchmark records are kept
    small enough to travel with a call to a lent machine."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def archive_run(results_dir: str | os.PathLike, target: str | os.PathLike) -> None:
    """A run's ``records/``, ``analysis/`` and ``run.json`` (no checkpoints) as one tar.gz, written
    atomically: what a run on a lent machine brings back after each stage, so a call cut short keeps
    what it finished."""
    results_dir = Path(results_dir)

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w:gz") as tar:
            for name in ("records", "analysis", "run.json"):
                if (results_dir / name).exists():
                    tar.add(results_dir / name, arcname=name)
    atomic_write(Path(target), write)
