"""One study step end to end: load, split, expand, train, evaluate, analyse, record.

A step's training is one :class:`StepSpec` (frozen: everything that decides its record); the
images come from a :class:`DataStore` (decoded once, owned by whoever made it, usually the
notebook's :class:`Settings`). What a notebook calls in one line::

    run = experiment.run_step("02_flip", profile="cpu", seed=0, results_dir=RUNS)
    run.record, run.fit  # the record written under RUNS/records/, and the trained model

Notebook 01 makes the same calls one by one (split, expand, fit, evaluate, analyse, record).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

from . import augment, data, io, metrics, profiles, results, sensitivity, train
from .config import TrainConfig
from .study import CONTROL_STEPS, STEPS, STUDY_RESULTS, STUDY_STEPS, class_roles  # noqa: F401  (re-exported)

DEFAULT_VIEWS = augment.DEFAULT_VIEWS  # test-time views whose logits a record keeps (TTA in 05)



def source_version() -> dict:
    """The kit's version and, when it runs from a git checkout, its commit (``+dirty`` with uncommitted
    changes to tracked files): the provenance report.html prints in its footer."""
    out = {"fsfsl": importlib.metadata.version("fsfsl")}
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "fsfsl_utils"],
                               capture_output=True, timeout=10).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return out
    return out | {"commit": commit + ("+dirty" if dirty else "")}

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


class DataStore:
    """The data sets a session has decoded and split: each source is decoded once, and each split
    made once, for as long as this object lives (a notebook's :class:`Settings` holds one)."""

    def __init__(self) -> None:
        self._sources: dict[tuple, data.Dataset] = {}
        self._splits: dict[tuple, tuple[data.Dataset, data.Dataset]] = {}

    def split(self, source: str = "elpv", labels: str = "study", split_seed: int = 0,
              limit_per_class: int | None = None, image_size: int = 300,
              split_kind: str = "random", label_fraction: float = 1.0) -> tuple[data.Dataset, data.Dataset]:
        """(train, val) for ELPV (the study's split), a pack file or an ImageFolder path.
        ``limit_per_class`` keeps a subset drawn with the split seed (smoke runs); ``split_kind``:
        ``random`` (the study's) or ``grouped`` (no module on both sides, :func:`fsfsl_utils.data.split`)."""
        base_key = (str(source), labels, image_size)
        if base_key not in self._sources:
            self._sources[base_key] = data.load_source(source, labels, image_size)
        key = (*base_key, split_seed, limit_per_class, split_kind, label_fraction)
        if key not in self._splits:
            ds = self._sources[base_key]
            if limit_per_class:  # the hard-labelled images picked as without soft ones, the soft ones apart
                classes = range(len(ds.class_names))
                soft = ds.meta["soft"].notna().to_numpy() if "soft" in ds.meta else np.zeros(len(ds), bool)
                hard = np.flatnonzero(~soft)
                keep = [hard[np.concatenate(data.pick_per_class(ds.labels[hard], limit_per_class,
                                                                np.random.default_rng(split_seed), classes))]]
                if soft.any():
                    unsure = np.flatnonzero(soft)
                    keep.append(unsure[np.concatenate(data.pick_per_class(
                        ds.labels[unsure], limit_per_class, np.random.default_rng([split_seed, 1]), classes))])
                ds = ds.subset(np.sort(np.concatenate(keep)))
            train, val = data.split(ds, seed=split_seed, kind=split_kind)
            self._splits[key] = data.label_subset(train, label_fraction, split_seed), val
        return self._splits[key]


def load_split(source: str = "elpv", labels: str = "study", split_seed: int = 0,
               limit_per_class: int | None = None, image_size: int = 300) -> tuple[data.Dataset, data.Dataset]:
    """(train, val), decoded afresh (a :class:`DataStore` keeps them for reuse)."""
    return DataStore().split(source, labels, split_seed, limit_per_class, image_size)


@dataclass(frozen=True)
class StepSpec:
    """One training of the study: the step, its policy and seeds, the data, and the training config.
    Everything its record depends on, and nothing else (no images, no paths)."""

    step: str
    policy: str
    config: TrainConfig
    seed: int = 0
    split_seed: int = 0
    source: str = "elpv"
    labels: str = "study"
    limit_per_class: int | None = None
    profile: str = "cpu"  # the profile resolved to
    profile_requested: str = "auto"
    notes: tuple[str, ...] = ()  # why the profile resolved as it did
    target_class: str | None = None  # the class whose recall matters most; None: the rule of study.class_roles
    split_kind: str = "random"  # "random" (the study's split) or "grouped" (no module on both sides)
    label_fraction: float = 1.0  # a learning curve's share of each class's training images (nested subsets)

    @classmethod
    def build(cls, step: str, profile: str = "auto", seed: int = 0, split_seed: int = 0, source: str = "elpv",
              labels: str = "study", policy: str | None = None, limit_per_class: int | None = None,
              target_class: str | None = None, split_kind: str = "random", label_fraction: float = 1.0,
              **config: object) -> StepSpec:
        """The spec of ``step`` (its policy and class weighting from :data:`STEPS`) under ``profile``;
        ``config``: :class:`~fsfsl_utils.config.TrainConfig` fields that override the profile's
        (None: the profile's value)."""
        spec = STEPS.get(step, {})
        policy = policy or spec.get("policy")
        if policy is None:
            raise ValueError(f"step {step!r} is not one of {', '.join(STEPS)}: pass policy= explicitly")
        augment.get_policy(policy)
        config.setdefault("class_weight", spec.get("class_weight"))
        resolved = profiles.resolve(profile, limit_per_class=limit_per_class, **config)
        return cls(step, policy, resolved["config"], seed, split_seed, str(source), labels,
                   resolved.get("limit_per_class"), resolved["profile"], profile, tuple(resolved["notes"]),
                   target_class or None, split_kind, float(label_fraction))

    @property
    def checkpointed(self) -> bool:
        """Whether its training writes checkpoints (and a rerun resumes): the paper profile's fine-tunings do."""
        return checkpointed(self.profile)

    def checkpoint_dir(self, results_dir: Path) -> Path | None:
        return results_dir / "checkpoints" / results.run_tag(self.step, self.seed, self.split_seed) \
            if self.checkpointed else None

    def replace(self, **changes: object) -> StepSpec:
        return dataclasses.replace(self, **changes)


def checkpointed(profile: str) -> bool:
    """Whether a (resolved) profile's trainings write checkpoints: the paper profile's fine-tunings do."""
    return profile == "paper"


@dataclass
class StepRun:
    """What running a step made: its record (``record["_path"]``: where it was written), the trained
    model with its validation logits (``fit``), and the validation images (``val``)."""

    record: dict
    fit: train.FitResult
    val: data.Dataset
    spec: StepSpec


def _spec_of(spec: StepSpec | str, spec_args: dict) -> StepSpec:
    if isinstance(spec, StepSpec):
        if spec_args:
            raise TypeError(f"pass either a StepSpec or a step name with arguments, not both ({sorted(spec_args)})")
        return spec
    return StepSpec.build(spec, **spec_args)


def expand(spec: StepSpec, train_part: data.Dataset, progress: bool | None = None) -> data.Dataset:
    """The training part expanded by the step's policy (offline augmented copies, seeded by the spec)."""
    return augment.expand(train_part, spec.policy, seed=spec.seed, progress=progress, target_class=spec.target_class)


def analyse(spec: StepSpec, fit: train.FitResult, val: data.Dataset, results_dir: Path) -> dict:
    """The sensitivity analysis of a step's validation predictions (ModelArts ``analyse()``): feature
    values (computed once per validation set) and per-bin scores, written to
    ``results_dir/analysis/<the name its record will get>/``."""
    values = val.derived("feature_values", lambda: sensitivity.compute_features(val.images))
    record_name = results.record_path(results_dir, spec.step, spec.seed, spec.split_seed).stem  # the record to come
    folder = results_dir / "analysis" / record_name
    return sensitivity.analyse("image_classification", folder, fit.val_logits, val.labels, val.names,
                               images=val.images, class_names=val.class_names, feature_values=values)


def make_record(spec: StepSpec, train_part: data.Dataset, expanded: data.Dataset, val: data.Dataset,
                fit: train.FitResult, analysis: dict | None = None) -> dict:
    """A step's run record: what was trained on what, its validation scores and per-image logits."""
    target, reference = class_roles(train_part.class_names, train_part.counts(), spec.target_class)
    record = {
        "schema": results.SCHEMA_VERSION, "step": spec.step, "title": STEPS.get(spec.step, {}).get("title", spec.step),
        "policy": augment.get_policy(spec.policy).name, "seed": spec.seed, "split_seed": spec.split_seed,
        "source": spec.source, "labels": spec.labels, "data_origin": data.source_origin(spec.source),
        "created": dt.datetime.now().isoformat(timespec="microseconds"),
        "profile": spec.profile, "profile_requested": spec.profile_requested, "mode": fit.mode,
        "backbone": spec.config.backbone, "device": fit.device,
        "config": spec.config.as_dict(), "notes": list(spec.notes) + fit.notes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "numpy": np.__version__, **source_version()},
        "limit_per_class": spec.limit_per_class,
        "class_names": list(val.class_names), "target_class": target, "reference_class": reference,
        "target_class_requested": spec.target_class, "split_kind": spec.split_kind,
        **({"label_fraction": spec.label_fraction} if spec.label_fraction != 1.0 else {}),
        "train_counts": expanded.counts(),
        "train_counts_before_expansion": train_part.counts(), "val_counts": val.counts(),
        "metrics": metrics.evaluate(val.labels, fit.val_logits, val.class_names),
        "metrics_last_epoch": None if fit.last_logits is None else
        metrics.evaluate(val.labels, fit.last_logits, val.class_names),
        "predictions": {"names": val.names, "labels": val.labels.tolist(),
                        "logits": np.round(fit.val_logits, 6).tolist()},
        "predictions_last_epoch": None if fit.last_logits is None else
        {"names": val.names, "labels": val.labels.tolist(), "logits": np.round(fit.last_logits, 6).tolist()},
        "view_logits": {v: np.round(x, 6).tolist() for v, x in fit.view_logits.items()},
        "history": fit.history, "timings": fit.timings,
    }
    if analysis is not None:
        record["sensitivity"] = analysis["sensitivity"]
        record["feature_values"] = analysis["feature_values"]
    return record


