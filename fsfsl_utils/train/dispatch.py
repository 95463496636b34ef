"""``fit`` and ``fit_many``: which training a config asks for, and several trainings taking turns."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import torch

from .. import augment, models
from ..config import TrainConfig
from ..data import Dataset
from . import packed
from .common import FitResult
from .loop import finetune, finetune_turns
from .probe import fit_probe
from .top import fit_top


def fit(train: Dataset, val: Dataset, config: TrainConfig | dict | None = None, seed: int = 0,
        views: Sequence[str] = augment.DEFAULT_VIEWS, checkpoint_dir: str | os.PathLike | None = None,
        progress: bool | None = None, on_epoch_end: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train on ``train``, predict ``val`` (and its test-time ``views``); the mode comes from the config.

    ``on_epoch_end(epoch, row)`` (finetune) is called once an epoch's validation is done, which
    runs alongside the next epoch's training (see :class:`Validation`)."""
    cfg = _checked(train, val, config, views)
    if cfg.mode == "probe":
        return fit_probe(train, val, cfg, seed, views, progress)
    if cfg.mode == "top":
        return fit_top(train, val, cfg, seed, views, progress)
    return finetune(train, val, cfg, seed, views, checkpoint_dir, progress, on_epoch_end)


def _checked(train: Dataset, val: Dataset, config: TrainConfig | dict | None, views: Sequence[str]) -> TrainConfig:
    """The filled-in config of a fit, after checking its arguments (ValueError names the problem)."""
    cfg = TrainConfig.from_dict(config)
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"training needs images in both parts, got {len(train)} train and {len(val)} validation")
    augment.check_views(views)
    return cfg


def fit_many(jobs: Sequence[dict], progress: bool | None = None, pack: int = 1) -> list[FitResult]:
    """Several trainings at once: each job is :func:`fit`'s keyword arguments (``train``, ``val``,
    ``config``, ``seed``, ``views``, ``checkpoint_dir``); returns their results in order.

    Fine-tunings take turns step by step, each on its own CUDA stream, so the GPU runs one
    training's small kernels beside another's. Each keeps its own random-number state, so every
    result equals that of :func:`fit` run alone (the same numbers on a CPU; on a GPU up to the
    nondeterminism of its kernels). Probe and top jobs run one after another.

    ``pack`` > 1: up to ``pack`` fine-tunings with the same config and the same numbers of images
    (the seeds of one arm) train as one packed network (:mod:`fsfsl_utils.train.packed`), which then
    takes its turns like one training; each member's result is still its own.
    """
    if not isinstance(pack, int) or isinstance(pack, bool) or pack < 1:
        raise ValueError(f"pack must be a whole number >= 1 (trainings per packed network), got {pack!r}")
    results: list[FitResult | None] = [None] * len(jobs)
    finetunes: list[tuple[int, dict, TrainConfig]] = []
    for i, job in enumerate(jobs):
        job = {"progress": progress, **job}
        unknown = set(job) - {"train", "val", "config", "seed", "views", "checkpoint_dir", "progress"}
        if unknown:
            raise ValueError(f"job {i}: unknown fit argument(s) {sorted(unknown)}")
        try:
            cfg = _checked(job["train"], job["val"], job.get("config"), job.setdefault("views", augment.DEFAULT_VIEWS))
        except ValueError as err:
            raise ValueError(f"job {i}: {err}") from None
        if cfg.mode != "finetune":
            results[i] = fit(**job)
        else:
            finetunes.append((i, job, cfg))
    turns = []
    for group in pack_groups(finetunes, pack):
        cfg, first = group[0][2], group[0][1]
        if len(group) == 1:
            runner = finetune_turns(first["train"], first["val"], cfg, first.get("seed", 0), first["views"],
                              first.get("checkpoint_dir"), first["progress"], None)
        else:
            runner = packed.finetune_packed([j["train"] for _, j, _ in group], [j["val"] for _, j, _ in group], cfg,
                                            [j.get("seed", 0) for _, j, _ in group], first["views"],
                                            [j.get("checkpoint_dir") for _, j, _ in group], first["progress"])
        dev = models.pick_device(cfg.device)
        turns.append(([i for i, _, _ in group], runner, torch.cuda.Stream(dev) if dev.type == "cuda" else None,
                      _OwnRandomness(dev)))
    saved = _OwnRandomness.save_defaults()
    try:
        while turns:
            for turn in list(turns):
                indices, runner, stream, randomness = turn
                randomness.enter()  # this training's random numbers, as if it ran alone
                try:
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        next(runner)
                except StopIteration as done:
                    for i, result in zip(indices, done.value if isinstance(done.value, list) else [done.value]):
                        results[i] = result
                    turns.remove(turn)
                randomness.leave()
    finally:
        _OwnRandomness.restore_defaults(saved)
    return results  # type: ignore[return-value]


def pack_groups(finetunes: list[tuple[int, dict, TrainConfig]], pack: int) -> list[list[tuple[int, dict, TrainConfig]]]:
    """The fine-tunings in groups that train as one network: up to ``pack`` with the same config,
    views, class names and numbers of images, in job order; a group of one trains alone."""
    groups: dict[tuple, list] = {}
    for entry in finetunes:
        i, job, cfg = entry
        key = (cfg, tuple(job["views"]), len(job["train"]), len(job["val"]), tuple(job["train"].class_names)) \
            if pack > 1 and packed.unpackable_reason(cfg) is None else (i,)
        groups.setdefault(key, []).append(entry)
    return [members[s:s + pack] for members in groups.values() for s in range(0, len(members), pack)]


class _OwnRandomness:
    """One training's random-number state while trainings take turns (:func:`fit_many`).

    The CPU generator's state is swapped in and out at each turn. On CUDA the default generator
    is pointed at this training's own graph-safe state object, so its eager steps and the CUDA
    graphs it captures draw from, and advance, that state alone (replays of another training's
    graphs on another stream cannot touch it).
    """

    def __init__(self, dev: torch.device):
        self.cpu: torch.Tensor | None = None
        self.cuda = _cuda_generator(dev) if dev.type == "cuda" else None
        self.cuda_state = self.cuda.clone_state() if self.cuda is not None else None

    def enter(self) -> None:
        if self.cpu is not None:
            torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            self.cuda.graphsafe_set_state(self.cuda_state)

    def leave(self) -> None:
        self.cpu = torch.get_rng_state()

    @staticmethod
    def save_defaults() -> tuple[torch.Tensor, list]:
        cuda = [(g, g.graphsafe_get_state()) for g in torch.cuda.default_generators] \
            if torch.cuda.is_initialized() else []
        return torch.get_rng_state(), cuda

    @staticmethod
    def restore_defaults(saved: tuple[torch.Tensor, list]) -> None:
        torch.set_rng_state(saved[0])
        for generator, state in saved[1]:
            generator.graphsafe_set_state(state)


def _cuda_generator(dev: torch.device) -> torch.Generator:
    torch.cuda.init()  # the default generators exist once CUDA is initialised
    return torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]

