"""Metrics: scores from logits, confidence intervals, paired tests (scikit-learn / scipy underneath)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, float)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_predictions(labels: Sequence[int] | np.ndarray, logits: np.ndarray | Sequence,
                      n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (labels, logits); ValueError names what is wrong."""
    logits = np.asarray(logits, dtype=float)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be a 2-D array (samples x classes), got shape {logits.shape}")
    if len(labels) != len(logits):
        raise ValueError(f"{len(labels)} labels but {len(logits)} rows of logits")
    if n_classes is not None and logits.shape[1] != n_classes:
        raise ValueError(f"logits have {logits.shape[1]} columns but there are {n_classes} classes")
    if not np.isfinite(logits).all():
        bad = int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
        raise ValueError(f"logits contain NaN or inf (first at row {bad})")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0
                        or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must be integers in [0, {logits.shape[1] - 1}], got values {np.unique(labels)[:10]}")
    return labels.astype(np.int64), logits


def predict_labels(logits: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Argmax, or (two classes) class 1 when its softmax probability reaches ``threshold``."""
    logits = np.asarray(logits, float)
    if threshold is None:
        return logits.argmax(axis=1)
    if logits.shape[1] != 2:
        raise ValueError(f"a decision threshold needs two classes, got {logits.shape[1]}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability in (0, 1), got {threshold!r}")
    return (softmax(logits)[:, 1] >= threshold).astype(np.int64)


def threshold_for_recall(labels: np.ndarray, logits: np.ndarray, fixed_recall: float) -> float:
    """The class-1 probability threshold that keeps class-0 recall at least ``fixed_recall`` on these
    images while catching as much of class 1 as possible. Chosen on the data it is then scored on, it is
    optimistic: choose it on held-out images when the number matters."""
    labels = np.asarray(labels)
    p1 = softmax(logits)[:, 1]
    normal = np.sort(p1[labels == 0])
    if len(normal) == 0:
        raise ValueError("no class-0 images to hold the recall of")
    k = int(np.ceil(fixed_recall * len(normal) - 1e-9))  # class-0 images that must stay below the threshold
    if k >= len(normal):
        return float(min(1 - 1e-12, np.nextafter(normal[-1], 1.0)))
    return float(max(1e-12, np.nextafter(normal[k - 1], 1.0) if k > 0 else 1e-12))


def evaluate(labels: Sequence[int] | np.ndarray, logits: np.ndarray, class_names: Sequence[str],
             threshold: float | None = None) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support, confusion matrix, AUROC.

    ``threshold`` (two classes): predict class 1 when its probability reaches it, instead of argmax.
    AUROC does not depend on it."""
    labels, logits = check_predictions(labels, logits, len(class_names))
    pred = predict_labels(logits, threshold)
    k = len(class_names)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=0)
    return {
        "accuracy": float(skm.accuracy_score(labels, pred)),
        "balanced_accuracy": float(np.mean([rec[c] for c in range(k) if sup[c] > 0])),
        "auroc": auroc(labels, logits),
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=range(k)).tolist(),
        "per_class": {name: {"precision": float(prec[c]), "recall": float(rec[c]), "f1": float(f1[c]),
                             "support": int(sup[c])} for c, name in enumerate(class_names)},
    }


def auroc(labels: np.ndarray, logits: np.ndarray) -> float | None:
    """Binary: AUROC of the class-1 probability; multi-class: one-vs-rest macro. None if undefined."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    logits = np.asarray(logits, float)
    if logits.shape[1] == 2:  # the logit margin ranks like the probability, without saturating
        return float(skm.roc_auc_score(labels, logits[:, 1] - logits[:, 0]))
    prob = softmax(logits)
    if len(np.unique(labels)) < prob.shape[1]:
        return None
    return float(skm.roc_auc_score(labels, prob, multi_class="ovr"))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for k successes in n trials (None when n == 0)."""
    if n == 0:
        return None
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_ci(labels: np.ndarray, logits: np.ndarray, metric: Callable[[np.ndarray, np.ndarray], float],
                 n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(labels, logits)`` over resampled validation images."""
    labels, logits = np.asarray(labels), np.asarray(logits)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        try:
            values.append(metric(labels[idx], logits[idx]))
        except ValueError:
            continue
    lo, hi = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(lo), float(hi)


def class_recall(c: int) -> Callable[[np.ndarray, np.ndarray], float]:
    """Metric function: recall of class ``c`` (for :func:`bootstrap_ci`)."""
    def fn(labels: np.ndarray, logits: np.ndarray) -> float:
        mask = labels == c
        if not mask.any():
            raise ValueError("class absent from resample")
        return float((logits[mask].argmax(1) == c).mean())
    return fn


def accuracy_fn(labels: np.ndarray, logits: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def balanced_accuracy_fn(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean recall over the classes present in ``labels``, as :func:`evaluate` counts it (for
    :func:`bootstrap_ci`; scikit-learn's warns in every resample that misses a predicted class)."""
    pred = logits.argmax(1)
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def mcnemar(labels: np.ndarray, logits_a: np.ndarray, logits_b: np.ndarray) -> dict:
    """Exact McNemar test of two classifiers on the same images.

    ``b`` = images A gets right and B wrong, ``c`` = the reverse; two-sided p-value from the
    binomial(b + c, 1/2) distribution. p = 1 when the two never disagree.
    """
    labels = np.asarray(labels)
    ra = np.asarray(logits_a).argmax(1) == labels
    rb = np.asarray(logits_b).argmax(1) == labels
    if len(ra) != len(rb):
        raise ValueError(f"the two prediction sets differ in length ({len(ra)} vs {len(rb)})")
    b, c = int(np.sum(ra & ~rb)), int(np.sum(~ra & rb))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "n": int(len(labels)), "p_value": p,
            "accuracy_a": float(ra.mean()), "accuracy_b": float(rb.mean())}


def recall_at_fixed_recall(labels: np.ndarray, logits: np.ndarray, fixed_recall: float,
                           fixed_class: int = 0, target_class: int = 1) -> dict:
    """Read the validation ROC curve: best recall of ``target_class`` while ``fixed_class`` keeps at
    least ``fixed_recall``, over every threshold (tied scores included). The threshold is chosen on
    the same validation images it is scored on, so the reading is optimistic."""
    labels = np.asarray(labels)
    logits = np.asarray(logits, float)
    score = logits[:, target_class] - logits[:, fixed_class]
    fpr, tpr, thr = skm.roc_curve(labels == target_class, score, drop_intermediate=False)
    # among scored images: fixed-class recall = 1 - fpr, target recall = tpr (binary case)
    ok = (1 - fpr) >= fixed_recall - 1e-12
    i = int(np.flatnonzero(ok)[-1]) if ok.any() else 0
    return {"fixed_recall": fixed_recall, "target_recall": float(tpr[i]),
            "achieved_fixed_recall": float(1 - fpr[i]), "threshold": float(thr[i])}
