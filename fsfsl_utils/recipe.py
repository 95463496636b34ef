"""The stronger recipe of notebook 06: its ingredients in the order 06 adds them, one at a time, to a
base profile's recipe, and the final recipe made of those that bought something.

Plain data and small functions: what each ingredient changes (training settings and, for soft
labels, the label policy), the ladder of cumulative arms 06 trains (``06_0_base``, ``06_1_blocks``,
...), and the final recipe read off the ablation table (an ingredient is kept when adding it showed
a gain in accuracy or in the target class's recall under the kit's verdict rule, and no loss in
the other). Each ingredient is a :class:`~fsfsl_utils.config.TrainConfig` setting that is off by
default, tested in ``tests/test_recipe.py``. The ingredients are kept by their effects on the
validation images, so the final recipe's scores on those same images are optimistic (06 says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd

from . import augment
from .config import TrainConfig


@dataclass(frozen=True)
class Ingredient:
    """One ingredient: its name (part of its arm's step name), what it is in words, and the settings it
    changes given the recipe so far (``labels``: a label policy it needs, e.g. ``soft``)."""

    name: str
    title: str
    changes: Callable[[TrainConfig], dict] = field(repr=False)
    modes: tuple[str, ...] = ("top", "finetune")
    labels: str | None = None


INGREDIENTS: tuple[Ingredient, ...] = (
    Ingredient("blocks", "five top blocks trained instead of one", lambda c: {"trained_blocks": 5}, ("top",)),
    Ingredient("resolution", "the cells' own 300 px", lambda c: {"input_size": 300, "crop_fraction": 1.0}),
    Ingredient("dihedral", "the eight symmetries of a square as training views",
               lambda c: {"train_aug": "dihedral"}),
    Ingredient("smoothing", "label smoothing 0.1", lambda c: {"label_smoothing": 0.1}),
    Ingredient("schedule", "a warm-up epoch, cosine decay and half as many epochs again",
               lambda c: {"warmup_epochs": 1, "lr_schedule": "cosine", "epochs": max(2, math.ceil(1.5 * c.epochs))}),
    Ingredient("average", "an average of the weights (EMA, decay 0.99)", lambda c: {"ema_decay": 0.99}),
    Ingredient("soft_labels", "the 401 unsure cells (p = 1/3, 2/3) with soft labels", lambda c: {}, labels="soft"),
    Ingredient("sampler", "a class-balanced sampler", lambda c: {"sampler": "balanced"}),
    Ingredient("lite2", "EfficientNet-Lite2 instead of Lite0", lambda c: {"backbone": "efficientnet_lite2"}),
)
NAMES = tuple(i.name for i in INGREDIENTS)
BASE_STEP = "06_0_base"
BASE_PAIRS_NOTE = ("Each arm against the base: what the recipe so far buys. A family of its own, adjusted apart from "
                   "the arm-by-arm table above; no ingredient is kept or dropped by it.")
FINAL_STEP = "06_final"


@dataclass(frozen=True)
class Rung:
    """One arm of the ladder: its step name, what it adds, the settings over the base profile's and the
    label policy (None: the notebook's)."""

    step: str
    title: str
    config: Mapping[str, object]
    labels: str | None = None
    ingredient: str | None = None  # None: the base


def base_profile(profile: str, cuda: bool) -> str:
    """The base profile of notebook 06: ``auto`` is ``gpu-strong`` with CUDA, else ``cpu-strong``."""
    return ("gpu-strong" if cuda else "cpu-strong") if profile == "auto" else profile


def parse_names(text: str) -> list[str] | None:
    """Comma-separated ingredient names (a notebook parameter); empty: all of them."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names:
        get_ingredients(names)  # a clear error for an unknown name
    return names or None


def parse_shares(text: str) -> list[float]:
    """Comma-separated shares of the training labels for a learning curve (empty: no curve)."""
    try:
        shares = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"LEARNING_CURVE must be comma-separated numbers in (0, 1], got {text!r}") from None
    if any(not 0 < s <= 1 for s in shares):
        raise ValueError(f"LEARNING_CURVE shares must lie in (0, 1], got {text!r}")
    return sorted(set(shares))


def curve_step(recipe: str, share: float) -> str:
    """The step name of one point of a learning curve (``06_curve_final_25`` for a quarter)."""
    return f"06_curve_{recipe}_{round(100 * share):g}"


def get_ingredients(names: Sequence[str] | None = None) -> list[Ingredient]:
    """The ingredients by name, in the ladder's order (None: all); ValueError lists the valid names."""
    if names is None:
        return list(INGREDIENTS)
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown ingredient(s) {unknown}; valid: {', '.join(NAMES)}")
    return [i for i in INGREDIENTS if i.name in names]


def ladder(base: TrainConfig, names: Sequence[str] | None = None, elpv: bool = True) -> list[Rung]:
    """The base recipe, then each ingredient added to all before it (one arm per ingredient), skipping
    those that do not apply to the base's mode or change nothing (and, on other data than ELPV
    (``elpv`` False), the soft labels of ELPV's unsure cells)."""
    rungs = [Rung(BASE_STEP, "the base profile's recipe", {})]
    config, labels = base, None
    for ingredient in get_ingredients(names):
        if base.mode not in ingredient.modes or (ingredient.labels == "soft" and not elpv):
            continue
        changes = {k: v for k, v in ingredient.changes(config).items() if getattr(config, k) != v}
        if not changes and (ingredient.labels is None or ingredient.labels == labels):
            continue
        config = config.replace(**changes)
        labels = ingredient.labels or labels
        overrides = {k: v for k, v in config.as_dict().items() if v != getattr(base, k)}
        rungs.append(Rung(f"06_{len(rungs)}_{ingredient.name}", f"+ {ingredient.title}", overrides, labels,
                          ingredient.name))
    return rungs


def kept(table_rows: Sequence[Mapping], rungs: Sequence[Rung], target: str) -> list[str]:
    """The ingredients the final recipe keeps, read off the ablation (each arm against the one before
    it, rows with ``A``, ``B`` and the verdict columns of :func:`fsfsl_utils.report.paired_tests`): a
    gain shown in accuracy or in ``target``'s recall, and no loss shown in the other."""
    by_pair = {(row["A"], row["B"]): row for row in table_rows}
    out = []
    for before, after in zip(rungs, rungs[1:]):
        row = by_pair.get((after.step, before.step))
        if row is None:
            continue
        verdicts = [(row.get(f"{label} verdict") or "", row.get(f"{label} effect (pts)"))
                    for label in ("accuracy", f"{target} recall")]
        gains = [v.startswith("difference shown") and (e or 0) > 0 for v, e in verdicts]
        losses = [v.startswith("difference shown") and (e or 0) < 0 for v, e in verdicts]
        if any(gains) and not any(losses):
            out.append(after.ingredient)
    return out


def final_rung(base: TrainConfig, keep: Sequence[str]) -> Rung:
    """The final recipe: the base with the kept ingredients only, added in the ladder's order."""
    config, labels = base, None
    for ingredient in get_ingredients(keep):
        if base.mode in ingredient.modes:
            config = config.replace(**ingredient.changes(config))
            labels = ingredient.labels or labels
    overrides = {k: v for k, v in config.as_dict().items() if v != getattr(base, k)}
    kept_words = ", ".join(i.title for i in get_ingredients(keep)) or "none of the ingredients"
    return Rung(FINAL_STEP, f"final: the base with {kept_words}", overrides, labels)


def views(base: TrainConfig, rung: Rung) -> tuple[str, ...]:
    """The test-time views whose logits an arm's records keep: the study's (05's) and the symmetries
    the arm trains on, so that its seeds can also be ensembled over views they know."""
    trained = augment.training_views(base.replace(**rung.config).train_aug)
    return tuple(dict.fromkeys(augment.DEFAULT_VIEWS + trained))


def pairs(rungs: Sequence[Rung]) -> list[tuple[str, str]]:
    """What each ingredient buys: each arm against the one before it. The family the kit's rule
    adjusts over (Holm) and :func:`kept` reads, the same in 06, 05 and report.html: comparisons
    shown beside it (:func:`base_pairs`) are a family of their own and never make an ingredient's
    gain harder to show."""
    steps = [r.step for r in rungs]
    return list(zip(steps[1:], steps))


def base_pairs(rungs: Sequence[Rung]) -> list[tuple[str, str]]:
    """What the recipe so far buys: each arm from the second ingredient on against the base (the first
    ingredient's is in :func:`pairs`); descriptive, adjusted as a family of its own."""
    steps = [r.step for r in rungs]
    return [(s, steps[0]) for s in steps[2:]]


def ladder_table(rungs: Sequence[Rung]) -> pd.DataFrame:
    """The arms 06 trains: step, what it adds, and its settings over the base's."""
    return pd.DataFrame([{"step": r.step, "adds": r.title,
                          "settings over the base": ", ".join(f"{k}={v}" for k, v in r.config.items()) or "-",
                          "labels": r.labels or "the notebook's"} for r in rungs])


def kept_sentence(rungs: Sequence[Rung], keep: Sequence[str]) -> str:
    """In words: which ingredients bought something (kept) and which showed nothing (left out)."""
    tried = [r for r in rungs if r.ingredient]
    bought = [r.title.removeprefix("+ ") for r in tried if r.ingredient in keep]
    nothing = [r.title.removeprefix("+ ") for r in tried if r.ingredient not in keep]
    return (f"Kept (a gain shown and no loss): {'; '.join(bought) or 'none'}. Left out (no gain shown over the arm "
            f"before): {'; '.join(nothing) or 'none'}.")


def curve_steps(name: str, rung: Rung, shares: Sequence[float]) -> list[str]:
    """The steps of a learning curve of ``rung`` (``name``: base or final): one per share, the whole
    training part being the rung's own step (not trained twice)."""
    return [rung.step if share == 1.0 else curve_step(name, share) for share in shares]
