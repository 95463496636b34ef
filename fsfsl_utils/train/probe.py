"""Mode ``probe``: a frozen backbone's cached features and a logistic-regression head."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import augment, features, models
from ..config import TrainConfig
from ..data import Dataset
from .common import FitResult, class_weights, view_keys


class ProbeHead(nn.Module):
    """Standardisation (fitted on the training features) + linear layer."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, n_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.linear = nn.Linear(len(mean), n_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats - self.mean) / self.std)


def fit_probe(train: Dataset, val: Dataset, cfg: TrainConfig, seed: int, views: Sequence[str],
               progress: bool | None) -> FitResult:
    t0 = time.perf_counter()
    def feat(ds: Dataset, view: str | None = None) -> np.ndarray:
        imgs = ds.images if view is None else augment.view_images(ds, view)
        return features.extract(imgs, cfg.backbone, cfg.input_size, cfg.crop_fraction, cfg.weights,
                                cfg.feature_batch_size, cfg.device, progress=progress, keys=view_keys(ds, view))

    if train.soft_targets() is not None:
        raise ValueError("soft labels (label policy 'soft') need a mode that trains with a loss ('top' or "
                         "'finetune'): the probe's logistic regression would round them")
    x_train, x_val = feat(train), feat(val)
    x_views = {v: feat(val, v) for v in views}
    t1 = time.perf_counter()
    head, history = train_head(x_train, train.labels, len(train.class_names), cfg, seed, progress,
                               groups=train.meta["source"].to_numpy())
    with torch.no_grad():
        logits = lambda x: head(torch.from_numpy(x)).numpy().astype(np.float64)  # noqa: E731
        val_logits = logits(x_val)
        view_logits = {v: logits(x) for v, x in x_views.items()}
    return FitResult("probe", val_logits, view_logits, head, str(models.pick_device(cfg.device)), history,
                     {"features": t1 - t0, "train": time.perf_counter() - t1})


def train_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: TrainConfig, seed: int = 0,
               progress: bool | None = None, groups: np.ndarray | None = None) -> tuple[ProbeHead, list[dict]]:
    """L2-regularised logistic regression on standardised features, fitted to convergence (L-BFGS,
    scikit-learn), optionally class-weighted. The regularisation strength is chosen among
    ``head_cs`` by cross-validated log loss on the training features alone, in folds grouped by
    ``groups`` (each image's source, so an image and its augmented copies never straddle folds).
    The fit is deterministic: ``seed`` only matters through the data it was given.
    Returns the head (an nn.Module, for one prediction path) and one history row with the choice."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    del seed, progress  # a convex fit to convergence: no random start, no epochs to show
    mean, std = x.mean(0), x.std(0)
    std = np.maximum(std, 0.1 * float(std.mean()) + 1e-6)  # near-constant features must not explode
    z = ((x - mean) / std).astype(np.float64)
    y = np.asarray(y, dtype=np.int64)
    groups = np.arange(len(y)) if groups is None else np.asarray(groups)
    weight = "balanced" if cfg.class_weight == "balanced" else None
    class_weights(y, n_classes)  # every class present, else a clear error
    folds = min(cfg.head_folds, int(np.bincount(y).min()), len(np.unique(groups)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if folds >= 2 and len(cfg.head_cs) > 1:
            cv = list(StratifiedGroupKFold(n_splits=folds).split(z, y, groups))
            search = LogisticRegressionCV(Cs=list(cfg.head_cs), cv=cv, scoring="neg_log_loss",
                                          class_weight=weight, max_iter=cfg.head_max_iter, tol=cfg.head_tol)
            search.fit(z, y)
            c = float(np.atleast_1d(search.C_)[0])
            scores = np.mean(next(iter(search.scores_.values())), axis=0)
            cv_loss = {f"{cc:g}": float(-sc) for cc, sc in zip(search.Cs_, scores)}
        else:  # one value given (e.g. chosen on another seed's training part): no search
            c, cv_loss = float(cfg.head_cs[0]), {}
        model = LogisticRegression(C=c, class_weight=weight, max_iter=cfg.head_max_iter, tol=cfg.head_tol)
        model.fit(z, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    head = ProbeHead(mean, std, n_classes)
    coef, bias = np.asarray(model.coef_, np.float32), np.asarray(model.intercept_, np.float32)
    if n_classes == 2:  # scikit-learn keeps one row for two classes: logits (-z/2, z/2) have the same softmax
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(coef))
        head.linear.bias.copy_(torch.from_numpy(bias))
    history = [{"C": c, "C_from": "cross-validation on this training part" if cv_loss else "given in head_cs",
                "folds": folds, "cv_log_loss": cv_loss, "iterations": int(np.max(model.n_iter_)),
                "converged": converged}]
    return head.eval(), history
