"""Training: ``probe`` (frozen backbone, cached features, linear head), ``top`` (top blocks fine-tuned
over cached activations, :mod:`fsfsl_utils.top`) and ``finetune`` behind one call.

``fit(train, val, config, seed)`` returns the validation logits (plus logits of test-time
views, for TTA) and what was done. The config is one flat, typed object
(:class:`fsfsl_utils.config.TrainConfig`), as in nanoGPT; :mod:`fsfsl_utils.profiles` fills it.
``fit_many(jobs)`` runs several fine-tunings at once (one CUDA stream each), each with the
result it would have alone.

:func:`finetune` is pytorch/examples imagenet/main.py's recipe as one loop a reader can follow
(forward, loss, ``loss.backward()``, ``opt.step()``): Adam, lr 1e-3, batch 16, lr / 10 every 30
epochs, the best validation top-1 checkpoint kept, a checkpoint every epoch (rerunning resumes).
Its training-time augmentation comes from :data:`fsfsl_utils.augment.TRAIN_TIME`. Unlike that
script, images stay on the device as uint8 and are cropped, flipped and normalised there, a chunk
of an epoch at a time, and the loss is read once per epoch, not per step; each epoch's validation
runs while the next epoch trains, and checkpoints are written by a background thread. On CUDA:
bf16 autocast, channels_last, and the training step captured as a CUDA graph (``cuda_graphs``,
see :class:`TrainStep`), and Adam as one fused kernel (``fused_adam``). Off by default:
``compile`` (``torch.compile`` of the model: faster steps, but a compilation per training). What
each costs and gains is measured in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import augment, features, models
from .config import TrainConfig
from .data import Dataset
from .progress import progress_bar
from .results import atomic_write


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a checkpoint of another config)."""


@dataclass
class FitResult:
    mode: str
    val_logits: np.ndarray
    view_logits: dict[str, np.ndarray]
    model: nn.Module
    device: str
    history: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    last_logits: np.ndarray | None = None  # finetune: the last epoch's validation logits (val_logits: the best's)


