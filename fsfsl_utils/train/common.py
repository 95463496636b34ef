"""What every training mode shares: its result, its errors, class weights, per-epoch seeds."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .. import augment, features
from ..data import Dataset


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


def loss_weights(labels: np.ndarray, n_classes: int, class_weight: str, device: torch.device) -> torch.Tensor | None:
    """The loss's class weights on ``device`` for a config's ``class_weight`` (``balanced``:
    :func:`class_weights`; ``none``: None, an unweighted loss)."""
    if class_weight != "balanced":
        return None
    return torch.tensor(class_weights(labels, n_classes), dtype=torch.float32, device=device)


def training_targets(ds: Dataset, device: torch.device) -> torch.Tensor:
    """What the loss compares the model's output with: the class indices, or, when the data carries
    soft labels (label policy ``soft``), class probabilities (``N x K``; cross-entropy takes either)."""
    soft = ds.soft_targets()
    if soft is None:
        return torch.from_numpy(np.array(ds.labels)).to(device)
    return torch.from_numpy(soft.astype(np.float32)).to(device)


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """The indices of one epoch's images, drawn from ``generator`` on the CPU: ``shuffle``, each image
    once in a random order (the recipe's); ``balanced``, as many draws with replacement, each class
    equally likely (a class-balanced sampler: the rare class is seen as often as the common one)."""
    n = len(labels)
    if sampler == "shuffle":
        return torch.randperm(n, generator=generator)
    labels = labels.cpu()
    counts = torch.bincount(labels).double()
    return torch.multinomial(1.0 / counts[labels], n, replacement=True, generator=generator)


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights inverse to class frequency, scaled so the weighted count equals the sample count:
    ``w_c = N / (K * n_c)`` (scikit-learn's 'balanced')."""
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    if (counts == 0).any():
        raise ValueError(f"class weighting needs every class in the training set, counts {counts.tolist()}")
    return len(labels) / (n_classes * counts)


def view_keys(ds: Dataset, view: str | None = None) -> list[str]:
    """The feature-cache keys (content hashes) of a Dataset's images or of one view of them, hashed
    once per Dataset."""
    return ds.derived(f"keys:{view}", lambda: features.image_keys(ds.images if view is None
                                                                  else augment.view_images(ds, view)))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a training's random draws in ``epoch``: a function of the two alone, so a resumed
    or packed training draws what the same training run alone from the start draws."""
    return seed * 100_003 + epoch


def best_epoch_note(best_acc: float) -> str:
    return (f"validation logits from the best epoch by validation accuracy ({best_acc:.4f}), "
            "as pytorch/examples imagenet keeps model_best: chosen on the reported validation images, "
            "so optimistic; the last epoch's metrics are recorded beside them")


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def loss_error(value: float, epoch: int) -> TrainingError:
    return TrainingError(f"loss became {value} in epoch {epoch + 1}: stopping instead of writing garbage "
                         "(lower the learning rate or check the input images)")


def run_to_end(runner: Generator[None, None, FitResult]) -> FitResult:
    """A training that takes turns (a generator), run to its end: its result."""
    while True:
        try:
            next(runner)
        except StopIteration as done:
            return done.value