DEFAULT_REQUIREMENT = "recall 0.95"  # the operating point a kept model is given: 95% of the target class caught
THRESHOLD_FOLDS = profiles.THRESHOLD_FOLDS  # folds of the training part that choose it (0: no operating point)


def model_folder(results_dir: Path, spec: StepSpec) -> Path:
    """Where the kept model of a step goes: ``<results>/models/<step>`` (``-split<j>`` for other splits),
    ``-v2``, ``-v3`` ... when that exists (a kept model is never overwritten)."""
    base = results_dir / "models" / (spec.step if spec.split_seed == 0 else f"{spec.step}-split{spec.split_seed}")
    return next(p for p in (base, *(base.with_name(f"{base.name}-v{k}") for k in range(2, 1000))) if not p.exists())


def keep_model(spec: StepSpec, train_part: data.Dataset, val: data.Dataset, fit: train.FitResult, record: dict,
               results_dir: Path, requirement: str = DEFAULT_REQUIREMENT, folds: int = THRESHOLD_FOLDS,
               progress: bool | None = None) -> dict:
    """Save a training's model (:mod:`fsfsl_utils.deploy`) with an operating point chosen without
    peeking: the threshold that meets ``requirement`` on out-of-fold scores of the training part
    (``folds`` folds grouped by source image, each trained as this step was; for the probe with the
    regularisation this training chose), read once on the validation images (both recalls, intervals
    clustered by module), beside the optimistic threshold read off the validation images themselves.
    ``record`` gets ``model`` (the folder, relative to ``results_dir``) and ``operating_point``."""
    from .deploy import bundle, operating

    need = operating.parse_requirement(requirement)
    names = val.class_names
    target, reference = names.index(record["target_class"]), names.index(record["reference_class"])
    groups = np.asarray(data.elpv_module_groups(val.names)) if data.source_origin(spec.source) == "elpv" else None
    val_scores = operating.target_scores(fit.last_logits if fit.last_logits is not None else fit.val_logits, target)
    optimistic = operating.threshold_for(val.labels, val_scores, target, reference, need)
    point = {"requirement": str(need), "in_words": need.words(names[target], names[reference]),
             "optimistic": {"threshold": optimistic, "chosen_on": "the validation images themselves (optimistic)",
                            "validation": operating.reading(val.labels, val_scores, optimistic, target, reference,
                                                            groups)}}
    if folds:
        cfg = spec.config
        if fit.mode == "probe" and fit.history and "C" in fit.history[0]:
            cfg = cfg.replace(head_cs=(fit.history[0]["C"],))  # the strength this training chose, not a new search
        oof = operating.out_of_fold_scores(train_part, spec.policy, cfg, spec.seed, folds, target, progress)
        threshold = operating.threshold_for(np.asarray(oof["labels"]), np.asarray(oof["scores"]), target,
                                            reference, need)
        point.update({"threshold": threshold, "chosen_on": f"the training part, {oof['folds']}-fold cross-validation "
                      "grouped by source image (no validation image seen)", "folds": oof["folds"],
                      "validation": operating.reading(val.labels, val_scores, threshold, target, reference, groups)})
    model = bundle.from_fit(fit, spec.config, names, record["target_class"], record["reference_class"],
                            "L" if val.images.ndim == 3 else "RGB", record, train_part.names,
                            point if folds else None)
    folder = bundle.save(model, model_folder(results_dir, spec))
    record["model"] = str(folder.relative_to(results_dir))
    record["operating_point"] = point
    return record


