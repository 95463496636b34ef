"""The optimiser and the learning-rate schedule of every training."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, graphed: bool,
                   fused: bool = False) -> torch.optim.Adam:
    """The recipe's Adam; for a CUDA graph (which replays the optimiser step too) capturable, with
    its state and learning rate as tensors on the model's device. ``fused``: one kernel for all
    parameters instead of a few per group of tensors (same update up to rounding)."""
    if graphed:
        lr = torch.tensor(lr, device=next(model.parameters()).device)
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, capturable=graphed,
                            fused=True if fused else None)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): ``step``, the recipe's (``lr`` / 10 every ``lr_step``
    epochs), or ``cosine`` (from ``lr`` down towards 0 over ``epochs``)."""
    if epoch < cfg.warmup_epochs:  # linear warm-up: lr / warmup, 2 lr / warmup, ... up to lr
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":  # after the warm-up, from lr down towards 0 over the epochs left
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / (cfg.epochs - cfg.warmup_epochs)))
    return cfg.lr * 0.1 ** (epoch // cfg.lr_step)


def set_lr(opt: torch.optim.Optimizer, value: float) -> None:
    """Set the learning rate in place (a tensor lr keeps its address, which a captured graph reads)."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
