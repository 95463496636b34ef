"""Profiles: named, flat training configs (plain data), printed at the top of every run.

- ``cpu``: frozen EfficientNet-Lite0 at 224 px, cached features, linear head (seconds per step
  once the cache is warm); 5 seeds per step by default.
- ``cpu-finetune``: EfficientNet-Lite0 at 224 px with its top block, head and a linear layer
  fine-tuned over cached activations (:mod:`fsfsl_utils.train.top`; exact cached flips, Adam 1e-3 with
  weight decay 1e-4, cosine lr, batch 32); a model that learns from the augmented copies, on a
  laptop, at about a minute per training.
- ``paper``: the study's recipe (pytorch/examples imagenet): fine-tune, Adam lr 1e-3 with the
  script's weight decay 1e-4, batch 16, 50 epochs, lr / 10 every 30 epochs, RandomResizedCrop(224)
  + flip, Resize(256)+CenterCrop(224) for validation, fp32 (no autocast) like the study; 5 seeds
  (fine-tuning on 1.1k images varies by a point or two between seeds). ResNet50 when its ImageNet
  weights are on this machine, else EfficientNet-Lite0 (said in the run's notes).
- ``smoke``: a few dozen images, 64 px, one fine-tune epoch: for tests only.
- ``auto`` (default): ``paper`` when CUDA is available, else ``cpu``.
"""

from __future__ import annotations

import torch

from . import models
from .config import TrainConfig

PROFILES: dict[str, dict] = {
    "cpu": {"mode": "probe", "backbone": "efficientnet_lite0", "input_size": 224, "crop_fraction": 1.0,
            "limit_per_class": None, "seeds": 5},
    "cpu-finetune": {"mode": "top", "backbone": "efficientnet_lite0", "input_size": 224, "crop_fraction": 1.0,
                     "trained_blocks": 1, "epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4,
                     "lr_schedule": "cosine", "train_aug": "flip", "limit_per_class": None, "seeds": 5},
    "paper": {"mode": "finetune", "backbone": "resnet50", "input_size": 224, "crop_fraction": 224 / 256,
              "epochs": 50, "batch_size": 16, "lr": 1e-3, "lr_step": 30, "weight_decay": 1e-4, "train_aug": "paper",
              "amp": False, "limit_per_class": None, "seeds": 5},
    # the base recipes of notebook 06, which adds the stronger recipe's ingredients to them one at a time
    "cpu-strong": {"mode": "top", "backbone": "efficientnet_lite0", "input_size": 224, "crop_fraction": 1.0,
                   "trained_blocks": 1, "epochs": 10, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4,
                   "lr_schedule": "cosine", "train_aug": "flip", "limit_per_class": None, "seeds": 5},
    "gpu-strong": {"mode": "finetune", "backbone": "efficientnet_lite0", "input_size": 224, "crop_fraction": 1.0,
                   "epochs": 30, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4, "lr_schedule": "cosine",
                   "train_aug": "paper", "amp": True, "limit_per_class": None, "seeds": 5},
    "smoke": {"mode": "finetune", "backbone": "efficientnet_lite0", "input_size": 64, "crop_fraction": 1.0,
              "epochs": 1, "batch_size": 16, "train_aug": "flip", "limit_per_class": 16, "seeds": 1,
              "threshold_folds": 0},
}
PROFILE_NAMES = ("auto", *PROFILES)
RUN_KEYS = ("limit_per_class", "seeds", "threshold_folds")  # profile keys that are not training parameters
THRESHOLD_FOLDS = 3  # training-part folds choosing a kept model's operating point, unless a profile says


def resolve(profile: str = "auto", **overrides) -> dict:
    """The profile's config with overrides (None values ignored) and the notes that explain choices.

    Returns a dict with ``profile`` (the name resolved to), ``requested``, ``config`` (the
    :class:`~fsfsl_utils.config.TrainConfig`, checked), ``limit_per_class``, ``seeds`` (default
    number of seeds), ``threshold_folds`` (the folds that choose a kept model's operating point; the
    smoke profile: none) and ``notes``.
    """
    if profile not in PROFILE_NAMES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILE_NAMES)}")
    notes = []
    name = profile
    if profile == "auto":
        name = "paper" if torch.cuda.is_available() else "cpu"
        notes.append(f"profile auto -> {name} ({'CUDA available' if name == 'paper' else 'no CUDA: frozen probe'})")
    cfg = dict(PROFILES[name])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if name == "paper" and "backbone" not in {k for k, v in overrides.items() if v is not None} \
            and not models.weights_available("resnet50"):
        cfg["backbone"] = "efficientnet_lite0"
        notes.append("ResNet50 ImageNet weights are not on this machine "
                     f"(looked in {models.hub_checkpoint_dir()}): fine-tuning EfficientNet-Lite0 instead")
    run = {k: cfg.pop(k) for k in RUN_KEYS if k in cfg}
    run.setdefault("threshold_folds", THRESHOLD_FOLDS)
    return {"profile": name, "requested": profile, "config": TrainConfig.from_dict(cfg), **run, "notes": notes}


def describe(resolved: dict) -> str:
    """Human-readable block for the top of a notebook or log."""
    lines = [f"profile: {resolved['profile']} (asked: {resolved['requested']})"]
    defaults = TrainConfig()
    lines += [f"  {k} = {v!r}" for k, v in resolved["config"].as_dict().items()
              if k in ("mode", "backbone", "input_size") or v != getattr(defaults, k)]
    lines += [f"  {k} = {resolved.get(k)!r}" for k in RUN_KEYS]
    lines += [f"note: {n}" for n in resolved["notes"]]
    if resolved["profile"] == "smoke":
        lines.append("note: smoke profile: a few images, tiny inputs, one epoch; the numbers only show that the "
                     "pipeline runs and mean nothing about the study")
    return "\n".join(lines)