def check_config(config: dict | TrainConfig | None) -> TrainConfig:
    """The :class:`~fsfsl_utils.config.TrainConfig` of a (partial) dict; ValueError names the parameter."""
    return TrainConfig.from_dict(config)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights inverse to class frequency, scaled so the weighted count equals the sample count:
    ``w_c = N / (K * n_c)`` (scikit-learn's 'balanced')."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    if (counts == 0).any():
        raise ValueError(f"class weighting needs every class in the training set, counts {counts.tolist()}")
    return len(labels) / (n_classes * counts)


def fit(train: Dataset, val: Dataset, config: TrainConfig | dict | None = None, seed: int = 0,
        views: Sequence[str] = ("vflip", "blur"), checkpoint_dir: str | os.PathLike | None = None,
        progress: bool | None = None, on_epoch_end: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train on ``train``, predict ``val`` (and its test-time ``views``); the mode comes from the config.

    ``on_epoch_end(epoch, row)`` (finetune) is called once an epoch's validation is done, which
    runs alongside the next epoch's training (see :class:`Validation`)."""
    cfg = _checked(train, val, config, views)
    if cfg.mode == "probe":
        return _fit_probe(train, val, cfg, seed, views, progress)
    if cfg.mode == "top":
        from .top import fit_top  # top builds on this module's helpers

        return fit_top(train, val, cfg, seed, views, progress)
    return _run_to_end(finetune(train, val, cfg, seed, views, checkpoint_dir, progress, on_epoch_end))


def _checked(train: Dataset, val: Dataset, config: TrainConfig | dict | None, views: Sequence[str]) -> TrainConfig:
    """The filled-in config of a fit, after checking its arguments (ValueError names the problem)."""
    cfg = check_config(config or {})
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
    (the seeds of one arm) train as one packed network (:mod:`fsfsl_utils.packed`), which then
    takes its turns like one training; each member's result is still its own.
    """
    from . import packed  # packed builds on this module

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
            cfg = _checked(job["train"], job["val"], job.get("config"), job.setdefault("views", ("vflip", "blur")))
        except ValueError as err:
            raise ValueError(f"job {i}: {err}") from None
        if cfg.mode != "finetune":
            results[i] = fit(**job)
        else:
            finetunes.append((i, job, cfg))
    turns = []
    for group in _packs(finetunes, pack):
        cfg, first = group[0][2], group[0][1]
        if len(group) == 1:
            runner = finetune(first["train"], first["val"], cfg, first.get("seed", 0), first["views"],
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


def _packs(finetunes: list[tuple[int, dict, TrainConfig]], pack: int) -> list[list[tuple[int, dict, TrainConfig]]]:
    """The fine-tunings in groups that train as one network: up to ``pack`` with the same config,
    views, class names and numbers of images, in job order; a group of one trains alone."""
    from .packed import unpackable_reason

    groups: dict[tuple, list] = {}
    for entry in finetunes:
        i, job, cfg = entry
        key = (cfg, tuple(job["views"]), len(job["train"]), len(job["val"]), tuple(job["train"].class_names)) \
            if pack > 1 and unpackable_reason(cfg) is None else (i,)
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


def _run_to_end(runner: Generator[None, None, FitResult]) -> FitResult:
    while True:
        try:
            next(runner)
        except StopIteration as done:
            return done.value


def view_keys(ds: Dataset, view: str | None = None) -> list[str]:
    """The feature-cache keys (content hashes) of a Dataset's images or of one view of them, hashed
    once per Dataset."""
    return ds.derived(f"keys:{view}", lambda: features.image_keys(ds.images if view is None
                                                                  else augment.view_images(ds, view)))


# ----------------------------------------------------------------------------- probe
class ProbeHead(nn.Module):
    """Standardisation (fitted on the training features) + linear layer."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.linear = nn.Linear(len(mean), n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats - self.mean) / self.std)


def _fit_probe(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
               progress: bool | None) -> FitResult:
    t0 = time.perf_counter()
    def feat(ds: Dataset, view: str | None = None) -> np.ndarray:
        imgs = ds.images if view is None else augment.view_images(ds, view)
        return features.extract(imgs, cfg.backbone, cfg.input_size, cfg.crop_fraction, cfg.weights,
                                cfg.feature_batch_size, cfg.device, progress=progress, keys=view_keys(ds, view))

    x_train, x_val = feat(train), feat(val)
    x_views = {v: feat(val, v) for v in views}
    t1 = time.perf_counter()
    head, history = train_head(x_train, train.labels, len(train.class_names), cfg, seed, progress,
                               groups=train.meta["source"].to_numpy())
    with torch.no_grad():
        logits = lambda x: head(torch.from_numpy(x)).numpy().astype(np.float64)  # noqa: E731
        val_logits = logits(x_val)
        view_logits = {v: logits(x) for v, x in x_views.items()}
    return FitResult("probe", val_logits, view_logits, head, str(models.pick_device(cfg.device)), history,
                     {"features": t1 - t0, "train": time.perf_counter() - t1})


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int = 0,
               progress: bool | None = None, groups: np.ndarray | None = None) -> tuple[ProbeHead, list[dict]]:
    """L2-regularised logistic regression on standardised features, fitted to convergence (L-BFGS,
    scikit-learn), optionally class-weighted. The regularisation strength is chosen among
    ``head_cs`` by cross-validated log loss on the training features alone, in folds grouped by
    ``groups`` (each image's source, so an image and its augmented copies never straddle folds).
    The fit is deterministic: ``seed`` only matters through the data it was given.
    Returns the head (an nn.Module, for one prediction path) and one history row with the choice."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    del seed, progress  # a convex fit to convergence: no random start, no epochs to show
    mean, std = x.mean(0), x.std(0)
    std = np.maximum(std, 0.1 * float(std.mean()) + 1e-6)  # near-constant features must not explode
    z = ((x - mean) / std).astype(np.float64)
    y = np.asarray(y, dtype=np.int64)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    weight = "balanced" if cfg.class_weight == "balanced" else None
    class_weights(y, n_classes)  # every class present, else a clear error
    folds = min(cfg.head_folds, int(np.bincount(y).min()), len(np.unique(groups)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if folds >= 2 and len(cfg.head_cs) > 1:
            cv = list(StratifiedGroupKFold(n_splits=folds).split(z, y, groups))
            search = LogisticRegressionCV(Cs=list(cfg.head_cs), cv=cv, scoring="neg_log_loss",
                                          class_weight=weight, max_iter=cfg.head_max_iter, tol=cfg.head_tol)
            search.fit(z, y)
            c = float(np.atleast_1d(search.C_)[0])
            scores = np.mean(next(iter(search.scores_.values())), axis=0)
            cv_loss = {f"{cc:g}": float(-sc) for cc, sc in zip(search.Cs_, scores)}
        else:  # one value given (e.g. chosen on another seed's training part): no search
            c, cv_loss = float(cfg.head_cs[0]), {}
        model = LogisticRegression(C=c, class_weight=weight, max_iter=cfg.head_max_iter, tol=cfg.head_tol)
        model.fit(z, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    head = ProbeHead(mean, std, n_classes)
    coef, bias = np.asarray(model.coef_, np.float32), np.asarray(model.intercept_, np.float32)
    if n_classes == 2:  # scikit-learn keeps one row for two classes: logits (-z/2, z/2) have the same softmax
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(coef))
        head.linear.bias.copy_(torch.from_numpy(bias))
    history = [{"C": c, "C_from": "cross-validation on this training part" if cv_loss else "given in head_cs",
                "folds": folds, "cv_log_loss": cv_loss, "iterations": int(np.max(model.n_iter_)),
                "converged": converged}]
    return head.eval(), history


# ----------------------------------------------------------------------------- finetune
def finetune(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
             checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> Generator[None, None, FitResult]:
    """The pytorch/examples imagenet recipe as one loop: per epoch, shuffle and augment, then for each
    batch forward, loss, ``loss.backward()``, ``opt.step()``; validate; checkpoint; keep the best.

    A generator: it pauses (``yield``) after every step so that :func:`fit_many` can interleave
    trainings; :func:`fit` runs it to the end and gets the result. Speed layers, each switched by
    the config and used on CUDA only, do the same work faster: bf16 autocast (``amp``), the step
    captured as a CUDA graph or compiled (``cuda_graphs``, ``compile``: :class:`TrainStep`),
    validation on a side stream (:class:`Validation`); checkpoints are written by a background
    thread (:class:`CheckpointWriter`).
    """
    dev = models.pick_device(cfg.device)
    use_amp = cfg.amp and dev.type == "cuda"
    graphed = cfg.cuda_graphs and dev.type == "cuda"
    torch.manual_seed(seed)
    model = models.build_classifier(cfg.backbone, len(train.class_names), cfg.weights)
    model = model.to(dev).to(memory_format=memory_format(cfg.channels_last))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, graphed, cfg.fused_adam)
    weight = torch.tensor(class_weights(train.labels, len(train.class_names)), dtype=torch.float32, device=dev) \
        if cfg.class_weight == "balanced" else None
    x_train = torch.from_numpy(train.images).to(dev)
    y_train = torch.from_numpy(np.array(train.labels)).to(dev)
    x_val = torch.from_numpy(val.images).to(dev)
    # on a GPU the validation images are preprocessed once, not once per epoch
    val_inputs = _preprocess_all(x_val, cfg) if dev.type == "cuda" else None
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    notes: list[str] = []
    run_config = {**cfg.as_dict(), "seed": seed, "n_train": len(train), "n_val": len(val)}
    start, best_acc, best_state, history = _resume(ckpt, model, opt, dev, notes, run_config)
    fast_step = TrainStep(model, opt, weight, use_amp, cfg.batch_size, graphed, compiled=cfg.compile) \
        if graphed or cfg.compile else None
    writer = CheckpointWriter()
    validation = Validation(model, x_val, val.labels, cfg, use_amp, val_inputs)
    if history and "val_accuracy" not in history[-1]:  # stopped before the last epoch was validated
        validation.start(model)

    best_logits = None  # the best epoch's validation logits (None: the best epoch came from a checkpoint)

    def settle() -> None:
        """Finish the pending validation: its row's accuracy, the best epoch, the callback."""
        nonlocal best_acc, best_state, best_logits
        acc = validation.finish()
        if acc is None:
            return
        history[-1]["val_accuracy"] = acc
        if acc > best_acc:
            best_acc, best_logits = acc, validation.logits
            best_state = cpu_copy(validation.model.state_dict())
            if ckpt:
                writer.save(best_state, ckpt / "best.pt")
        if on_epoch_end is not None:
            on_epoch_end(history[-1]["epoch"], history[-1])

    t0 = time.perf_counter()
    try:
        for epoch in progress_bar(range(start, cfg.epochs), desc="epochs", enable=progress, initial=start,
                                  total=cfg.epochs):
            torch.manual_seed(epoch_seed(seed, epoch))  # stateless per epoch: resuming gives the same run
            gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
            set_lr(opt, lr_at(cfg, epoch))
            model.train()
            perm = torch.randperm(len(x_train), generator=gen).to(dev)
            y_epoch = y_train[perm]
            loss_sum = torch.zeros((), device=dev)  # summed on the device: no host sync per step
            for s, x in _epoch_views(x_train, perm, cfg, gen, chunk=512 if dev.type == "cuda" else cfg.batch_size):
                y = y_epoch[s:s + len(x)]
                if fast_step is not None:  # the same step as below, as a CUDA graph replay or compiled
                    loss = fast_step(x, y)
                else:
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
                        loss = F.cross_entropy(model(x).float(), y, weight=weight)
                    loss.backward()
                    opt.step()
                loss_sum += loss.detach() * len(x)
                yield  # fit_many: another training's turn
            total = float(loss_sum)
            if not np.isfinite(total):
                raise _loss_error(total, epoch)
            settle()  # the previous epoch's validation ran alongside this epoch's training
            history.append({"epoch": epoch + 1, "train_loss": total / len(x_train), "lr": lr_at(cfg, epoch)})
            validation.start(model)
            if ckpt:  # the last row has no accuracy yet: a resumed run validates these weights first
                writer.save({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "best_acc": best_acc, "history": history, "config": run_config}, ckpt / "last.pt")
            yield
        settle()
    finally:  # checkpoints already taken are written out, also when training stops with an error
        writer.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    train_seconds = time.perf_counter() - t0
    if fast_step is not None:
        notes += fast_step.summary_notes()
    val_logits, view_logits, last_logits = final_logits(model, x_val, val, views, cfg, use_amp, val_inputs,
                                                        validation.logits, best_state, best_logits)
    notes.append(best_epoch_note(best_acc))
    return FitResult("finetune", val_logits, view_logits, model, str(dev), history,
                     {"train": train_seconds}, notes, last_logits)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a training's random draws in ``epoch``: a function of the two alone, so a resumed
    or packed training draws what the same training run alone from the start draws."""
    return seed * 100_003 + epoch


def final_logits(model: nn.Module, x_val: torch.Tensor, val: Dataset, views: Sequence[str], cfg: TrainConfig,
                 use_amp: bool, inputs: torch.Tensor | None, last: np.ndarray | None, best_state: dict | None,
                 best: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """A finished training's ``(validation logits, view logits, last epoch's logits)``: ``last`` (or
    predicted with the model's weights now, the last epoch's), then the best epoch's weights
    (``best_state``) are loaded and give the validation logits (``best``, or predicted) and each test-time
    view's."""
    last = last if last is not None else predict(model, x_val, cfg, use_amp, inputs=inputs)
    if best_state is not None:
        model.load_state_dict(best_state)
    val_logits = best if best is not None else predict(model, x_val, cfg, use_amp, inputs=inputs)
    view_logits = {v: predict(model, torch.from_numpy(augment.view_images(val, v)).to(x_val.device), cfg, use_amp)
                   for v in views}
    return val_logits, view_logits, last


