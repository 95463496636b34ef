"""An operating point chosen without peeking: the decision threshold a production line asks for, chosen
by cross-validation on the training part and then read, once, on the validation images.

A requirement names what the line needs, on the target class's probability:

    "recall 0.95"   at least 95% of the target class (the defects) caught
    "reject 0.02"   at most 2% of the reference class (the good cells) rejected

(``recall>=0.95`` and ``reject<=0.02`` are read the same way.)

:func:`out_of_fold_scores` trains the same recipe on all but one fold of the training part (folds
grouped by source image, so an image and its augmented copies never straddle folds, as the probe's
regularisation is chosen) and scores the held-out fold: every training image gets a score from a
model that did not see it. :func:`threshold_for` turns those scores and a requirement into a
threshold; :func:`reading` says what a threshold gives on images (both recalls with intervals).
The optimistic reading, a threshold chosen on the validation images themselves, is kept beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .. import metrics, stats

REQUIREMENT = re.compile(r"^\s*(recall|reject)\s*(?:>=|<=|\s)\s*(0?\.\d+|1(\.0*)?|0)\s*$")


@dataclass(frozen=True)
class Requirement:
    """``kind``: "recall" (target recall at least ``value``) or "reject" (reference rejected at most ``value``)."""

    kind: str
    value: float

    def __str__(self) -> str:
        return f"recall {self.value:g}" if self.kind == "recall" else f"reject {self.value:g}"

    def words(self, target: str, reference: str) -> str:
        return (f"at least {100 * self.value:g}% of {target} caught" if self.kind == "recall"
                else f"at most {100 * self.value:g}% of {reference} rejected")


def parse_requirement(text: str) -> Requirement:
    """``"recall 0.95"`` or ``"reject 0.02"``; ValueError names the parameter otherwise."""
    match = REQUIREMENT.match(str(text))
    wrong_sign = (">=" in str(text) and str(text).strip().startswith("reject")) or \
        ("<=" in str(text) and str(text).strip().startswith("recall"))
    if not match or wrong_sign:
        raise ValueError(f"REQUIREMENT must look like 'recall 0.95' (at least that share of the target class caught) "
                         f"or 'reject 0.02' (at most that share of the reference class rejected), got {text!r}")
    value = float(match.group(2))
    if not 0 < value < 1:
        raise ValueError(f"REQUIREMENT's share must lie strictly between 0 and 1, got {value}")
    return Requirement(match.group(1), value)


def threshold_for(labels: np.ndarray, scores: np.ndarray, target: int, reference: int,
                  requirement: Requirement) -> float:
    """The threshold on the target probability that meets ``requirement`` on these images: the highest
    one that still catches the share asked for (recall), or the lowest that rejects no more than the
    share allowed (reject)."""
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    if requirement.kind == "recall":
        positive = np.sort(scores[labels == target])[::-1]
        if not len(positive):
            raise ValueError("no image of the target class to choose a threshold on")
        need = int(np.ceil(requirement.value * len(positive)))
        return float(positive[max(need, 1) - 1])
    negative = np.sort(scores[labels == reference])[::-1]
    if not len(negative):
        raise ValueError("no image of the reference class to choose a threshold on")
    allowed = int(np.floor(requirement.value * len(negative)))
    return float(np.nextafter(negative[allowed], np.inf)) if allowed < len(negative) else 0.0


def reading(labels: np.ndarray, scores: np.ndarray, threshold: float, target: int, reference: int,
            groups: np.ndarray | None = None) -> dict:
    """What ``threshold`` gives on these images: the target's and the reference's recall, each with its
    95% interval from the images (cells of one module as one cluster when ``groups`` are given)."""
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    out = {"threshold": float(threshold)}
    for name, cls, hit in (("target_recall", target, scores >= threshold), ("reference_recall", reference,
                                                                              scores < threshold)):
        keep = labels == cls
        values = hit[keep].astype(float)
        if len(values) < 2:
            out[name] = {"value": float(values.mean()) if len(values) else None, "low": None, "high": None}
            continue
        if groups is not None:
            comp = stats.variance_components(values[None], np.asarray(groups)[keep])
            from scipy import stats as sps

            half = sps.t.ppf(0.975, max(comp["clusters"] - 1, 1)) * np.sqrt(comp["image_part"])
            low, high = max(0.0, values.mean() - half), min(1.0, values.mean() + half)
        else:
            low, high = metrics.wilson_interval(int(values.sum()), len(values))
        out[name] = {"value": float(values.mean()), "low": float(low), "high": float(high)}
    return out


def target_scores(logits: np.ndarray, target: int) -> np.ndarray:
    """The target class's softmax probability of each image."""
    z = np.asarray(logits, float)
    p = np.exp(z - z.max(1, keepdims=True))
    return p[:, target] / p.sum(1)


def out_of_fold_scores(train_part: object, policy: str, cfg: object, seed: int = 0, folds: int = 3,
                       target: int = 1, progress: bool | None = False) -> dict:
    """Every training image's target probability from a model trained on the other folds: the training
    part's originals in ``folds`` folds stratified by class and grouped by source image, each fold's
    complement expanded by ``policy`` and trained with ``cfg`` and ``seed`` as the step was, the fold
    scored by the last epoch (no choice made on it). Returns ``labels``, ``scores``, ``names`` and
    ``folds``."""
    from sklearn.model_selection import StratifiedGroupKFold

    from .. import augment, train

    labels = train_part.labels
    groups = train_part.meta["source"].to_numpy()
    folds = min(folds, int(np.bincount(labels).min()), len(np.unique(groups)))
    if folds < 2:
        raise ValueError("too few training images per class for a cross-validated threshold (need 2 folds)")
    scores = np.full(len(labels), np.nan)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (fit_idx, held_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        part = augment.expand(train_part.subset(fit_idx), policy, seed=seed, progress=False)
        held = train_part.subset(held_idx)
        held.meta["split"] = "val"
        fit = train.fit(part, held, cfg, seed=seed + 1000 * (k + 1), views=(), progress=progress)
        logits = fit.last_logits if fit.last_logits is not None else fit.val_logits
        scores[held_idx] = target_scores(logits, target)
    return {"labels": labels.tolist(), "scores": scores.tolist(), "names": train_part.names, "folds": folds}