def save_record(record: dict, spec: StepSpec, results_dir: Path, started: float | None = None) -> dict:
    """Write ``record`` under ``results_dir/records/`` (a new file, never over an existing one);
    ``started``: its ``time.perf_counter()`` start, for ``wall_seconds``. Returns it with ``_path``."""
    if started is not None:
        record["wall_seconds"] = time.perf_counter() - started
    path = results.record_path(results_dir, spec.step, spec.seed, spec.split_seed)
    record["_path"] = str(results.save_record(record, results_dir, path))
    return record


def run_step(spec: StepSpec | str, results_dir: str | os.PathLike | None = None, *, store: DataStore | None = None,
             progress: bool | None = None, analyse_images: bool = True, views: Sequence[str] = DEFAULT_VIEWS,
             ran_on: dict | None = None, keep: dict | None = None, **spec_args: object) -> StepRun:
    """Run one study step and write its record: split, expand, fit, evaluate and analyse, record.

    ``spec``: a :class:`StepSpec`, or a step name with :meth:`StepSpec.build`'s arguments
    (``profile=``, ``seed=``, ``epochs=``, ...). ``store``: where the images come from (a new
    one decodes them). ``views``: test-time views whose logits the record keeps. ``ran_on``: where
    it ran (backend, node, GPU), kept in the record. ``keep``: save the model too
    (:func:`keep_model`'s ``requirement`` and ``folds``; ``{}`` for its defaults)."""
    started = time.perf_counter()
    spec = _spec_of(spec, spec_args)
    out_dir = io.ensure_writable_dir(resolve_results_dir(results_dir))
    train_part, val = (store or DataStore()).split(spec.source, spec.labels, spec.split_seed, spec.limit_per_class,
                                                   split_kind=spec.split_kind, label_fraction=spec.label_fraction)
    expanded = expand(spec, train_part, progress)
    fit = train.fit(expanded, val, spec.config, seed=spec.seed, views=views,
                    checkpoint_dir=spec.checkpoint_dir(out_dir), progress=progress)
    analysis = analyse(spec, fit, val, out_dir) if analyse_images else None
    record = make_record(spec, train_part, expanded, val, fit, analysis)
    if ran_on is not None:
        record["ran_on"] = ran_on
    if keep is not None:
        keep_model(spec, train_part, val, fit, record, out_dir, progress=progress, **keep)
    record = save_record(record, spec, out_dir, started)
    return StepRun(record, fit, val, spec)


