"""One study step end to end: load, split, expand, train, evaluate, analyse, record.

This is what a notebook calls in one line::

    record = experiment.run_step("02_flip", policy="flip", profile="cpu", seed=0, results_dir=RUNS)
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torchvision

from . import augment, data, metrics, profiles, results, sensitivity, train

STEPS: dict[str, dict] = {
    "01_baseline": {"policy": "none", "title": "baseline"},
    "02_flip": {"policy": "flip", "title": "+ flips"},
    "03_full_augment": {"policy": "full", "title": "brightness + clarity, all classes"},
    "04_balanced_augment": {"policy": "balanced", "title": "same, defective class only"},
    # science controls (issue 8): same engine, recorded like every other run
    "04_balanced_duplicate": {"policy": "balanced_duplicate", "title": "control: defective oversampled by copies"},
    "04_class_weighted": {"policy": "none", "class_weight": "balanced", "title": "control: class-weighted loss"},
}
STUDY_STEPS = ("01_baseline", "02_flip", "03_full_augment", "04_balanced_augment")
# The study's published numbers (ModelArts blog + docs); None = not published.
STUDY_RESULTS: dict[str, dict] = {
    "01_baseline": {"train": "754 / 358", "accuracy": 0.8606, "recall_normal": 0.973, "recall_defective": 0.629},
    "02_flip": {"train": "~2200 images", "accuracy": None, "recall_normal": None, "recall_defective": None},
    "03_full_augment": {"train": "2210 / 1174", "accuracy": 0.8631, "recall_normal": 0.976, "recall_defective": 0.625},
    "04_balanced_augment": {"train": "1508 / 1432", "accuracy": 0.8913, "recall_normal": 0.972,
                            "recall_defective": 0.713},
    "tta_vflip": {"accuracy": 0.8774, "recall_normal": 0.937, "recall_defective": 0.727},
    "tta_blur": {"accuracy": 0.88117, "recall_normal": 0.948, "recall_defective": 0.733},
}
_DATA: dict[tuple, tuple[data.Dataset, data.Dataset]] = {}


def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def resolve_results_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder run records go to: ``path`` if given, else ``$FSFSL_RUNS/interactive`` or
    ``<project>/runs/interactive``. Never relative to the current directory."""
    if path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else project_root() / path
    base = Path(os.environ.get("FSFSL_RUNS", project_root() / "runs"))
    return base / "interactive"


def load_split(source: str = "elpv", labels: str = "study", split_seed: int = 0,
               limit_per_class: int | None = None, image_size: int = 300) -> tuple[data.Dataset, data.Dataset]:
    """(train, val) for ELPV (the study's split) or an ImageFolder path; loaded once per process."""
    key = (source, labels, split_seed, limit_per_class, image_size)
    if key not in _DATA:
        if source == "elpv":
            ds = data.load_elpv(labels, limit_per_class=limit_per_class, seed=split_seed)
        else:
            ds = data.load_imagefolder(source, size=image_size)
            if limit_per_class:
                rng = np.random.default_rng(split_seed)
                keep = np.concatenate([rng.permutation(np.flatnonzero(ds.labels == c))[:limit_per_class]
                                       for c in range(len(ds.class_names))])
                ds = ds.subset(np.sort(keep))
        _DATA[key] = data.split(ds, seed=split_seed)
    return _DATA[key]


def run_step(step: str, policy: str | None = None, profile: str = "auto", seed: int = 0, split_seed: int = 0,
             results_dir: str | os.PathLike | None = None, source: str = "elpv", labels: str = "study",
             backbone: str | None = None, input_size: int | None = None, epochs: int | None = None,
             class_weight: str | None = None, limit_per_class: int | None = None, device: str | None = None,
             progress: bool | None = None, analyse: bool = True) -> dict:
    """Run one study step and write its record; returns the record (``_path`` = where it is)."""
    t0 = time.perf_counter()
    spec = STEPS.get(step, {})
    policy = policy or spec.get("policy")
    if policy is None:
        raise ValueError(f"step {step!r} is not one of {', '.join(STEPS)}: pass policy= explicitly")
    pol = augment.get_policy(policy)
    resolved = profiles.resolve(profile, backbone=backbone, input_size=input_size, epochs=epochs,
                                class_weight=class_weight or spec.get("class_weight"), device=device,
                                limit_per_class=limit_per_class)
    out_dir = resolve_results_dir(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"results folder {out_dir} is not writable")
    train_part, val = load_split(source, labels, split_seed, resolved.get("limit_per_class"))
    expanded = augment.expand(train_part, pol, seed=seed, progress=progress)
    ckpt = out_dir / "checkpoints" / f"{step}-seed{seed}" if resolved["profile"] == "paper" else None
    fit = train.fit(expanded, val, resolved["config"], seed=seed, checkpoint_dir=ckpt, progress=progress)
    record = {
        "schema": results.SCHEMA_VERSION, "step": step, "title": spec.get("title", step), "policy": pol.name,
        "seed": seed, "split_seed": split_seed, "source": source, "labels": labels,
        "created": dt.datetime.now().isoformat(timespec="microseconds"),
        "profile": resolved["profile"], "profile_requested": profile, "mode": fit.mode,
        "backbone": resolved["config"]["backbone"], "device": fit.device,
        "config": resolved["config"], "notes": resolved["notes"] + fit.notes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "class_names": list(val.class_names), "train_counts": expanded.counts(),
        "train_counts_before_expansion": train_part.counts(), "val_counts": val.counts(),
        "metrics": metrics.evaluate(val.labels, fit.val_logits, val.class_names),
        "predictions": {"names": val.names, "labels": val.labels.tolist(),
                        "logits": np.round(fit.val_logits, 6).tolist()},
        "view_logits": {v: np.round(x, 6).tolist() for v, x in fit.view_logits.items()},
        "history": fit.history, "timings": fit.timings,
    }
    if analyse:
        record["sensitivity"] = sensitivity.analyse(
            "image_classification", out_dir / "analysis" / f"{step}-seed{seed}", fit.val_logits, val.labels,
            val.names, images=val.images, class_names=val.class_names)["sensitivity"]
    record["wall_seconds"] = time.perf_counter() - t0
    record["_path"] = str(results.save_record(record, out_dir))
    return record
