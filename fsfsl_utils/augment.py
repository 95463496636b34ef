"""Augmentation, all of it: offline copies, training-time views and test-time views.

Offline expansion of the TRAIN part with labelled, audited copies:

An *operation* turns one uint8 image into another with a parameter drawn from a seeded
range (torchvision.transforms.v2.functional does the pixel work). A *policy* is plain data:
which operations each class gets, one copy per listed operation. :func:`expand` returns
the originals plus the copies; every copy's metadata row names its source image, the
operation and the parameter, so the expanded set can be browsed and audited.

The study's sets: ``flip`` doubles (1508 / 716; the study: about 2200 images); ``full`` draws a
seeded random subset of every image's flip, brightness and clarity copies so that each class grows
by the study's factor (754 -> 2210 normal, 358 -> 1174 defective: 2.93x / 3.28x; which copies the
study kept was not published); ``full_x4`` keeps all three copies (3016 / 1432); ``balanced``
gives exactly the study's 1508 / 1432.

Strengths: each brightness or clarity copy moves its image about one sensitivity bin (quintile) of
that feature, the step the study's analysis reads. On the study's training part the medians of
adjacent brightness quintiles differ by a factor of 1.07-1.25 (geometric mean 1.13) and of
clarity (Laplacian variance) quintiles by 1.69-2.07 (1.86). Hence brightness factors 0.87-0.93 or
1.08-1.13 (brighter clips more than 2% of a cell's pixels to 255: about 2.5% at 1.15 and 3.7% at
1.2 on samples of 150-200 training cells) and sharpness factors 0-0.3 (clarity x0.49-0.65) or 1.5-1.9 (x1.5-2.0).
``tests/test_augment.py`` checks both properties on the training part.

Parameters are drawn per (seed, source image, operation, copy number), so the same image
gets the same brightness copy in every policy that asks for one (and the feature cache
reuses it).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF

from . import models, study
from .data import Dataset
from .progress import progress_bar
from .study import class_roles


@dataclass(frozen=True)
class Operation:
    """One augmentation: ``apply(image_tensor_CHW_uint8, param) -> image``; param drawn from ``ranges``."""

    name: str
    apply: Callable[[torch.Tensor, float], torch.Tensor]
    ranges: tuple[tuple[float, float], ...] = ()
    doc: str = ""

    def draw(self, rng: np.random.Generator) -> float:
        if not self.ranges:
            return float("nan")
        lo, hi = self.ranges[rng.integers(len(self.ranges))]
        return float(rng.uniform(lo, hi))


def _box_blur(img: torch.Tensor, param: float) -> torch.Tensor:
    x = torch.nn.functional.avg_pool2d(img.float().unsqueeze(0), 3, stride=1, padding=1, count_include_pad=False)
    return x[0].round_().clamp_(0, 255).to(torch.uint8)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    return TF.gaussian_blur(img, kernel_size=[5, 5], sigma=[sigma, sigma])


OPERATIONS: dict[str, Operation] = {op.name: op for op in (
    Operation("copy", lambda x, p: x.clone(), doc="identical copy (oversampling control)"),
    Operation("hflip", lambda x, p: TF.horizontal_flip(x), doc="mirror left-right"),
    Operation("vflip", lambda x, p: TF.vertical_flip(x), doc="mirror top-bottom"),
    Operation("brightness", lambda x, p: TF.adjust_brightness(x, p), ((0.87, 0.93), (1.08, 1.13)),
              "multiply gray levels by a factor (darker 0.87-0.93 or brighter 1.08-1.13: about one brightness bin)"),
    Operation("clarity", lambda x, p: TF.adjust_sharpness(x, p), ((0.0, 0.3), (1.5, 1.9)),
              "sharpness factor: < 1 blurs (3x3 smoothing blend), > 1 sharpens (about one clarity bin)"),
    Operation("blur", _blur, ((0.5, 1.5),), "Gaussian blur, 5x5 kernel, sigma 0.5-1.5"),
    Operation("boxblur", _box_blur, doc="3x3 box blur (the study's blur test-time view)"),
    Operation("sharpen", lambda x, p: TF.adjust_sharpness(x, p), ((2.0, 3.0),), "sharpness factor 2-3"),
    Operation("rot90", lambda x, p: torch.rot90(x, 1, (-2, -1)), doc="rotate a quarter turn (counter-clockwise)"),
    Operation("rot180", lambda x, p: torch.rot90(x, 2, (-2, -1)), doc="rotate a half turn"),
    Operation("rot270", lambda x, p: torch.rot90(x, 3, (-2, -1)), doc="rotate three quarter turns"),
    Operation("transpose", lambda x, p: x.transpose(-2, -1), doc="mirror about the main diagonal"),
    Operation("antitranspose", lambda x, p: torch.rot90(x, 2, (-2, -1)).transpose(-2, -1),
              doc="mirror about the other diagonal"),
)}


GROUPS = ("*", "@majority", "@minority")


@dataclass(frozen=True)
class Policy:
    """Which operations each class gets: ``rules[key] = (op, op, ...)``, one copy per listed operation.

    A key is a class name, ``"*"`` (every class), ``"@majority"`` (the reference class of the training
    part: the largest, :func:`fsfsl_utils.study.class_roles`) or ``"@minority"`` (every other class, the
    target among them). A class name wins over a group, a group over ``"*"``.
    """

    name: str
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    doc: str = ""
    growth: Mapping[str, float] = field(default_factory=dict)  # key as in rules: images per original, at most

    def ops_for(self, class_name: str, class_counts: Mapping[str, int] | None = None,
                target: str | None = None) -> tuple[str, ...]:
        """The operations for one class (``class_counts`` and a named ``target`` decide majority / minority)."""
        return tuple(_for_class(self.rules, class_name, class_counts, (), target))

    def growth_for(self, class_name: str, class_counts: Mapping[str, int] | None = None,
                   target: str | None = None) -> float | None:
        """How many times its original count a class grows to (None: one copy per listed operation)."""
        return _for_class(self.growth, class_name, class_counts, None, target)

    def check(self, class_names: Sequence[str]) -> None:
        """Raise ValueError if the policy names an unknown class or operation."""
        for cls in self.growth:
            if cls not in GROUPS and cls not in class_names:
                raise ValueError(f"policy {self.name!r} sets the growth of class {cls!r}, which this data set does "
                                 f"not have; its classes: {', '.join(class_names)}")
        for cls, ops in self.rules.items():
            if cls not in GROUPS and cls not in class_names:
                raise ValueError(f"policy {self.name!r} names class {cls!r}, which this data set does not have; "
                                 f"its classes: {', '.join(class_names)}")
            for op in ops:
                check_operation(op)

    def counts(self, class_counts: Mapping[str, int], target: str | None = None) -> dict[str, int]:
        """Images per class after expansion, from the counts before it."""
        return {c: n + self.copies(c, n, class_counts, target) for c, n in class_counts.items()}

    def copies(self, class_name: str, n: int, class_counts: Mapping[str, int] | None = None,
               target: str | None = None) -> int:
        """How many copies a class of ``n`` images gets."""
        available = n * len(self.ops_for(class_name, class_counts, target))
        growth = self.growth_for(class_name, class_counts, target)
        return available if growth is None else min(available, round(n * growth) - n)


def _for_class(table: Mapping, class_name: str, class_counts: Mapping[str, int] | None, default: object,
               target: str | None = None) -> object:
    """A policy table's entry for one class: its name wins over its group (``@majority`` is the reference
    class of :func:`fsfsl_utils.study.class_roles`, ``@minority`` every other), a group over ``"*"``."""
    if class_name in table:
        return table[class_name]
    if class_counts and len(class_counts) > 1 and ("@majority" in table or "@minority" in table):
        _, majority = class_roles(list(class_counts), class_counts, target)
        group = "@majority" if class_name == majority else "@minority"
        if group in table:
            return table[group]
    return table.get("*", default)


POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("none", {}, "no expansion (the study's baseline)"),
    Policy("flip", {"*": ("hflip",)}, "every image plus its mirror: x2"),
    Policy("full", {"*": ("hflip", "brightness", "clarity")},
           "a seeded random subset of the flip, brightness and clarity copies of every class, grown by the "
           "study's factors (normal 754 -> 2210, defective 358 -> 1174)",
           growth={"@majority": 2210 / 754, "@minority": 1174 / 358}),
    Policy("full_x4", {"*": ("hflip", "brightness", "clarity")},
           "flip, brightness and clarity copies for every class: x4"),
    Policy("balanced", {"@majority": ("hflip",), "@minority": ("hflip", "brightness", "clarity")},
           "largest class x2, the others x4: on ELPV normal 1508 / defective 1432, the study's counts"),
    Policy("balanced_duplicate", {"@majority": ("hflip",), "@minority": ("copy", "copy", "copy")},
           "control: like balanced, but the smaller classes get plain copies (no new content)"),
)}


def get_policy(policy: str | Policy) -> Policy:
    """A Policy by name (or the Policy itself); unknown names list the valid ones."""
    if isinstance(policy, Policy):
        return policy
    if policy not in POLICIES:
        raise ValueError(f"unknown augmentation policy {policy!r}; valid: {', '.join(POLICIES)}")
    return POLICIES[policy]


def check_operation(op: str) -> Operation:
    if op not in OPERATIONS:
        raise ValueError(f"unknown augmentation operation {op!r}; valid: {', '.join(OPERATIONS)}")
    return OPERATIONS[op]


def draw_param(op: str, source: str, seed: int, copy: int = 0) -> float:
    """The parameter an operation gets for one source image: a pure function of its inputs."""
    key = zlib.crc32(f"{source}|{op}".encode())
    return check_operation(op).draw(np.random.default_rng([seed, key, copy]))


def apply_operation(image: np.ndarray, op: str, param: float) -> np.ndarray:
    """Apply one operation to one uint8 image (H x W or H x W x 3); returns uint8 of the same shape."""
    t = torch.from_numpy(np.ascontiguousarray(image))
    chw = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    out = check_operation(op).apply(chw, param)
    out = out[0] if t.ndim == 2 else out.permute(1, 2, 0)
    return out.contiguous().numpy()


def expand(train: Dataset, policy: str | Policy, seed: int = 0, progress: bool | None = None,
           target_class: str | None = None) -> Dataset:
    """Originals plus one copy per operation the policy lists for each image's class (``target_class``:
    the class named as the target, never the ``@majority``).

    Only a training part may be expanded: a Dataset with validation rows is refused.
    """
    policy = get_policy(policy)
    policy.check(train.class_names)
    if (train.meta["split"] == "val").any():
        raise ValueError("expand() takes the TRAIN part only: this Dataset has validation images")
    counts = train.counts()
    plan = [(i, op, k) for i, label in enumerate(train.labels)
            for k, op in enumerate(policy.ops_for(train.class_names[label], counts, target_class))]
    if policy.growth:  # keep a seeded random subset of each class's copies, in plan order
        rng = np.random.default_rng([seed, zlib.crc32(policy.name.encode())])
        labels = train.labels
        keep = []
        for c, name in enumerate(train.class_names):
            own = [j for j, (i, _, _) in enumerate(plan) if labels[i] == c]
            keep += rng.permutation(own)[:policy.copies(name, counts[name], counts, target_class)].tolist()
        plan = [plan[j] for j in sorted(keep)]
    if not plan:
        return train.subset(np.arange(len(train)))
    n = len(train)
    out = np.empty((n + len(plan),) + train.images.shape[1:], np.uint8)
    out[:n] = train.images
    sources = train.meta["source"].tolist()
    params = []
    for j, (i, op, k) in enumerate(progress_bar(plan, desc=f"expand[{policy.name}]", enable=progress), start=n):
        param = draw_param(op, sources[i], seed, k)
        out[j] = apply_operation(train.images[i], op, param)
        params.append("" if np.isnan(param) else f"{param:.4f}")
    new_meta = train.meta.iloc[[i for i, _, _ in plan]].reset_index(drop=True)
    new_meta["name"] = [f"{name}#{op}{k}" for name, (_, op, k) in zip(new_meta["name"], plan)]
    new_meta["op"] = [op for _, op, _ in plan]
    new_meta["param"] = params
    return Dataset(out, pd.concat([train.meta, new_meta], ignore_index=True), list(train.class_names))


def manifest(ds: Dataset) -> pd.DataFrame:
    """The audit table of an expanded set: name, class, source, operation, parameter."""
    frame = ds.meta[["name", "source", "op", "param"]].copy()
    frame.insert(1, "class", [ds.class_names[i] for i in ds.labels])
    return frame


# ----------------------------------------------------------------------------- test-time views
TEST_VIEWS: dict[str, str] = {"vflip": "vflip", "blur": "boxblur",  # view -> operation: the study's TTA
                              **{v: v for v in ("hflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")}}
DEFAULT_VIEWS = ("vflip", "blur")  # the test-time views whose logits a training keeps (the study's TTA, in 05)
# the image itself and these seven: the eight symmetries of a square (flips and quarter turns), exact on square cells
DIHEDRAL_VIEWS = study.DIHEDRAL_VIEWS


def check_views(views: Sequence[str]) -> None:
    """ValueError naming a test-time view that is not in :data:`TEST_VIEWS`."""
    for v in views:
        if v not in TEST_VIEWS:
            raise ValueError(f"unknown test-time view {v!r}; valid: {', '.join(TEST_VIEWS)}")


def view_images(ds: Dataset, view: str) -> np.ndarray:
    """A Dataset's images as seen by one test-time view (:data:`TEST_VIEWS`) or parameter-free
    operation (e.g. ``hflip``), made once per Dataset (:meth:`Dataset.derived`): every step reuses them."""
    op = TEST_VIEWS.get(view, view)
    check_operation(op)
    return ds.derived(f"view:{view}", lambda: np.stack([apply_operation(im, op, float("nan")) for im in ds.images]))


# ----------------------------------------------------------------------------- training-time augmentation
Draws = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TrainAugmentation:
    """A training-time augmentation of the fine-tuning loop (config ``train_aug``).

    ``draw(n, height, width, generator)`` makes an epoch's random draws for all of its images at
    once, on the CPU (runs reproduce on any device); ``apply(images, draws, size, backbone,
    crop_fraction)`` turns a chunk of uint8 images, with their slice of the draws, into the
    backbone's normalised inputs on the images' device. ``symmetries``: the exact test-time views
    (:data:`TEST_VIEWS`) it shows in training, which test-time averaging can use without showing
    the model anything new.
    """

    name: str
    draw: Callable[[int, int, int, torch.Generator], Draws]
    apply: Callable[[torch.Tensor, Draws, int, str, float], torch.Tensor]
    doc: str = ""
    symmetries: tuple[str, ...] = ()


def draw_crops(n: int, height: int, width: int, generator: torch.Generator,
               scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
               hflip: bool = True, attempts: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` RandomResizedCrop boxes (``x0, y0, x1, y1``, float, CPU) and horizontal flips (bool, CPU).

    torchvision's ``RandomResizedCrop.get_params``, vectorised: up to ``attempts`` draws of area
    and aspect ratio per image (integer sides, the first draw that fits the image wins), else the
    central crop of the largest box whose aspect ratio lies in ``ratio``; integer offsets. Drawn
    from ``generator`` on the CPU, so runs are reproducible on any device; a training epoch draws
    all of its boxes at once.
    """
    area = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator) * (height * width)
    log_ratio = torch.empty(n, attempts).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])),
                                                  generator=generator)
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).round()
    h = torch.sqrt(area / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(1)  # the first draw that fits (0 when none does)
    rows = torch.arange(n)
    found = fits.any(1)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fallback_w, fallback_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fallback_w, fallback_h = round(height * ratio[1]), height
    else:
        fallback_w, fallback_h = width, height
    cw = torch.where(found, w[rows, first], torch.tensor(float(fallback_w)))
    ch = torch.where(found, h[rows, first], torch.tensor(float(fallback_h)))
    x0 = torch.floor(torch.rand(n, generator=generator) * (width - cw + 1))
    y0 = torch.floor(torch.rand(n, generator=generator) * (height - ch + 1))
    x0 = torch.where(found, x0, torch.tensor(float((width - fallback_w) // 2)))
    y0 = torch.where(found, y0, torch.tensor(float((height - fallback_h) // 2)))
    flips = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], 1), flips


def apply_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int,
                backbone: str) -> torch.Tensor:
    """Crop ``boxes`` out of uint8 ``images`` (one box per image), resize to ``size`` (bilinear,
    roi_align), flip where ``flips``, normalise for ``backbone``. Runs on the images' device."""
    from torchvision.ops import roi_align

    x = models.unit_images(images)
    b = x.shape[0]
    index = torch.arange(b, dtype=torch.float, device=x.device).view(b, 1)
    rois = torch.cat([index, boxes.to(x.device, torch.float, non_blocking=True)], 1)
    out = roi_align(x.contiguous(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2,
                    aligned=True)
    flips = flips.to(x.device, non_blocking=True).view(b, 1, 1, 1)
    return models.normalise(torch.where(flips, out.flip(-1), out), backbone)


def draw_dihedral(n: int, height: int, width: int, generator: torch.Generator) -> Draws:
    """Per image one of the eight symmetries of a square: a quarter-turn count (0-3) and a flip."""
    return torch.randint(0, 4, (n,), generator=generator), torch.rand(n, generator=generator) < 0.5


def dihedral(views: torch.Tensor, turns: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Each square image of ``views`` (``B x C x S x S``) turned ``turns`` quarter turns, then mirrored
    left-right where ``flips``: all eight symmetries, exact (pixels move, none is interpolated)."""
    turns, flips = turns.to(views.device), flips.to(views.device)
    out = views
    for k in (1, 2, 3):
        out = torch.where((turns == k).view(-1, 1, 1, 1), torch.rot90(views, k, (-2, -1)), out)
    return torch.where(flips.view(-1, 1, 1, 1), out.flip(-1), out)


def _dihedral(images: torch.Tensor, draws: Draws, size: int, backbone: str, crop_fraction: float) -> torch.Tensor:
    return dihedral(models.preprocess(images, backbone, size, crop_fraction), *draws)


def _flipped(images: torch.Tensor, draws: Draws, size: int, backbone: str, crop_fraction: float) -> torch.Tensor:
    views = models.preprocess(images, backbone, size, crop_fraction)
    flip = draws[0].to(views.device).view(-1, 1, 1, 1)
    return torch.where(flip, views.flip(-1), views)


TRAIN_TIME: dict[str, TrainAugmentation] = {a.name: a for a in (
    TrainAugmentation("paper", draw_crops, lambda x, d, size, backbone, _: apply_crops(x, d[0], d[1], size, backbone),
                      "RandomResizedCrop to the input size + horizontal flip (pytorch/examples imagenet)",
                      study.TRAINING_VIEWS["paper"]),
    TrainAugmentation("flip", lambda n, h, w, gen: (torch.rand(n, generator=gen) < 0.5,), _flipped,
                      "horizontal flip with probability 0.5 (exact over cached activations in mode 'top')",
                      study.TRAINING_VIEWS["flip"]),
    TrainAugmentation("dihedral", draw_dihedral, _dihedral,
                      "one of the eight symmetries of a square per image (flips and quarter turns; a cell has no "
                      "up or left)", study.TRAINING_VIEWS["dihedral"]),
    TrainAugmentation("none", lambda n, h, w, gen: (),
                      lambda x, d, size, backbone, crop: models.preprocess(x, backbone, size, crop),
                      "none: the evaluation transform"),
)}


def get_train_augmentation(name: str) -> TrainAugmentation:
    """A training-time augmentation by name; unknown names list the valid ones."""
    if name not in TRAIN_TIME:
        raise ValueError(f"train_aug must be one of {', '.join(map(repr, TRAIN_TIME))}, got {name!r}")
    return TRAIN_TIME[name]


def training_views(train_aug: str) -> tuple[str, ...]:
    """The test-time views a model trained with ``train_aug`` has seen in training: averaging over these
    is test-time augmentation it knows (a quarter-turned cell, for a model trained on flips only, moves
    its scores along the ROC curve instead of up)."""
    return get_train_augmentation(train_aug).symmetries
