"""Mode ``finetune``: the recipe as one loop a reader can follow (:func:`finetune`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import augment, models
from ..config import TrainConfig
from ..data import Dataset
from ..progress import progress_bar
from .checkpoint import CheckpointWriter, cpu_copy, resume
from .common import FitResult, best_epoch_note, epoch_seed, loss_error, loss_weights, memory_format, run_to_end
from .evaluate import Validation, final_logits, preprocess_all
from .optim import lr_at, make_optimizer, set_lr
from .step import TrainStep


def finetune(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
             checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
             on_epoch_end: Callable[[int, dict], None] | None = None) -> FitResult:
    """Fine-tune the whole network with the recipe (:func:`finetune_turns`, run to its end)."""
    return run_to_end(finetune_turns(train, val, cfg, seed, views, checkpoint_dir, progress, on_epoch_end))


def finetune_turns(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
                   checkpoint_dir: str | os.PathLike | None = None, progress: bool | None = None,
                   on_epoch_end: Callable[[int, dict], None] | None = None) -> Generator[None, None, FitResult]:
    """The pytorch/examples imagenet recipe as one loop: per epoch, shuffle and augment, then for each
    batch one :class:`TrainStep` (forward, loss, ``loss.backward()``, ``opt.step()``, the same step on
    a CPU and a GPU); validate; checkpoint; keep the best.

    It pauses (``yield``) after every step so that :func:`fit_many` can interleave trainings;
    :func:`finetune` runs it to the end. Speed layers, each switched by the config and used on CUDA
    only, do the same work faster: bf16 autocast (``amp``), the step captured as a CUDA graph or
    compiled (``cuda_graphs``, ``compile``), validation on a side stream (:class:`Validation`);
    checkpoints are written by a background thread (:class:`CheckpointWriter`).
    """
    dev = models.pick_device(cfg.device)
    use_amp = cfg.amp and dev.type == "cuda"
    graphed = cfg.cuda_graphs and dev.type == "cuda"
    torch.manual_seed(seed)
    model = models.build_classifier(cfg.backbone, len(train.class_names), cfg.weights)
    model = model.to(dev).to(memory_format=memory_format(cfg.channels_last))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay, graphed, cfg.fused_adam)
    weight = loss_weights(train.labels, len(train.class_names), cfg.class_weight, dev)
    x_train = torch.from_numpy(train.images).to(dev)
    y_train = torch.from_numpy(np.array(train.labels)).to(dev)
    x_val = torch.from_numpy(val.images).to(dev)
    # on a GPU the validation images are preprocessed once, not once per epoch
    val_inputs = preprocess_all(x_val, cfg) if dev.type == "cuda" else None
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    notes: list[str] = []
    run_config = {**cfg.as_dict(), "seed": seed, "n_train": len(train), "n_val": len(val)}
    start, best_acc, best_state, history = resume(ckpt, model, opt, dev, notes, run_config)
    step = TrainStep(model, opt, weight, use_amp, cfg.batch_size, graphed, compiled=cfg.compile)
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
            for s, x in epoch_views(x_train, perm, cfg, gen, chunk=512 if dev.type == "cuda" else cfg.batch_size):
                loss = step(x, y_epoch[s:s + len(x)])  # forward, loss, loss.backward(), opt.step()
                loss_sum += loss * len(x)
                yield  # fit_many: another training's turn
            total = float(loss_sum)
            if not np.isfinite(total):
                raise loss_error(total, epoch)
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
    notes += step.summary_notes()
    val_logits, view_logits, last_logits = final_logits(model, x_val, val, views, cfg, use_amp, val_inputs,
                                                        validation.logits, best_state, best_logits)
    notes.append(best_epoch_note(best_acc))
    return FitResult("finetune", val_logits, view_logits, model, str(dev), history,
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
