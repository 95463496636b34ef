"""One study step end to end: load, split, expand, train, evaluate, analyse, record.

This is what a notebook calls in one line::

    record = experiment.run_step("02_flip", policy="flip", profile="cpu", seed=0, results_dir=RUNS)
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision

from . import augment, data, metrics, profiles, results, sensitivity, train
from .data import check_label_policy
from .progress import set_progress
from .study import CONTROL_STEPS, STEPS, STUDY_RESULTS, STUDY_STEPS  # noqa: F401  (the study, re-exported)

_BASE: dict[tuple, data.Dataset] = {}
_SPLIT: dict[tuple, tuple[data.Dataset, data.Dataset]] = {}
_PREDICTORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
KEEP_MODELS = 4  # models kept in memory for sweeps (the most recent runs)


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
    """(train, val) for ELPV (the study's split), a pack file or an ImageFolder path.

    The images are decoded once per process; the most recent split is kept too.
    ``limit_per_class`` keeps a subset drawn with the split seed (smoke runs).
    """
    base_key = (source, labels, image_size)
    if base_key not in _BASE:
        _BASE.clear()
        _BASE[base_key] = data.load_source(source, labels, image_size)
    key = (*base_key, split_seed, limit_per_class)
    if key not in _SPLIT:
        ds = _BASE[base_key]
        if limit_per_class:
            rng = np.random.default_rng(split_seed)
            keep = np.concatenate(data.pick_per_class(ds.labels, limit_per_class, rng, range(len(ds.class_names))))
            ds = ds.subset(np.sort(keep))
        _SPLIT.clear()
        _SPLIT[key] = data.split(ds, seed=split_seed)
    return _SPLIT[key]


def checkpointed(profile: str) -> bool:
    """Whether a (resolved) profile's trainings write checkpoints: the paper profile's fine-tunings do."""
    return profile == "paper"


@dataclass
class PreparedStep:
    """What a study step trains on, before training: :func:`run_step` and :func:`train_ahead` share it."""

    step: str
    spec: dict
    policy: augment.Policy
    resolved: dict
    out_dir: Path
    train_part: data.Dataset
    val: data.Dataset
    expanded: data.Dataset
    seed: int
    split_seed: int
    checkpoint_dir: Path | None


def prepare_step(step: str, policy: str | None = None, profile: str = "auto", seed: int = 0, split_seed: int = 0,
                 results_dir: str | os.PathLike | None = None, source: str = "elpv", labels: str = "study",
                 backbone: str | None = None, input_size: int | None = None, epochs: int | None = None,
                 class_weight: str | None = None, limit_per_class: int | None = None, device: str | None = None,
                 progress: bool | None = None, head_c: float | None = None) -> PreparedStep:
    """Resolve a step's profile, load and split the data, expand the training part by the step's
    policy, and name its checkpoint folder (the paper profile checkpoints; a rerun resumes)."""
    spec = STEPS.get(step, {})
    policy = policy or spec.get("policy")
    if policy is None:
        raise ValueError(f"step {step!r} is not one of {', '.join(STEPS)}: pass policy= explicitly")
    pol = augment.get_policy(policy)
    resolved = profiles.resolve(profile, backbone=backbone, input_size=input_size, epochs=epochs,
                                class_weight=class_weight or spec.get("class_weight"), device=device,
                                limit_per_class=limit_per_class, head_cs=None if head_c is None else (head_c,))
    out_dir = results.ensure_writable_dir(resolve_results_dir(results_dir))
    train_part, val = load_split(source, labels, split_seed, resolved.get("limit_per_class"))
    expanded = augment.expand(train_part, pol, seed=seed, progress=progress)
    ckpt = out_dir / "checkpoints" / results.run_tag(step, seed, split_seed) if checkpointed(resolved["profile"]) \
        else None
    return PreparedStep(step, spec, pol, resolved, out_dir, train_part, val, expanded, seed, split_seed, ckpt)


def train_ahead(calls: Sequence[tuple[str, dict]], progress: bool | None = None) -> int:
    """Fine-tune the trainings that ``run_step(step, **kwargs)`` calls would do, all at once
    (:func:`fsfsl_utils.train.fit_many`: one CUDA stream each, each result as if alone), into their
    checkpoint folders; the ``run_step`` calls then resume from the finished checkpoints and only
    predict and record. Only checkpointed (paper-profile) trainings are done ahead; returns how many.
    """
    calls = [(step, kw) for step, kw in calls if checkpointed(profiles.resolve(kw.get("profile", "auto"))["profile"])]
    prepared = [prepare_step(step, **{k: v for k, v in kwargs.items() if k not in ("analyse", "views")})
                for step, kwargs in calls]
    jobs = [{"train": p.expanded, "val": p.val, "config": p.resolved["config"], "seed": p.seed, "views": (),
             "checkpoint_dir": p.checkpoint_dir} for p in prepared]
    train.fit_many(jobs, progress=progress)
    return len(jobs)


def run_step(step: str, policy: str | None = None, profile: str = "auto", seed: int = 0, split_seed: int = 0,
             results_dir: str | os.PathLike | None = None, source: str = "elpv", labels: str = "study",
             backbone: str | None = None, input_size: int | None = None, epochs: int | None = None,
             class_weight: str | None = None, limit_per_class: int | None = None, device: str | None = None,
             progress: bool | None = None, analyse: bool = True,
             views: Sequence[str] = ("vflip", "blur"), head_c: float | None = None) -> dict:
    """Run one study step and write its record; returns the record (``_path`` = where it is).

    ``views``: test-time views whose logits the record keeps (for TTA in 05). ``head_c`` (probe):
    use this regularisation strength instead of choosing one by cross-validation.
    """
    t0 = time.perf_counter()
    prep = prepare_step(step, policy, profile, seed, split_seed, results_dir, source, labels, backbone, input_size,
                        epochs, class_weight, limit_per_class, device, progress, head_c)
    spec, pol, resolved, out_dir = prep.spec, prep.policy, prep.resolved, prep.out_dir
    train_part, val, expanded = prep.train_part, prep.val, prep.expanded
    record_file = results.record_path(out_dir, step, seed, split_seed)  # fresh: never an existing record
    fit = train.fit(expanded, val, resolved["config"], seed=seed, views=views, checkpoint_dir=prep.checkpoint_dir,
                    progress=progress)
    record = {
        "schema": results.SCHEMA_VERSION, "step": step, "title": spec.get("title", step), "policy": pol.name,
        "seed": seed, "split_seed": split_seed, "source": str(source), "labels": labels,
        "data_origin": data.source_origin(source),
        "created": dt.datetime.now().isoformat(timespec="microseconds"),
        "profile": resolved["profile"], "profile_requested": profile, "mode": fit.mode,
        "backbone": resolved["config"]["backbone"], "device": fit.device,
        "config": resolved["config"], "notes": resolved["notes"] + fit.notes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__},
        "limit_per_class": resolved.get("limit_per_class"),
        "class_names": list(val.class_names), "train_counts": expanded.counts(),
        "train_counts_before_expansion": train_part.counts(), "val_counts": val.counts(),
        "metrics": metrics.evaluate(val.labels, fit.val_logits, val.class_names),
        "metrics_last_epoch": None if fit.last_logits is None else
        metrics.evaluate(val.labels, fit.last_logits, val.class_names),
        "predictions": {"names": val.names, "labels": val.labels.tolist(),
                        "logits": np.round(fit.val_logits, 6).tolist()},
        "view_logits": {v: np.round(x, 6).tolist() for v, x in fit.view_logits.items()},
        "history": fit.history, "timings": fit.timings,
    }
    if analyse:
        if "feature_values" not in val.cache:  # the same validation images in every step and seed
            val.cache["feature_values"] = sensitivity.compute_features(val.images)
        analysis = sensitivity.analyse(
            "image_classification", out_dir / "analysis" / record_file.stem, fit.val_logits, val.labels,
            val.names, images=val.images, class_names=val.class_names, feature_values=val.cache["feature_values"])
        record["sensitivity"] = analysis["sensitivity"]
        record["feature_values"] = analysis["feature_values"]
    record["wall_seconds"] = time.perf_counter() - t0
    record["_path"] = str(results.save_record(record, out_dir, record_file))
    _PREDICTORS[record["_path"]] = _predictor(fit, resolved["config"])
    while len(_PREDICTORS) > KEEP_MODELS:  # oldest first: a kernel does not hold every model it trained
        _PREDICTORS.pop(next(iter(_PREDICTORS)))
    return record


SWEEP_LEVELS = {"brightness": (0.6, 0.8, 1.0, 1.2, 1.4), "clarity": (0.0, 0.5, 1.0, 2.0, 3.0)}


def sweeps(record: dict, val: data.Dataset, n_images: int = 200, seed: int = 0,
           levels: dict[str, Sequence[float]] | None = None) -> dict[str, dict]:
    """Brightness and clarity sweeps of a record's model on a seeded, class-stratified subset of ``val``;
    also written to ``<results>/analysis/<record>/sweeps.json``."""
    if n_images <= 0:
        return {}
    rng = np.random.default_rng(seed)
    per_class = max(1, n_images // len(val.class_names))
    idx = np.sort(np.concatenate(data.pick_per_class(val.labels, per_class, rng, range(len(val.class_names)))))
    predict = predictor(record)
    out = {op: sensitivity.sweep(predict, val.images[idx], val.labels[idx], op, lv, val.class_names)
           for op, lv in (levels or SWEEP_LEVELS).items()}
    path = Path(record["_path"])
    results.atomic_write_json(path.parents[1] / "analysis" / path.stem / "sweeps.json",
                              {"images": [val.names[i] for i in idx], "sweeps": out})
    return out


def load_records_for_analysis(results_dir: str | os.PathLike) -> list[dict]:
    """All newest records in ``results_dir`` for 05; a clear error when 01-04 have not run there."""
    folder = resolve_results_dir(results_dir)
    found = results.load_records(folder)
    present = {r["step"] for r in found}
    if "01_baseline" not in present:
        raise FileNotFoundError(f"no 01_baseline record in {folder}: run 01-04 with RESULTS_DIR={str(folder)!r} "
                                "before 05")
    data_of = lambda r: (r.get("data_origin", r.get("source", "elpv")), r.get("labels", "study"))  # noqa: E731
    main = data_of(max((r for r in found if r["step"] == "01_baseline"), key=lambda r: r["created"]))
    others = sorted({data_of(r) for r in found} - {main})
    if others:
        left = [r for r in found if data_of(r) != main]
        print(f"note: {len(left)} record(s) in {folder} come from other data ({'; '.join(map(str, others))}) and are "
              f"left out: this analysis covers {main[0]} ({main[1]} labels) only")
        found = [r for r in found if data_of(r) == main]
    missing = [s for s in STUDY_STEPS if s not in present]
    if missing:
        print(f"note: steps without records in {folder}: {', '.join(missing)}")
    return found


def validation_split(record: dict) -> data.Dataset:
    """The validation images a record was evaluated on (reloaded from its source and split seed)."""
    source = record.get("source", "elpv")
    if data.is_pack(source) and not Path(source).is_file() and record.get("data_origin") == "elpv":
        source = "elpv"  # a pack of ELPV made elsewhere (e.g. on a GPU server): the same images, bit for bit
    _, val = load_split(source, record.get("labels", "study"), record["split_seed"], record.get("limit_per_class"))
    if val.names != record["predictions"]["names"]:
        raise ValueError(f"the validation images of {record.get('_path', record['step'])} cannot be rebuilt "
                         "from its source and split seed")
    return val


def predictor(record: dict) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> logits`` of the model that produced ``record`` in this process (for sweeps)."""
    try:
        return _PREDICTORS[record["_path"]]
    except KeyError:
        name = record.get("_path", record.get("step"))
        raise KeyError(f"the model of {name} is not in memory (the kit keeps the {KEEP_MODELS} most recent): "
                       "records keep predictions, not weights; sweep a recent run") from None


def load_step_records(results_dir: str | os.PathLike, steps: Sequence[str]) -> list[dict]:
    """The newest records of ``steps`` in ``results_dir``; says which steps are missing instead of failing."""
    try:
        found = results.load_records(resolve_results_dir(results_dir), list(steps))
    except FileNotFoundError:
        found = []
    missing = sorted(set(steps) - {r["step"] for r in found})
    if missing:
        print(f"note: no records yet for {', '.join(missing)} in {results_dir}: run those notebooks to compare")
    return found


def _predictor(fit: train.FitResult, cfg: dict) -> Callable[[np.ndarray], np.ndarray]:
    if fit.mode == "top":
        from . import top

        full_cfg = train.check_config(cfg)
        return lambda images: top.predict_images(fit.model, images, full_cfg)
    if fit.mode == "probe":
        from . import features

        def predict(images: np.ndarray) -> np.ndarray:
            x = features.extract(images, cfg["backbone"], cfg["input_size"], cfg["crop_fraction"], cfg.get(
                "weights", "imagenet"), device=cfg.get("device", "auto"), progress=False)
            with torch.no_grad():
                return fit.model(torch.from_numpy(x)).numpy().astype(np.float64)
        return predict
    dev = next(fit.model.parameters()).device
    full_cfg = train.check_config(cfg)
    return lambda images: train.predict(fit.model, torch.from_numpy(images).to(dev), full_cfg,
                                        use_amp=dev.type == "cuda" and full_cfg["amp"])


@dataclass
class Settings:
    """What a notebook's parameters cell resolves to (0 and "" mean "the profile's default")."""

    profile: str = "auto"
    backbone: str | None = None
    input_size: int | None = None
    epochs: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seeds: list[int] = field(default_factory=lambda: [0])
    limit_per_class: int | None = None
    source: str = "elpv"
    labels: str = "study"
    results_dir: Path = field(default_factory=resolve_results_dir)
    progress: bool = True
    resolved: dict = field(default_factory=dict)

    @classmethod
    def from_parameters(cls, profile: str = "auto", backbone: str = "", input_size: int = 0, epochs: int = 0,
                        seeds: int = 0, seed: int = 0, split_seed: int = 0, splits: int = 1,
                        limit_per_class: int = 0, data: str = "elpv", labels: str = "study", results_dir: str = "",
                        progress: bool = True) -> Settings:
        """Check and resolve notebook parameters; errors name the parameter.

        ``seeds=0`` takes the profile's default number of seeds; ``splits`` > 1 repeats every step on
        that many study-style splits (split seeds ``split_seed``, ``split_seed + 1``, ...).
        """
        for name, value, low in (("SEEDS", seeds, 0), ("SPLITS", splits, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        check_label_policy(labels)
        if data != "elpv" and not Path(data).expanduser().is_dir() \
                and not (data.endswith(".fsfslpack") and Path(data).expanduser().is_file()):
            raise FileNotFoundError(f"DATA must be 'elpv', a .fsfslpack file or an ImageFolder folder; "
                                    f"{data!r} is neither")
        set_progress(progress)
        settings = cls(profile=profile, backbone=backbone or None, input_size=input_size or None,
                       epochs=epochs or None, split_seeds=list(range(split_seed, split_seed + splits)),
                       limit_per_class=limit_per_class or None, source=data, labels=labels,
                       results_dir=resolve_results_dir(results_dir), progress=progress)
        settings.resolved = profiles.resolve(profile, backbone=settings.backbone, input_size=settings.input_size,
                                             epochs=settings.epochs, limit_per_class=settings.limit_per_class,
                                             seeds=seeds or None)
        settings.seeds = list(range(seed, seed + settings.resolved["seeds"]))
        results.ensure_writable_dir(settings.results_dir, "RESULTS_DIR")
        return settings

    def describe(self) -> str:
        return "\n".join([profiles.describe(self.resolved), f"seeds: {self.seeds}; split seeds: {self.split_seeds}",
                          f"data: {self.source} ({self.labels} labels)", f"results: {self.results_dir}"])

    def load_split(self, split_seed: int | None = None) -> tuple[data.Dataset, data.Dataset]:
        split_seed = self.split_seeds[0] if split_seed is None else split_seed
        return load_split(self.source, self.labels, split_seed, self.resolved.get("limit_per_class"))

    def step_calls(self, step: str, **overrides) -> list[tuple[str, dict]]:
        """The ``run_step`` calls of ``step``, one per split and seed: ``(step, keyword arguments)``."""
        kw = {"profile": self.profile, "results_dir": self.results_dir,
              "source": self.source, "labels": self.labels, "backbone": self.backbone,
              "input_size": self.input_size, "epochs": self.epochs, "limit_per_class": self.limit_per_class,
              "progress": self.progress}
        kw.update(overrides)
        return [(step, {**kw, "seed": s, "split_seed": j}) for j in self.split_seeds for s in self.seeds]

    def run(self, step: str, **overrides) -> list[dict]:
        """Run ``step`` once per split and seed; returns the records.

        Probe: the head's regularisation strength is chosen by cross-validation on the first seed's
        training part of each split and reused for that split's other seeds (their history says
        ``C_from: given in head_cs``): the choice costs seconds, a fit with a given strength under one."""
        records, chosen = [], {}
        for name, kw in self.step_calls(step, **overrides):
            c = chosen.get(kw["split_seed"])
            record = run_step(name, **kw, **({"head_c": c} if c is not None else {}))
            if record["mode"] == "probe" and c is None:
                chosen[kw["split_seed"]] = record["history"][0]["C"]
            records.append(record)
        return records

    def run_controls(self) -> list[dict]:
        """The science-control arms (plain-copy oversampling, class-weighted loss), every seed."""
        return [r for step in CONTROL_STEPS for r in self.run(step)]
