"""Mode ``finetune``: the recipe as one loop a reader can follow (:func:`train_epochs`), for one training
(:class:`Alone`) and for a packed network alike (:mod:`fsfsl_utils.train.packed`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .. import augment, models
from ..config import TrainConfig
from ..data import Dataset
from ..progress import progress_bar
from .checkpoint import CheckpointWriter, cpu_copy, resume
from .common import (
    FitResult,
    best_epoch_note,
    epoch_order,
    epoch_seed,
    loss_error,
    loss_weights,
    memory_format,
    run_to_end,
    training_targets,
)
from .evaluate import Validation, final_logits, preprocess_all
from .optim import lr_at, make_optimizer, set_lr
from .step import AveragedStep, TrainStep, weight_average


def finetune(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
             checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> FitResult:
    """Fine-tune the whole network with the recipe (:func:`finetune_turns`, run to its end)."""
    return run_to_end(finetune_turns(train, val, cfg, seed, views, checkpoint_dir, progress, on_epoch_end))


class Trainee(Protocol):
    """What the recipe's loop (:func:`train_epochs`) trains: one training (:class:`Alone`) or several
    packed into one network (:class:`fsfsl_utils.train.packed.Packed`). It owns the model, the
    optimiser, the one :class:`TrainStep`, the validation and each training's bookkeeping; the loop
    owns the order of things."""

    model: nn.Module
    opt: torch.optim.Optimizer
    step: TrainStep | AveragedStep
    validation: Validation
    evaluated: nn.Module  # the weights each epoch's validation scores: the model's, or their average
    dev: torch.device
    start: int  # the first epoch to train (a resumed training starts later)
    pending: bool  # the last checkpointed epoch was not validated yet
    desc: str  # the progress bar's label

    def zero_losses(self) -> torch.Tensor: ...  # the epoch's summed loss per training, on the device

    def epoch_batches(self, epoch: int) -> Iterator[tuple[tuple[torch.Tensor, ...], int]]: ...  # (step inputs, size)

    def settle(self, writer: CheckpointWriter) -> None: ...  # a finished validation: accuracy, best epoch

    def end_epoch(self, epoch: int, totals: list[float], writer: CheckpointWriter) -> None: ...  # history, last.pt


def train_epochs(trainee: Trainee, cfg: TrainConfig, progress: bool | None) -> Generator[None, None, float]:
    """The recipe (pytorch/examples imagenet/main.py's shape): per epoch set the learning rate, then for
    each batch one step (forward, loss, ``loss.backward()``, ``opt.step()``); validate while the next
    epoch trains; checkpoint; keep the best. It pauses (``yield``) after every step so that
    :func:`fsfsl_utils.train.fit_many` can interleave trainings. Returns the seconds it trained."""
    writer = CheckpointWriter()
    if trainee.pending:  # stopped before the last epoch was validated: validate those weights first
        trainee.validation.start(trainee.evaluated)
    t0 = time.perf_counter()
    try:
        for epoch in progress_bar(range(trainee.start, cfg.epochs), desc=trainee.desc, enable=progress,
                                  initial=trainee.start, total=cfg.epochs):
            set_lr(trainee.opt, lr_at(cfg, epoch))
            trainee.model.train()
            loss_sum = trainee.zero_losses()  # summed on the device: no host sync per step
            for inputs, size in trainee.epoch_batches(epoch):
                loss_sum += trainee.step(*inputs) * size  # forward, loss, loss.backward(), opt.step()
                yield  # fit_many: another training's turn
            totals = loss_sum.reshape(-1).tolist()
            for total in totals:
                if not np.isfinite(total):
                    raise loss_error(total, epoch)
            trainee.settle(writer)  # the previous epoch's validation ran alongside this epoch's training
            trainee.end_epoch(epoch, totals, writer)
            trainee.validation.start(trainee.evaluated)
            yield
        trainee.settle(writer)
    finally:  # checkpoints already taken are written out, also when training stops with an error
        writer.close()
    if trainee.dev.type == "cuda":
        torch.cuda.synchronize(trainee.dev)
    return time.perf_counter() - t0


def finetune_turns(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
                   checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
                   on_epoch_end: Callable[[int, dict], None] | None = None) -> Generator[None, None, FitResult]:
    """:func:`finetune` as a generator that pauses after every step (:func:`train_epochs`). Speed
    layers, each switched by the config and used on CUDA only, do the same work faster: bf16 autocast
    (``amp``), the step captured as a CUDA graph or compiled (``cuda_graphs``, ``compile``), validation
    on a side stream (:class:`Validation`); checkpoints are written by a background thread."""
    alone = Alone(train, val, cfg, seed, checkpoint_dir, on_epoch_end)
    seconds = yield from train_epochs(alone, cfg, progress)
    return alone.result(views, seconds)


class Alone:
    """One fine-tuning, as :func:`train_epochs` trains it: the model, the optimiser, the step, the
    validation and the checkpoints of one seed (resumed from ``checkpoint_dir`` when one is there)."""

    desc = "epochs"

    def __init__(self, train: Dataset, val: Dataset, cfg: TrainConfig, seed: int,
                 checkpoint_dir: str | os.PathLike | None = None,
                 on_epoch_end: Callable[[int, dict], None] | None = None):
        self.cfg, self.seed, self.val, self.on_epoch_end = cfg, seed, val, on_epoch_end
        self.dev = dev = models.pick_device(cfg.device)
        self.use_amp = cfg.amp and dev.type == "cuda"
        graphed = cfg.cuda_graphs and dev.type == "cuda"
        torch.manual_seed(seed)
        model = models.build_classifier(cfg.backbone, len(train.class_names), cfg.weights)
        self.model = model.to(dev).to(memory_format=memory_format(cfg.channels_last))
        self.opt = make_optimizer(self.model, cfg.lr, cfg.weight_decay, graphed, cfg.fused_adam)
        weight = loss_weights(train.labels, len(train.class_names), cfg.class_weight, dev)
        self.x_train = torch.from_numpy(train.images).to(dev)
        self.labels = torch.from_numpy(np.array(train.labels))  # hard labels: what a balanced sampler balances
        self.y_train = training_targets(train, dev)
        self.x_val = torch.from_numpy(val.images).to(dev)
        # on a GPU the validation images are preprocessed once, not once per epoch
        self.val_inputs = preprocess_all(self.x_val, cfg) if dev.type == "cuda" else None
        self.ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        self.notes: list[str] = []
        self.run_config = {**cfg.as_dict(), "seed": seed, "n_train": len(train), "n_val": len(val)}
        self.ema = weight_average(self.model, cfg.ema_decay) if cfg.ema_decay else None
        self.evaluated = self.ema.module if self.ema is not None else self.model
        self.start, self.best_acc, self.best_state, self.history = resume(
            self.ckpt, self.model, self.opt, dev, self.notes, self.run_config,
            {"ema": self.ema} if self.ema is not None else None)
        self.pending = bool(self.history) and "val_accuracy" not in self.history[-1]
        step = TrainStep(self.model, self.opt, weight, self.use_amp, cfg.batch_size, graphed,
                         compiled=cfg.compile, label_smoothing=cfg.label_smoothing)
        self.step = AveragedStep(step, self.model, self.ema) if self.ema is not None else step
        self.validation = Validation(self.model, self.x_val, val.labels, cfg, self.use_amp, self.val_inputs)
        self.best_logits: np.ndarray | None = None  # None: the best epoch came from a checkpoint

    def zero_losses(self) -> torch.Tensor:
        return torch.zeros((), device=self.dev)

    def epoch_batches(self, epoch: int) -> Iterator[tuple[tuple[torch.Tensor, ...], int]]:
        torch.manual_seed(epoch_seed(self.seed, epoch))  # stateless per epoch: resuming gives the same run
        gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = epoch_order(self.labels, self.cfg.sampler, gen).to(self.dev)
        y_epoch = self.y_train[perm]
        chunk = 512 if self.dev.type == "cuda" else self.cfg.batch_size
        for s, x in epoch_views(self.x_train, perm, self.cfg, gen, chunk):
            yield (x, y_epoch[s:s + len(x)]), len(x)

    def settle(self, writer: CheckpointWriter) -> None:
        """Finish the pending validation: its row's accuracy, the best epoch, the callback."""
        acc = self.validation.finish()
        if acc is None:
            return
        self.history[-1]["val_accuracy"] = acc
        if acc > self.best_acc:
            self.best_acc, self.best_logits = acc, self.validation.logits
            self.best_state = cpu_copy(self.validation.model.state_dict())
            if self.ckpt:
                writer.save(self.best_state, self.ckpt / "best.pt")
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.history[-1]["epoch"], self.history[-1])

    def end_epoch(self, epoch: int, totals: list[float], writer: CheckpointWriter) -> None:
        self.history.append({"epoch": epoch + 1, "train_loss": totals[0] / len(self.x_train),
                             "lr": lr_at(self.cfg, epoch)})
        if self.ckpt:  # the last row has no accuracy yet: a resumed run validates these weights first
            state = {"epoch": epoch + 1, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "best_acc": self.best_acc, "history": self.history, "config": self.run_config}
            if self.ema is not None:
                state["ema"] = self.ema.state_dict()
            writer.save(state, self.ckpt / "last.pt")

    def result(self, views: Sequence[str], train_seconds: float) -> FitResult:
        """The finished training's result: the best epoch's validation logits, the last epoch's beside them
        (with ``ema_decay``: of the average of the weights, which the returned model then holds)."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())
        val_logits, view_logits, last_logits = final_logits(self.model, self.x_val, self.val, views, self.cfg,
                                                            self.use_amp, self.val_inputs, self.validation.logits,
                                                            self.best_state, self.best_logits)
        notes = [*self.notes, *self.step.summary_notes(), best_epoch_note(self.best_acc)]
        return FitResult("finetune", val_logits, view_logits, self.model, str(self.dev), self.history,
                         {"train": train_seconds}, notes, last_logits)


def epoch_views(x_train: torch.Tensor, perm: torch.Tensor, cfg: TrainConfig, gen: torch.Generator, chunk: int):
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
