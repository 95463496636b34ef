"""A notebook's session: what its parameters cell resolves to (:class:`Settings`), the trainings it
asks for (:class:`~fsfsl_utils.experiment.StepSpec`, one per step, split and seed), and where they run
(:mod:`fsfsl_utils.runner`: this process or Ray). The top of the study layer: it imports
:mod:`~fsfsl_utils.experiment` and :mod:`~fsfsl_utils.runner`, neither of which imports it."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import data, io, profiles, train
from . import data as data_module
from .config import FIELDS
from .data import check_label_policy
from .deploy.operating import parse_requirement
from .experiment import (
    DEFAULT_REQUIREMENT,
    DEFAULT_VIEWS,
    THRESHOLD_FOLDS,
    DataStore,
    StepSpec,
    keep_model,
    make_record,
    resolve_results_dir,
    save_record,
)
from .progress import set_progress
from .runner import check_backend, make_runner, where
from .study import CONTROL_STEPS, class_roles


@dataclass
class Settings:
    """What a notebook's parameters cell resolves to (0 and "" mean "the profile's default"); it holds
    the notebook's :class:`DataStore` and makes the :class:`StepSpec` of every training."""

    profile: str = "auto"
    overrides: dict = field(default_factory=dict)  # TrainConfig fields the parameters cell set
    seeds: list[int] = field(default_factory=lambda: [0])
    split_seeds: list[int] = field(default_factory=lambda: [0])
    limit_per_class: int | None = None
    source: str = "elpv"
    labels: str = "study"
    results_dir: Path = field(default_factory=resolve_results_dir)
    progress: bool = True
    resolved: dict = field(default_factory=dict)
    backend: str = "local"  # where settings.run trains: "local" (this process) or "ray" (fsfsl_utils.runner)
    ray_address: str = ""  # "": a local Ray cluster
    target_class: str | None = None  # None: the rule of study.class_roles
    split_kind: str = "random"  # or "grouped": no module on both sides
    requirement: str = DEFAULT_REQUIREMENT  # the operating point of the kept models
    threshold_folds: int = THRESHOLD_FOLDS  # 0: kept models get no cross-validated operating point
    store: DataStore = field(default_factory=DataStore, repr=False)
    # probe: per (step, split seed), the C chosen by cross-validation and the seed that chose it
    head_c: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict, repr=False)
    _started: dict[StepSpec, float] = field(default_factory=dict, repr=False)  # when each yielded spec began

    @classmethod
    def from_parameters(cls, profile: str = "auto", backbone: str | None = None, input_size: int | None = None,
                        epochs: int | None = None, seeds: int | None = None, seed: int = 0, split_seed: int = 0,
                        splits: int = 1, limit_per_class: int | None = None, data: str = "elpv",
                        labels: str = "study", results_dir: str = "", progress: bool = True, backend: str = "local",
                        ray_address: str = "", target_class: str = "", split_kind: str = "random",
                        requirement: str = DEFAULT_REQUIREMENT, threshold_folds: int | None = None,
                        config: dict | None = None) -> Settings:
        """Check and resolve notebook parameters (each argument is a parameter's name in lower case);
        errors name the parameter.

        None means the profile's value (``backbone``, ``input_size``, ``epochs``, ``seeds``,
        ``limit_per_class``: all images but in the smoke profile), one rule, applied once by
        :func:`fsfsl_utils.profiles.resolve`; ``splits`` > 1 repeats every step on that many
        study-style splits (split seeds ``split_seed``, ``split_seed + 1``, ...);
        ``target_class``: the class whose recall matters most ("": ``defective`` on ELPV, else the
        smallest class), checked against the data's classes before anything is decoded;
        ``split_kind``: ``random`` (the study's split) or ``grouped`` (no module on both sides);
        ``requirement`` and ``threshold_folds``: the operating point given to the model kept of each
        step (its first seed; :func:`keep_model`; ``threshold_folds`` None: the profile's, 3, smoke 0);
        ``config``: any :class:`~fsfsl_utils.config.TrainConfig` fields, over the profile's and the
        arguments above (e.g. ``{"weight_decay": 1e-4, "lr_schedule": "cosine"}``); every record keeps
        the whole config it trained with.
        """
        config = check_config_parameter(config)
        for name, value in (("SEEDS", seeds), ("SPLITS", splits), ("LIMIT_PER_CLASS", limit_per_class)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1 (None: the profile's), got {value!r}")
        check_label_policy(labels)
        check_backend(backend)
        if data != "elpv" and not Path(data).expanduser().is_dir() \
                and not (data.endswith(".fsfslpack") and Path(data).expanduser().is_file()):
            raise FileNotFoundError(f"DATA must be 'elpv', a .fsfslpack file or an ImageFolder folder; "
                                    f"{data!r} is neither")
        if target_class:
            class_roles(data_module.class_names_of(data, labels), target=target_class)
        if split_kind not in data_module.SPLIT_KINDS:
            raise ValueError(f"SPLIT_KIND must be one of {', '.join(data_module.SPLIT_KINDS)}, got {split_kind!r}")
        parse_requirement(requirement)
        if threshold_folds is not None and (not isinstance(threshold_folds, int) or isinstance(threshold_folds, bool)
                                            or not 0 <= threshold_folds <= 20):
            raise ValueError(f"THRESHOLD_FOLDS must be a whole number in [0, 20], got {threshold_folds!r}")
        set_progress(progress)
        overrides = {"backbone": backbone, "input_size": input_size, "epochs": epochs, **config}
        settings = cls(profile=profile, overrides=overrides, split_seeds=list(range(split_seed, split_seed + splits)),
                       limit_per_class=limit_per_class, source=data, labels=labels,
                       results_dir=resolve_results_dir(results_dir), progress=progress, backend=backend,
                       ray_address=ray_address, target_class=target_class or None, split_kind=split_kind,
                       requirement=requirement)
        try:
            settings.resolved = profiles.resolve(profile, limit_per_class=settings.limit_per_class,
                                                 seeds=seeds, **overrides)
        except ValueError as err:
            named = next((k for k in config if k in str(err)), None)
            raise ValueError(f"CONFIG {named}: {err}" if named else str(err)) from None
        settings.seeds = list(range(seed, seed + settings.resolved["seeds"]))
        settings.threshold_folds = settings.resolved["threshold_folds"] if threshold_folds is None else threshold_folds
        io.ensure_writable_dir(settings.results_dir, "RESULTS_DIR")
        return settings

    def describe(self) -> str:
        where = "this process" if self.backend == "local" else f"Ray ({self.ray_address or 'a local cluster'})"
        return "\n".join([profiles.describe(self.resolved), f"seeds: {self.seeds}; split seeds: {self.split_seeds}",
                          f"data: {self.source} ({self.labels_in_words()}, {self.split_kind} split)",
                          f"results: {self.results_dir}",
                          f"trainings run in: {where}"])

    def labels_in_words(self) -> str:
        """``study labels`` on ELPV; on other data, labels from the folders or the pack."""
        return f"{self.labels} labels" if data.source_origin(self.source) == "elpv" else \
            "labels from the data's class folders"

    def load_split(self, split_seed: int | None = None) -> tuple[data.Dataset, data.Dataset]:
        split_seed = self.split_seeds[0] if split_seed is None else split_seed
        return self.store.split(self.source, self.labels, split_seed, self.resolved.get("limit_per_class"),
                                split_kind=self.split_kind)

    def specs(self, step: str, seeds: Sequence[int] | None = None, labels: str | None = None,
              policy: str | None = None, label_fraction: float = 1.0, **config: object) -> Iterator[StepSpec]:
        """The trainings of ``step``, one per split and seed, yielded one at a time (``config``:
        TrainConfig fields to change; ``labels``: another label policy than the notebook's, e.g.
        ``soft``; ``policy``: the offline augmentation of a step that :data:`~fsfsl_utils.study.STEPS`
        does not list; ``label_fraction``: a learning curve's share of the training images).

        Probe: the head's regularisation strength chosen by cross-validation on a split's first seed
        (when its record is written) is given to that split's later seeds of the step (their
        history says ``C_from: given in head_cs``): the choice costs seconds, a fit with a given
        strength under one."""
        for j in self.split_seeds:
            for s in self.seeds if seeds is None else seeds:
                spec = StepSpec.build(step, self.profile, s, j, self.source, labels or self.labels, policy,
                                      limit_per_class=self.limit_per_class, target_class=self.target_class,
                                      split_kind=self.split_kind, label_fraction=label_fraction,
                                      **{**self.overrides, **config})
                c, chooser = self.head_c.get((step, j), (None, None))
                if c is not None and s != chooser and spec.config.mode == "probe" and "head_cs" not in config:
                    spec = spec.replace(config=spec.config.replace(head_cs=(c,)))
                self._started[spec] = time.perf_counter()
                yield spec

    def record(self, spec: StepSpec, train_part: data.Dataset, expanded: data.Dataset, val: data.Dataset,
               fit: train.FitResult, analysis: dict | None = None) -> dict:
        """Write the record of one of :meth:`specs`'s trainings into this notebook's results folder; the
        first seed's model is kept beside it (:func:`keep_model`: ``models/<step>``), as :meth:`run` does."""
        record = make_record(spec, train_part, expanded, val, fit, analysis)
        record["ran_on"] = {"backend": "local", **where()}
        if spec.seed == self.seeds[0] and spec.split_seed == self.split_seeds[0]:
            keep_model(spec, train_part, val, fit, record, self.results_dir, self.requirement, self.threshold_folds,
                       self.progress)
        self._note(record)
        return save_record(record, spec, self.results_dir, self._started.pop(spec, None))

    def run(self, step: str, analyse_images: bool = True, views: Sequence[str] = DEFAULT_VIEWS,
            labels: str | None = None, policy: str | None = None, label_fraction: float = 1.0,
            keep_model: bool = True, **config: object) -> list[dict]:
        """Run ``step`` once per split and seed with this notebook's backend (:mod:`fsfsl_utils.runner`);
        returns the records. A training whose record is already in the results folder is returned, not
        run again (an interrupted study resumes). The first seed of each split runs first: the probe's
        regularisation chosen there is given to the later seeds."""
        runner = make_runner(self.backend, self.ray_address, self.progress, store=self.store)
        chosen = {"labels": labels, "policy": policy, "label_fraction": label_fraction}
        first = list(self.specs(step, seeds=self.seeds[:1], **chosen, **config))
        done = runner.run(first, self.results_dir, analyse_images, views, on_record=self._note,
                          keep=self.keep if keep_model else None)
        rest = list(self.specs(step, seeds=self.seeds[1:], **chosen, **config))
        done += runner.run(rest, self.results_dir, analyse_images, views, on_record=self._note)
        for spec in first + rest:
            self._started.pop(spec, None)
        return sorted(done, key=lambda r: (r["split_seed"], r["seed"]))

    @property
    def keep(self) -> dict:
        """How the first seed's model of each step is kept (:func:`keep_model`'s arguments)."""
        return {"requirement": self.requirement, "folds": self.threshold_folds}

    def _note(self, record: dict) -> None:
        if record["mode"] == "probe":
            if record["history"][0].get("C_from", "").startswith("cross-validation"):
                self.head_c.setdefault((record["step"], record["split_seed"]), (record["history"][0]["C"],
                                                                                 record["seed"]))

    def run_controls(self) -> list[dict]:
        """The science-control arms (plain-copy oversampling, class-weighted loss), every seed."""
        return [r for step in CONTROL_STEPS for r in self.run(step)]


def check_config_parameter(config: object) -> dict:
    """The ``CONFIG`` parameter: a dict of :class:`~fsfsl_utils.config.TrainConfig` field names (None:
    nothing); ValueError naming ``CONFIG`` and listing the valid names otherwise. The values are checked
    by the config itself, once the profile is resolved."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"CONFIG must be a dict of training parameters, e.g. {{'weight_decay': 1e-4}}, "
                         f"got {config!r}")
    unknown = sorted(str(k) for k in config if k not in FIELDS)
    if unknown:
        raise ValueError(f"CONFIG: unknown training parameter(s) {unknown}; valid: {', '.join(FIELDS)}")
    return dict(config)