def best_epoch_note(best_acc: float) -> str:
    return (f"validation logits from the best epoch by validation accuracy ({best_acc:.4f}), "
            "as pytorch/examples imagenet keeps model_best: chosen on the reported validation images, "
            "so optimistic; the last epoch's metrics are recorded beside them")


def _resume(ckpt: Path | None, model: nn.Module, opt: torch.optim.Optimizer, dev: torch.device, notes: list[str],
            run_config: dict) -> tuple[int, float, dict | None, list[dict]]:
    """Load ``ckpt/last.pt`` (and ``best.pt``) into the model and optimiser when a checkpoint of this
    config is there: ``(start epoch, best accuracy, best weights, history)``; a fresh start otherwise."""
    state = load_checkpoint(ckpt / "last.pt", dev, notes, LAST_KEYS) if ckpt and (ckpt / "last.pt").exists() \
        else None
    best_saved = load_checkpoint(ckpt / "best.pt", "cpu", notes, ()) if state is not None else None
    if state is not None and best_saved is None:
        notes.append(f"warning: {ckpt / 'best.pt'} is missing or damaged: training {ckpt.name} again from epoch 0")
        state = None
    if state is None:
        return 0, -1.0, None, []
    if state["config"] != run_config:
        diff = sorted(k for k in set(run_config) | set(state["config"]) if run_config.get(k) != state["config"].get(k))
        raise TrainingError(f"checkpoint {ckpt / 'last.pt'} was made with another config (differs in {diff}); "
                            "use a new results folder or delete the checkpoint")
    model.load_state_dict(state["model"])
    load_optimizer_state(opt, state["optimizer"])
    notes.append(f"resumed from {ckpt / 'last.pt'} at epoch {state['epoch']}")
    return state["epoch"], state["best_acc"], best_saved, state["history"]


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping the learning-rate object (loading replaces it; a captured
    graph reads the one it was captured with)."""
    lr = opt.param_groups[0]["lr"]
    opt.load_state_dict(state)
    for group in opt.param_groups:
        group["lr"] = lr


LAST_KEYS = ("model", "optimizer", "epoch", "best_acc", "history", "config")  # what last.pt holds
CHECKSUM_KEY = "_fsfsl_sha256"  # every checkpoint the kit writes carries the SHA-256 of its contents


def content_digest(obj: object) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; plain data by value; dict
    keys sorted): a flipped bit anywhere, in the weights or the optimiser's moments, changes it."""
    import hashlib

    h = hashlib.sha256()

    def feed(x: object) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def load_checkpoint(path: Path, device: torch.device | str, notes: list[str],
                    keys: Sequence[str] = LAST_KEYS) -> dict | None:
    """A checkpoint as tensors and plain data only (``weights_only=True``: loading runs no code),
    checked against the SHA-256 the kit stored in it when it wrote it.

    A file that asks to build other objects (a crafted pickle) is refused with TrainingError, and so is
    a loadable file that is not a checkpoint (a list, a tensor, a dict without ``keys``: it may be the
    user's, so it is not overwritten); a missing, empty, truncated or garbled one, or one whose
    contents no longer match their checksum (a flipped bit), gives None and a warning in ``notes``
    (the training then starts again), the way the feature cache repairs itself."""
    import pickle
    import warnings

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # torch names the global it blocked
            raise TrainingError(f"checkpoint {path} asks to build Python objects, not just tensors and plain data: "
                                "refused (loading it could run code). Delete it if you trust nothing in it, and "
                                "the training starts again") from None
        reason = f"{type(err).__name__}"
    except (EOFError, RuntimeError, OSError, ValueError, KeyError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'empty file'}"
    else:
        missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else None
        if missing is None or missing or (not keys and not all(isinstance(v, torch.Tensor) for k, v in obj.items()
                                                                if k != CHECKSUM_KEY)):
            what = f"a dict without {', '.join(missing)}" if missing else \
                f"a {type(obj).__name__}" if not isinstance(obj, dict) else "a dict of more than tensors"
            raise TrainingError(f"{path} is not a checkpoint of this kit (it holds {what}); move it away or delete "
                                "it, and the training starts again")
        stored = obj.pop(CHECKSUM_KEY, None)
        if stored is None or stored == content_digest(obj):
            if stored is None:
                notes.append(f"note: checkpoint {path} has no checksum (written by an earlier kit): used unchecked")
            return obj
        reason = "its contents do not match the checksum written with them (a changed bit)"
    message = f"warning: checkpoint {path} is damaged ({reason}): not used"
    warnings.warn(message, stacklevel=2)
    notes.append(message)
    return None


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, graphed: bool,
                   fused: bool = False) -> torch.optim.Adam:
    """The recipe's Adam; for a CUDA graph (which replays the optimiser step too) capturable, with
    its state and learning rate as tensors on the model's device. ``fused``: one kernel for all
    parameters instead of a few per group of tensors (same update up to rounding)."""
    if graphed:
        lr = torch.tensor(lr, device=next(model.parameters()).device)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, capturable=graphed,
                            fused=True if fused else None)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): ``step``, the recipe's (``lr`` / 10 every ``lr_step``
    epochs), or ``cosine`` (from ``lr`` down towards 0 over ``epochs``)."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return cfg.lr * 0.1 ** (epoch // cfg.lr_step)


