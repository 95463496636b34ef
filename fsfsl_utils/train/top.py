"""Fine-tuning a backbone's top blocks over cached activations (training mode ``top``).

A frozen backbone can only add points to a fixed feature space; fine-tuning the whole network
needs a GPU. In between: the lower blocks run once per image (:func:`fsfsl_utils.features.activations`,
cached on disk like the features), and the top ``trained_blocks`` blocks, the head and a new linear
layer are trained on those activations, batch norm in training mode, as a full fine-tune would
train them. Flips are exact: a flipped image's activations are those of the flipped image, cached
beside the original's. Validation and test-time views go through the same cached path, which
equals running the whole network (tested).

The loop reads like pytorch/examples' imagenet ``train()``: shuffle, forward, loss, backward, step;
Adam with the config's lr and weight decay, the lr following ``lr_schedule`` per epoch. The last
epoch's model is the result (no choice on the validation images).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import features, models
from ..augment import DIHEDRAL_VIEWS, view_images
from ..config import TrainConfig
from ..data import Dataset
from ..progress import progress_bar
from .common import FitResult, epoch_order, loss_error, loss_weights, training_targets, view_keys
from .optim import lr_at, make_optimizer, set_lr
from .step import AveragedStep, TrainStep, weight_average

PREDICT_BATCH = 256


class TopClassifier(nn.Module):
    """The trained part: a backbone's top blocks and head (:class:`fsfsl_utils.models.UpperBlocks`)
    and a linear layer, from cached activations to logits."""

    def __init__(self, upper: nn.Module, feature_dim: int, n_classes: int):
        super().__init__()
        self.upper = upper
        self.fc = nn.Linear(feature_dim, n_classes)

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        return self.fc(self.upper(acts.float()))


def build(cfg: TrainConfig, n_classes: int, device: torch.device) -> TopClassifier:
    """A fresh copy of the backbone's top blocks and head with ImageNet weights, and a new linear layer
    (its initialisation drawn from the current torch seed)."""
    weights = models.resolve_weights(cfg.backbone, cfg.weights)
    backbone = features.get_backbone(cfg.backbone, weights, device)
    upper = copy.deepcopy(models.split_backbone(backbone, cfg.backbone, cfg.trained_blocks)[1])
    for p in upper.parameters():
        p.requires_grad_(True)
    return TopClassifier(upper, models.get_spec(cfg.backbone).feature_dim, n_classes).to(device)


def activations(images: np.ndarray, cfg: TrainConfig, progress: bool | None = None,
                keys: list[str] | None = None) -> np.ndarray:
    """The cached lower-block activations of ``images`` under ``cfg`` (float16); ``keys``: their
    content hashes when known."""
    return features.activations(images, cfg.backbone, cfg.input_size, cfg.crop_fraction, cfg.weights,
                                cfg.trained_blocks, cfg.feature_batch_size, cfg.device, progress=progress,
                                keys=keys)


def dataset_activations(ds: Dataset, cfg: TrainConfig, view: str | None = None,
                        progress: bool | None = None) -> np.ndarray:
    """:func:`activations` of a Dataset's images or of one view of them (images and hashes kept per Dataset)."""
    images = ds.images if view is None else view_images(ds, view)
    return activations(images, cfg, progress, keys=view_keys(ds, view))


def logits(model: TopClassifier, acts: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Eval-mode logits (float64) of cached activations: the one prediction path of this mode."""
    dev = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        out = [model(torch.from_numpy(acts[s:s + batch_size]).to(dev)).double().cpu().numpy()
               for s in range(0, len(acts), batch_size)]
    return np.concatenate(out) if out else np.empty((0, model.fc.out_features))


def predict_images(model: TopClassifier, images: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Logits of uint8 images: their lower-block activations (cached), then the trained top."""
    return logits(model, activations(images, cfg, progress=False))


def fit_top(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
            progress: bool | None) -> FitResult:
    """Train the top blocks + head + linear layer on ``train``'s cached activations; predict ``val``
    and its test-time ``views``. Deterministic for a seed on a CPU (tested)."""
    t0 = time.perf_counter()
    dev = models.pick_device(cfg.device)
    # float32 once, not per step: a step then only gathers its batch
    x_train = torch.from_numpy(dataset_activations(train, cfg, None, progress)).to(dev, torch.float32)
    x_flip = torch.from_numpy(dataset_activations(train, cfg, "hflip", progress)).to(dev, torch.float32) \
        if cfg.train_aug == "flip" else None
    # dihedral: the image and its seven symmetries, each view's activations cached, one drawn per image and epoch
    x_dihedral = torch.stack([x_train] + [torch.from_numpy(dataset_activations(train, cfg, v, progress))
                                          .to(dev, torch.float32) for v in DIHEDRAL_VIEWS]) \
        if cfg.train_aug == "dihedral" else None
    x_val = dataset_activations(val, cfg, None, progress)
    x_views = {v: dataset_activations(val, cfg, v, progress) for v in views}
    t1 = time.perf_counter()
    y_train = training_targets(train, dev)
    labels = torch.from_numpy(np.array(train.labels))
    weight = loss_weights(train.labels, len(train.class_names), cfg.class_weight, dev)
    history = []
    with torch.random.fork_rng(devices=[]):  # the seed decides the linear layer and stochastic depth, nothing else
        torch.manual_seed(seed)
        model = build(cfg, len(train.class_names), dev)
        opt = make_optimizer(model, cfg.lr, cfg.weight_decay, graphed=False)
        step = TrainStep(model, opt, weight, use_amp=False, batch_size=cfg.batch_size, graphed=False,
                         label_smoothing=cfg.label_smoothing)
        ema = weight_average(model, cfg.ema_decay) if cfg.ema_decay else None
        if ema is not None:
            step = AveragedStep(step, model, ema)
        gen = torch.Generator().manual_seed(seed)
        n, bs = len(x_train), cfg.batch_size
        for epoch in progress_bar(range(cfg.epochs), desc="epochs (top blocks)", enable=progress):
            set_lr(opt, lr_at(cfg, epoch))
            model.train()
            perm = epoch_order(labels, cfg.sampler, gen)
            flips = torch.rand(n, generator=gen) < 0.5
            symmetry = torch.randint(0, 8, (n,), generator=gen) if x_dihedral is not None else None
            loss_sum = 0.0
            for s in range(0, n, bs):
                idx = perm[s:s + bs]
                if x_dihedral is not None:
                    x = x_dihedral[symmetry[idx].to(dev), idx.to(dev)]
                else:
                    x = x_train[idx] if x_flip is None else \
                        torch.where(flips[idx].to(dev).view(-1, 1, 1, 1), x_flip[idx], x_train[idx])
                loss = step(x, y_train[idx.to(dev)])  # forward, loss, loss.backward(), opt.step()
                loss_sum += loss.item() * len(idx)
            if not np.isfinite(loss_sum):
                raise loss_error(loss_sum, epoch)
            history.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "lr": lr_at(cfg, epoch)})
    if ema is not None:  # the average of the weights is the model reported and kept
        model.load_state_dict(ema.module.state_dict())
    t2 = time.perf_counter()
    val_logits = logits(model, x_val)
    view_logits = {v: logits(model, x) for v, x in x_views.items()}
    cut = models.get_spec(cfg.backbone).blocks - cfg.trained_blocks
    notes = [f"fine-tuned the top {cfg.trained_blocks} block(s), the head and a linear layer over cached "
             f"activations below block {cut} (float16); the last epoch's model is reported"]
    return FitResult("top", val_logits, view_logits, model, str(dev), history,
                     {"activations": t1 - t0, "train": t2 - t1}, notes)