def train_ahead(specs: Sequence[StepSpec], results_dir: str | os.PathLike, store: DataStore | None = None,
                progress: bool | None = None, pack: int = 1) -> int:
    """Fine-tune the trainings of ``specs`` all at once (:func:`fsfsl_utils.train.fit_many`: one CUDA
    stream each, each result as if alone; ``pack`` > 1: up to that many seeds of one arm as one packed
    network, :mod:`fsfsl_utils.train.packed`) into their checkpoint folders; :func:`run_step` then
    resumes from the finished checkpoints and only predicts and records. Only checkpointed
    (paper-profile) trainings are done ahead; returns how many."""
    jobs = ahead_jobs(specs, results_dir, store, progress)
    train.fit_many(jobs, progress=progress, pack=pack)
    return len(jobs)


def ahead_jobs(specs: Sequence[StepSpec], results_dir: str | os.PathLike, store: DataStore | None = None,
               progress: bool | None = None) -> list[dict]:
    """:func:`fsfsl_utils.train.fit_many` jobs of the checkpointed trainings among ``specs`` (their
    data split and expanded, their checkpoint folders under ``results_dir``), as :func:`train_ahead` runs them."""
    out_dir = io.ensure_writable_dir(resolve_results_dir(results_dir))
    store = store or DataStore()
    jobs = []
    for spec in (s for s in specs if s.checkpointed):
        train_part, val = store.split(spec.source, spec.labels, spec.split_seed, spec.limit_per_class,
                                      split_kind=spec.split_kind, label_fraction=spec.label_fraction)
        jobs.append({"train": expand(spec, train_part, progress), "val": val, "config": spec.config,
                     "seed": spec.seed, "views": (), "checkpoint_dir": spec.checkpoint_dir(out_dir)})
    return jobs