def set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    """Set the learning rate in place (a tensor lr keeps its address, which a captured graph reads)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


@dataclass
class _Graph:
    """One captured training step: its static inputs, the loss it refreshes, and its replay."""

    inputs: tuple[torch.Tensor, ...]
    loss: torch.Tensor
    replay: Callable[[], None]


class TrainStep:
    """One optimisation step (forward, loss, backward, Adam) on a batch of normalised images.

    With ``graphed`` (CUDA only) the step is captured as a CUDA graph once per batch size (the
    recipe's batch and an epoch's last, shorter batch: at most ``MAX_GRAPHS``) and replayed: at
    the recipe's batch of 16 a small network is bound by kernel launches, not by arithmetic, and a
    replay launches the whole step at once. Following PyTorch's whole-network capture recipe, the
    first ``WARMUP`` steps of each size run eagerly on a side stream, then one is captured. All
    graphs update the same weights, gradients and optimiser state. If capture fails, the sizes
    not yet captured run eagerly and ``notes`` says why. With ``compiled`` the model's forward and
    backward at the recipe's batch go through ``torch.compile`` (static shapes) first. The returned
    loss is a device tensor, valid until the next step.

    ``loss(net, x, y, *extra)`` replaces the recipe's weighted cross-entropy (a packed training,
    :mod:`fsfsl_utils.packed`, returns one loss per member; their sum is what is differentiated);
    a step is then called with the same ``extra`` tensors, which a graph copies in like ``x`` and ``y``.
    """

    WARMUP = 3
    MAX_GRAPHS = 2

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, weight: torch.Tensor | None, use_amp: bool,
                 batch_size: int, graphed: bool, compiled: bool = False,
                 loss: Callable[..., torch.Tensor] | None = None):
        self.model, self.opt, self.weight, self.use_amp = model, opt, weight, use_amp
        self.loss = loss or self._cross_entropy
        self.batch_size, self.graphed = batch_size, graphed
        self.net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model, dynamic=False) if compiled else model
        self.device_type = next(model.parameters()).device.type
        self.graphs: dict[int, _Graph] = {}
        self.warmed: dict[int, int] = {}  # eager warm-up steps per batch size
        self.counts = {"eager": 0, "graph": 0}
        self.notes: list[str] = []

    def summary_notes(self) -> list[str]:
        """What a record says of these steps: why a capture or compilation fell back, how many replays."""
        counts = [f"training steps: {self.counts['graph']} CUDA graph replays, {self.counts['eager']} eager"] \
            if self.counts["graph"] else []
        return [*self.notes, *counts]

    def _cross_entropy(self, net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                       y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(net(x).float(), y, weight=self.weight)

    def _forward_backward(self, *inputs: torch.Tensor) -> torch.Tensor:
        # no autocast weight cache: a captured step must cast the weights it reads on every replay
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.use_amp, cache_enabled=False):
            loss = self.loss(self._net_for(len(inputs[0])), *inputs)
        (loss if loss.ndim == 0 else loss.sum()).backward()
        self.opt.step()
        return loss.detach()

    def _net_for(self, batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """The compiled model for the recipe's batch; the plain one for the short last batch (one
        compilation per training, not two)."""
        return self.net if batch == self.batch_size else self.model

    def _eager(self, *inputs: torch.Tensor) -> torch.Tensor:
        # after a capture the gradients live in the graph's memory: zero them in place, never drop them
        self.opt.zero_grad(set_to_none=not self.graphs)
        self.counts["eager"] += 1
        if self._net_for(len(inputs[0])) is self.model:
            return self._forward_backward(*inputs)
        try:  # compilation happens in the first steps of each batch size, before the optimiser steps
            return self._forward_backward(*inputs)
        except torch._dynamo.exc.TorchDynamoException as err:
            self.net = self.model
            self.notes.append(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                              "training the model uncompiled")
            self.opt.zero_grad(set_to_none=not self.graphs)
            return self._forward_backward(*inputs)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        inputs = (x, y, *extra)
        graph = self.graphs.get(len(x))
        if graph is None:
            if not self.graphed or len(self.graphs) >= self.MAX_GRAPHS:
                return self._eager(*inputs)
            warmed = self.warmed.get(len(x), 0)
            if warmed < self.WARMUP:
                self.warmed[len(x)] = warmed + 1
                return _on_side_stream(lambda: self._eager(*inputs), x.is_cuda)
            graph = self._capture(inputs)
            if graph is None:
                return self._eager(*inputs)
        for static, given in zip(graph.inputs, inputs):
            static.copy_(given)
        graph.replay()
        self.counts["graph"] += 1
        return graph.loss

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> _Graph | None:
        static = tuple(t.clone() for t in inputs)
        first = not self.graphs
        if first:  # backward inside the first capture allocates the gradients all graphs share
            self.opt.zero_grad(set_to_none=True)

        def step() -> torch.Tensor:
            if not first:  # later graphs zero the shared gradients in place, then accumulate into them
                self.opt.zero_grad(set_to_none=False)
            return self._forward_backward(*static)

        try:
            replay, loss = capture_graph(step)
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager steps
            self.graphed = False
            self.notes.append(f"CUDA graph capture (batch of {len(inputs[0])}) failed ({type(err).__name__}: "
                              f"{err}); steps not captured yet run eagerly")
            return None
        self.graphs[len(inputs[0])] = _Graph(static, loss, replay)
        return self.graphs[len(inputs[0])]


def capture_graph(fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture ``fn`` as a CUDA graph (nothing runs yet); return its replay and the tensor it refreshes."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def _on_side_stream(fn: Callable[[], torch.Tensor], cuda: bool) -> torch.Tensor:
    """Run ``fn`` on a side stream (PyTorch's rule for warm-up before capture); plainly off CUDA."""
    if not cuda:
        return fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = fn()
    torch.cuda.current_stream().wait_stream(side)
    return out


def _epoch_views(x_train: torch.Tensor, perm: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, chunk: int):
    """Yield ``(start, batch)`` of training views for one epoch in ``perm`` order (on the images' device).

    The epoch's random draws of the config's training-time augmentation (:data:`augment.TRAIN_TIME`)
    come from ``gen`` at once; views are made ``chunk`` images at a time on the images' device (a
    multiple of the batch size), so a GPU runs a few large augmentation kernels instead of many small ones.
    """
    aug, bs = augment.get_train_augmentation(cfg.train_aug), cfg.batch_size
    draws = aug.draw(len(perm), x_train.shape[1], x_train.shape[2], gen)
    chunk = max(bs, chunk // bs * bs)
    for c in range(0, len(perm), chunk):
        imgs = x_train[perm[c:c + chunk]]
        views = aug.apply(imgs, tuple(d[c:c + chunk] for d in draws), cfg.input_size, cfg.backbone, cfg.crop_fraction)
        views = views.contiguous(memory_format=memory_format(cfg.channels_last))
        for s in range(0, len(imgs), bs):
            yield c + s, views[s:s + bs]


def _preprocess_all(images: torch.Tensor, cfg: TrainConfig, batch_size: int = 256) -> torch.Tensor:
    out = torch.cat([models.preprocess(images[s:s + batch_size], cfg.backbone, cfg.input_size,
                                       cfg.crop_fraction)
                     for s in range(0, len(images), batch_size)])
    return out.contiguous(memory_format=memory_format(cfg.channels_last))


def predict(model: nn.Module, images: torch.Tensor, cfg: TrainConfig, use_amp: bool = False,
            batch_size: int = 64, inputs: torch.Tensor | None = None) -> np.ndarray:
    """Logits (float64 numpy) of uint8 images through the eval transform (``inputs``: already
    transformed, as :func:`fit` keeps them on a GPU)."""
    return device_logits(model, images, cfg, use_amp, batch_size, inputs).cpu().numpy().astype(np.float64)


def device_logits(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], cfg: TrainConfig,
                  use_amp: bool = False, batch_size: int = 64, inputs: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`predict`'s logits as a float32 tensor on the images' device (no wait for the device).

    ``images`` may be a list, one per member of a packed network (:mod:`fsfsl_utils.packed`): each
    batch is then the members' transformed images side by side on the channel axis."""
    members = list(images) if isinstance(images, (list, tuple)) else [images]
    model.eval()
    outs = []
    if inputs is not None:
        batch_size = max(batch_size, 256)
    with torch.inference_mode(), torch.autocast(members[0].device.type, dtype=torch.bfloat16, enabled=use_amp):
        for s in range(0, len(members[0]), batch_size):
            if inputs is not None:
                x = inputs[s:s + batch_size]
            else:
                parts = [models.preprocess(im[s:s + batch_size], cfg.backbone, cfg.input_size, cfg.crop_fraction)
                         for im in members]
                x = parts[0] if len(parts) == 1 else \
                    torch.cat(parts, 1).contiguous(memory_format=memory_format(cfg.channels_last))
            outs.append(model(x).float())
    return torch.cat(outs)


class Validation:
    """Each epoch's validation, run while the next epoch trains.

    ``start(model)`` copies the weights into a second model and, on CUDA, runs it on a side
    stream: the training step's kernels leave most of the GPU idle. ``finish()`` waits for it and
    returns the accuracy and the copy (the weights that were validated); the next ``start`` must
    come after it. On a CPU the same calls run one after the other.
    """

    def __init__(self, model: nn.Module, x_val: torch.Tensor, y_val: np.ndarray, cfg: TrainConfig, use_amp: bool,
                 inputs: torch.Tensor | None):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.x_val, self.y_val, self.cfg, self.use_amp, self.inputs = x_val, y_val, cfg, use_amp, inputs
        self.stream = torch.cuda.Stream(x_val.device) if x_val.is_cuda else None
        self.pending: torch.Tensor | None = None
        self.logits: np.ndarray | None = None  # of the last finished validation (float64, as predict gives)

    def start(self, model: nn.Module) -> None:
        if self.pending is not None:
            raise RuntimeError("Validation.start before the previous validation finished")
        with torch.no_grad():
            torch._foreach_copy_(list(self.model.state_dict().values()), list(model.state_dict().values()))
        if self.stream is None:
            self.pending = self._logits()
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.x_val.device))  # the weights are copied
        with torch.cuda.stream(self.stream):
            self.pending = self._logits()

    def _logits(self) -> torch.Tensor:
        return device_logits(self.model, self.x_val, self.cfg, self.use_amp, inputs=self.inputs)

    def finish(self) -> float | None:
        """Accuracy of the weights given to the last ``start`` (None if nothing is pending)."""
        if self.pending is None:
            return None
        if self.stream is not None:
            torch.cuda.current_stream(self.x_val.device).wait_stream(self.stream)
        self.logits, self.pending = self.pending.cpu().numpy().astype(np.float64), None
        return float((self.logits.argmax(1) == self.y_val).mean())


