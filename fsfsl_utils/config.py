"""One training's settings as one typed, frozen object: :class:`TrainConfig`.

Every training parameter is declared once, here, with its default and its allowed values; a
config checks itself when it is made, so a bad value fails where it was given, with the
parameter's name. Profiles (:mod:`fsfsl_utils.profiles`) are partial dicts of these fields; a
step's record keeps :meth:`TrainConfig.as_dict`, so the record says every setting the training
used, defaults included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import augment, models  # the registries a config is checked against (both below this module)

MODES = ("probe", "finetune", "top")


def _number(low: float, high: float, open_low: bool = False) -> dict:
    return {"range": (low, high, open_low)}


def _choice(*values: str) -> dict:
    return {"choices": values}


@dataclass(frozen=True)
class TrainConfig:
    """What one training does. ``mode``: ``probe`` (frozen backbone, cached features, linear head),
    ``top`` (the top blocks fine-tuned over cached activations) or ``finetune`` (the whole network,
    the pytorch/examples imagenet recipe)."""

    mode: str = field(default="probe", metadata=_choice(*MODES))
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"  # "imagenet", a checkpoint path, or None (random initialisation)
    input_size: int = field(default=224, metadata=_number(16, 2048))
    crop_fraction: float = field(default=1.0, metadata=_number(0, 1, open_low=True))
    device: str = "auto"
    # finetune and top: the study's recipe
    epochs: int = field(default=50, metadata=_number(1, 10_000))
    batch_size: int = field(default=16, metadata=_number(1, 65_536))
    lr: float = field(default=1e-3, metadata=_number(0, 10, open_low=True))
    lr_step: int = field(default=30, metadata=_number(1, 100_000))  # lr / 10 every lr_step epochs ("step")
    lr_schedule: str = field(default="step", metadata=_choice("step", "cosine"))
    warmup_epochs: int = field(default=0, metadata=_number(0, 10_000))  # lr rises linearly from lr / warmup first
    weight_decay: float = field(default=0.0, metadata=_number(0, 1))
    train_aug: str = "paper"  # finetune: a training-time augmentation of augment.TRAIN_TIME; top: flip or none
    # finetune speed layers (used on CUDA only)
    amp: bool = True
    cuda_graphs: bool = True
    channels_last: bool = True
    fused_adam: bool = True
    compile: bool = False
    # probe head: L2 logistic regression fitted to convergence, C by grouped cross-validation
    head_cs: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 0.1)
    head_folds: int = field(default=3, metadata=_number(2, 100))
    head_max_iter: int = field(default=2000, metadata=_number(10, 1_000_000))
    head_tol: float = field(default=1e-6, metadata=_number(0, 1))
    feature_batch_size: int | None = None
    # top: how many of the backbone's top blocks are trained
    trained_blocks: int = 1
    # all modes
    class_weight: str = field(default="none", metadata=_choice("none", "balanced"))
    # finetune and top: the stronger recipe's ingredients, each off by default
    label_smoothing: float = field(default=0.0, metadata=_number(0, 0.5))  # cross-entropy's label smoothing
    sampler: str = field(default="shuffle", metadata=_choice("shuffle", "balanced"))  # balanced: classes drawn equally
    ema_decay: float = field(default=0.0, metadata=_number(0, 0.9999))  # > 0: an average of the weights is kept

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        cs = self.head_cs
        if not isinstance(cs, (list, tuple)) or not cs or not all(isinstance(c, (int, float)) and c > 0 for c in cs):
            raise ValueError(f"head_cs must be a non-empty list of positive regularisation strengths, got {cs!r}")
        object.__setattr__(self, "head_cs", tuple(cs))
        augment.get_train_augmentation(self.train_aug)
        spec = models.get_spec(self.backbone)
        if self.input_size < spec.min_input_size:
            raise ValueError(f"input_size {self.input_size} is too small for {self.backbone}: it needs at least "
                             f"{spec.min_input_size} px")
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be fewer than epochs ({self.epochs})")
        if self.mode == "top":
            models.check_trained_blocks(self.backbone, self.trained_blocks)
            if self.train_aug not in ("flip", "dihedral", "none"):
                raise ValueError(f"train_aug {self.train_aug!r} needs the images, but mode 'top' trains on cached "
                                 "activations: use 'flip' or 'dihedral' (exact, each view cached) or 'none'")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | TrainConfig | None = None) -> TrainConfig:
        """A config from a (partial) dict of parameters; unknown names are an error that lists the valid ones."""
        if isinstance(values, TrainConfig):
            return values
        values = dict(values or {})
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown training parameter(s) {sorted(unknown)}; valid: {', '.join(FIELDS)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some parameters changed (checked like a new config)."""
        return TrainConfig.from_dict({**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """Every parameter by name, for records and checkpoints."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


def _check_field(f: dataclasses.Field, value: object) -> None:
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        if f.name == "mode":
            raise ValueError(f"unknown training mode {value!r}; valid: {', '.join(MODES)}")
        raise ValueError(f"{f.name} must be {' or '.join(repr(c) for c in f.metadata['choices'])}, got {value!r}")
    if "range" in f.metadata:
        lo, hi, open_low = f.metadata["range"]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi \
                or (open_low and value <= lo):
            raise ValueError(f"{f.name} must be a number in {'(' if open_low else '['}{lo}, {hi}], got {value!r}")
    if f.type == "bool" and not isinstance(value, bool):
        raise ValueError(f"{f.name} must be True or False, got {value!r}")