SWEEP_LEVELS = {"brightness": (0.6, 0.8, 1.0, 1.2, 1.4), "clarity": (0.0, 0.5, 1.0, 2.0, 3.0)}


def sweeps(record: dict, fit: train.FitResult, val: data.Dataset, n_images: int = 200, seed: int = 0,
           levels: dict[str, Sequence[float]] | None = None) -> dict[str, dict]:
    """Brightness and clarity sweeps of a trained model (``fit``, which wrote ``record``) on a seeded,
    class-stratified subset of its validation images ``val``; also written to
    ``<results>/analysis/<record>/sweeps.json``."""
    if n_images <= 0:
        return {}
    rng = np.random.default_rng(seed)
    per_class = max(1, n_images // len(val.class_names))
    idx = np.sort(np.concatenate(data.pick_per_class(val.labels, per_class, rng, range(len(val.class_names)))))
    predict = predictor(fit, TrainConfig.from_dict(record["config"]))
    out = {op: sensitivity.sweep(predict, val.images[idx], val.labels[idx], op, lv, val.class_names)
           for op, lv in (levels or SWEEP_LEVELS).items()}
    path = Path(record["_path"])
    io.atomic_write_json(path.parents[1] / "analysis" / path.stem / "sweeps.json",
                              {"images": [val.names[i] for i in idx], "sweeps": out})
    return out


def load_records_for_analysis(results_dir: str | os.PathLike) -> list[dict]:
    """All newest records in ``results_dir`` for 05, whichever steps ran (what is missing is said, and
    :func:`fsfsl_utils.report.not_analysed` says what that leaves out); a clear error when none did."""
    folder = resolve_results_dir(results_dir)
    try:
        found = results.load_records(folder)
    except FileNotFoundError:
        raise FileNotFoundError(f"no run records in {folder}: run the training notebooks (01-04) first, with "
                                f"RESULTS_DIR={str(folder)!r}") from None
    # soft labels add ELPV's unsure cells to training only: the same validation images as the study's labels
    data_of = lambda r: (r.get("data_origin", r.get("source", "elpv")),  # noqa: E731
                         {"soft": "study"}.get(r.get("labels", "study"), r.get("labels", "study")))
    anchor = [r for r in found if r["step"] == "01_baseline"] or found
    main = data_of(max(anchor, key=lambda r: r["created"]))
    others = sorted({data_of(r) for r in found} - {main})
    if others:
        left = [r for r in found if data_of(r) != main]
        print(f"note: {len(left)} record(s) in {folder} come from other data ({'; '.join(map(str, others))}) and are "
              f"left out: this analysis covers {main[0]} ({main[1]} labels) only")
        found = [r for r in found if data_of(r) == main]
    present = {r["step"] for r in found}
    missing = [s for s in STUDY_STEPS if s not in present]
    if missing:
        print(f"note: steps without records in {folder}: {', '.join(missing)}")
    return found


def validation_split(record: dict, store: DataStore | None = None) -> data.Dataset:
    """The validation images a record was evaluated on (reloaded from its source and split seed)."""
    source = record.get("source", "elpv")
    if data.is_pack(source) and not Path(source).is_file() and record.get("data_origin") == "elpv":
        source = "elpv"  # a pack of ELPV made elsewhere (e.g. on a GPU server): the same images, bit for bit
    _, val = (store or DataStore()).split(source, record.get("labels", "study"), record["split_seed"],
                                          record.get("limit_per_class"), split_kind=record.get("split_kind", "random"))
    if val.names != record["predictions"]["names"]:
        raise ValueError(f"the validation images of {record.get('_path', record['step'])} cannot be rebuilt "
                         "from its source and split seed")
    return val


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


def predictor(fit: train.FitResult, cfg: TrainConfig) -> Callable[[np.ndarray], np.ndarray]:
    """``images -> logits`` of a trained model, through the same path its validation logits took."""
    if fit.mode == "top":
        from .train import top

        return lambda images: top.predict_images(fit.model, images, cfg)
    if fit.mode == "probe":
        from . import features

        def predict(images: np.ndarray) -> np.ndarray:
            x = features.extract(images, cfg.backbone, cfg.input_size, cfg.crop_fraction, cfg.weights,
                                 device=cfg.device, progress=False)
            with torch.no_grad():
                return fit.model(torch.from_numpy(x)).numpy().astype(np.float64)
        return predict
    dev = next(fit.model.parameters()).device
    return lambda images: train.predict(fit.model, torch.from_numpy(images).to(dev), cfg,
                                        use_amp=dev.type == "cuda" and cfg.amp)