def _loss_error(value: float, epoch: int) -> TrainingError:
    return TrainingError(f"loss became {value} in epoch {epoch + 1}: stopping instead of writing garbage "
                         "(lower the learning rate or check the input images)")


def cpu_copy(obj: object) -> object:
    """A copy of a (nested) state dict whose tensors are on the CPU and no longer change with training."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on one background thread, in order, each atomically: training goes on
    while the disk works (on a GPU an epoch can take less time than writing its checkpoint).
    ``save`` copies the state to the CPU first; ``close`` waits for every write and raises the
    first error of any."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsfsl-checkpoint")
        self.pending: list[Future] = []

    def save(self, obj: object, path: Path) -> None:
        snapshot = cpu_copy(obj)
        for done in [f for f in self.pending if f.done()]:
            self.pending.remove(done)
            done.result()  # a failed write stops training here, not 50 epochs later
        self.pending.append(self.pool.submit(_atomic_save, snapshot, path))

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending = []
            self.pool.shutdown(wait=True)


def _atomic_save(obj: object, path: Path) -> None:
    """``obj`` (a dict) with its :func:`content_digest` beside it, written atomically."""
    atomic_write(path, lambda tmp: torch.save({**obj, CHECKSUM_KEY: content_digest(obj)}, tmp))
