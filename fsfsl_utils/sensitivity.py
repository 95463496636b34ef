"""Sensitivity analysis: a drop-in for ModelArts' ``analyse()`` and an interventional ``sweep()``.

``analyse`` bins the evaluated images by an image feature and reports, per bin and class, the
recall (ModelArts' "accuracy of that class in that bin") with a Wilson 95% interval, the F1,
the ModelArts ``std`` row (population std over bins, ddof=0) and, beyond ModelArts, a
permutation chi-square test of whether the bins really differ. Image features are computed on
the image as stored, converted to 8-bit gray (luminance 0.299 R + 0.587 G + 0.114 B for RGB):

- ``brightness``: mean gray level (0-255).
- ``clarity``: variance of the 3x3 Laplacian response ([[0,1,0],[1,-4,1],[0,1,0]]), valid region.
- ``contrast``: RMS contrast, the standard deviation of gray levels.

The JSON layout is documented in ``docs/sensitivity.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import augment, metrics
from .io import atomic_write_json

TASK_TYPES = ("image_classification",)
FEATURES: dict[str, Callable[[np.ndarray], float]] = {}
RESULT_FILE = "model_analysis_results.json"
N_PERMUTATIONS = 2000


def _feature(fn: Callable[[np.ndarray], float]) -> Callable[[np.ndarray], float]:
    FEATURES[fn.__name__] = fn
    return fn


@_feature
def brightness(gray: np.ndarray) -> float:
    return float(gray.mean())


@_feature
def clarity(gray: np.ndarray) -> float:
    x = gray.astype(np.float64)
    lap = x[:-2, 1:-1] + x[2:, 1:-1] + x[1:-1, :-2] + x[1:-1, 2:] - 4.0 * x[1:-1, 1:-1]
    return float(lap.var())


@_feature
def contrast(gray: np.ndarray) -> float:
    return float(gray.astype(np.float64).std())


def to_gray(image: np.ndarray) -> np.ndarray:
    """8-bit gray view of an image (luminance for RGB)."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.uint8) if image.dtype != np.uint8 else image
    if image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image[..., :3].astype(np.float64)
        return np.clip(np.rint(rgb @ np.array([0.299, 0.587, 0.114])), 0, 255).astype(np.uint8)
    raise ValueError(f"image of shape {image.shape} is neither gray (H x W) nor RGB (H x W x 3)")


def compute_features(images: Sequence[np.ndarray], names: Sequence[str] = ("brightness", "clarity", "contrast")
                     ) -> dict[str, np.ndarray]:
    """Feature values per image, one array per feature name."""
    for name in names:
        check_feature(name)
    grays = [to_gray(im) for im in images]
    return {name: np.array([FEATURES[name](g) for g in grays]) for name in names}


def check_feature(name: str) -> None:
    if name not in FEATURES:
        raise ValueError(f"unknown feature {name!r}; valid: {', '.join(FEATURES)}")


def bin_labels(n_bins: int) -> list[str]:
    """ModelArts-style labels: '0% - 20%', ..., '80% - 100%' for five bins."""
    cuts = [round(100 * i / n_bins) for i in range(n_bins + 1)]
    return [f"{cuts[i]}% - {cuts[i + 1]}%" for i in range(n_bins)]


def assign_bins(values: np.ndarray, n_bins: int = 5, binning: str = "quantile") -> tuple[np.ndarray, list[float]]:
    """Bin index per value and the n_bins + 1 edges.

    ``quantile``: equal-count bins by rank (sizes differ by at most one; ties broken by order);
    edges are the values' quantiles. ``range``: equal-width bins over [min, max].
    """
    values = np.asarray(values, float)
    if binning == "quantile":
        order = np.argsort(values, kind="stable")
        idx = np.empty(len(values), int)
        idx[order] = np.arange(len(values)) * n_bins // len(values)
        edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    elif binning == "range":
        edges = np.linspace(values.min(), values.max(), n_bins + 1)
        idx = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
    else:
        raise ValueError(f"binning must be 'quantile' or 'range', got {binning!r}")
    return idx, [float(e) for e in edges]


def analyse(task_type: str = "image_classification", save_path: str | os.PathLike | None = None,
            pred_list: Sequence | np.ndarray = (), label_list: Sequence[int] | np.ndarray = (),
            name_list: Sequence[str] = (), images: Sequence[np.ndarray] | np.ndarray | None = None,
            class_names: Sequence[str] | None = None, features: Sequence[str] = ("brightness", "clarity", "contrast"),
            n_bins: int = 5, binning: str = "quantile", seed: int = 0,
            feature_values: dict[str, np.ndarray] | None = None) -> dict:
    """ModelArts-compatible model evaluation; writes ``<save_path>/model_analysis_results.json``.

    ``pred_list``: per-class logits per image; ``label_list``: integer labels; ``name_list``:
    image paths (read when ``images`` is not given) or names. ``feature_values``: values already
    computed for these images by :func:`compute_features` (features missing there are computed).
    Returns the JSON content.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"unknown task_type {task_type!r}; valid: {', '.join(TASK_TYPES)}")
    names = [str(n) for n in name_list]
    logits = np.asarray(pred_list, dtype=float) if len(pred_list) else np.zeros((0, 0))
    if not (len(logits) == len(label_list) == len(names)):
        raise ValueError(f"pred_list, label_list and name_list differ in length "
                         f"({len(logits)}, {len(label_list)}, {len(names)})")
    if logits.ndim != 2:
        raise ValueError(f"pred_list must hold one row of per-class logits per image, got shape {logits.shape}")
    if class_names is None:
        class_names = [str(i) for i in range(logits.shape[1])]
    class_names = [str(c) for c in class_names]
    labels, logits = metrics.check_predictions(label_list, logits, len(class_names))
    if images is not None and len(images) != len(names):
        raise ValueError(f"{len(images)} images but {len(names)} names")
    if len(names) < n_bins:
        raise ValueError(f"{len(names)} images cannot fill {n_bins} bins: need at least one image per bin")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    for f in features:
        check_feature(f)
    if binning not in ("quantile", "range"):
        raise ValueError(f"binning must be 'quantile' or 'range', got {binning!r}")
    given = {f: np.asarray(v, float) for f, v in (feature_values or {}).items() if f in features}
    if any(len(v) != len(names) for v in given.values()):
        raise ValueError(f"feature_values must hold one value per image ({len(names)})")
    todo = [f for f in features if f not in given]
    if todo and images is None:
        images = [_read_image(n) for n in names]
    values = {**given, **(compute_features(images, todo) if todo else {})}
    pred = logits.argmax(1)
    prob = metrics.softmax(logits)
    rng = np.random.default_rng(seed)
    result = {
        "task_type": task_type, "n_samples": len(names), "class_names": class_names,
        "overall": metrics.evaluate(labels, logits, class_names),
        "sensitivity": {f: _feature_table(values[f], labels, pred, class_names, n_bins, binning, rng)
                        for f in features},
        "wrong_samples": [{"name": names[i], "label": int(labels[i]), "predicted": int(pred[i]),
                           "score": float(prob[i, pred[i]])} for i in np.flatnonzero(pred != labels)],
        "feature_values": {f: values[f].tolist() for f in features},
        "names": names,
    }
    if save_path is not None:
        atomic_write_json(Path(save_path) / RESULT_FILE, result)
    return result


def table(result: dict, feature: str, value: str = "recall") -> pd.DataFrame:
    """The ModelArts console table: bins as rows, classes as columns, a last ``std`` row."""
    block = result["sensitivity"][feature]
    rows = {b["label"]: {c: b["per_class"][c][value] for c in result["class_names"]} for b in block["bins"]}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    if value == "recall":
        frame.loc["std"] = [block["std"][c] for c in result["class_names"]]
    return frame


def tables(result: dict, features: Sequence[str] = ("brightness", "clarity")) -> pd.DataFrame:
    """Several features' tables side by side (columns: feature, class)."""
    return pd.concat({f: table(result, f) for f in features}, axis=1).round(4)


def explain(result: dict, features: Sequence[str] = ("brightness", "clarity", "contrast"), alpha: float = 0.05
            ) -> list[str]:
    """Plain sentences: which class is sensitive to which feature, and its weakest bin."""
    lines = []
    for f in features:
        if f not in result["sensitivity"]:
            continue
        block = result["sensitivity"][f]
        for c in result["class_names"]:
            cells = [(b["label"], b["per_class"][c]) for b in block["bins"] if b["per_class"][c]["recall"] is not None]
            if not cells:
                continue
            label, worst = min(cells, key=lambda lc: lc[1]["recall"])
            p = block["p_value"][c]
            verdict = "sensitive" if p < alpha else "no evidence of sensitivity"
            lines.append(f"{c} / {f}: {verdict} (std {block['std'][c]:.4f}, permutation p = {p:.3g}); weakest bin "
                         f"{label}: recall {worst['recall']:.3f} of {worst['n']} images")
    return lines


def explain_sweep(result: dict) -> list[str]:
    """Plain sentences from a :func:`sweep`: per class, its recall on the unchanged images and the
    level that moves it most, so a large change is read, not only plotted."""
    rows = result["rows"]
    base = next((r for r in rows if r["level"] == 1.0), rows[0])
    lines = []
    for c, at_base in base["recall"].items():
        if at_base is None:
            continue
        moved = [(r["level"], r["recall"][c]) for r in rows if r["recall"][c] is not None and r is not base]
        if not moved:
            continue
        level, value = max(moved, key=lambda lv: abs(lv[1] - at_base))
        lines.append(f"{c}: recall {at_base:.2f} unchanged; largest change at {result['op']} x{level:g}: "
                     f"{value:.2f} ({100 * (value - at_base):+.0f} points)")
    return lines


def weakest_bins(result: dict, feature: str, top: int = 2) -> list[dict]:
    """The (bin, class) cells with the lowest recall, for pointing at what to augment."""
    cells = [{"feature": feature, "bin": b["label"], "class": c, "recall": v["recall"], "n": v["n"],
              "p_value": result["sensitivity"][feature]["p_value"][c]}
             for b in result["sensitivity"][feature]["bins"] for c, v in b["per_class"].items()
             if v["recall"] is not None]
    return sorted(cells, key=lambda d: d["recall"])[:top]


def weak_spots(result: dict, features: Sequence[str] = ("brightness", "clarity"), top: int = 2) -> pd.DataFrame:
    """:func:`weakest_bins` of several features as one table."""
    return pd.DataFrame([cell for f in features for cell in weakest_bins(result, f, top)])


def sweep(model_or_predict_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, labels: Sequence[int],
          op: str = "brightness", levels: Sequence[float] = (0.6, 0.8, 1.0, 1.2, 1.4),
          class_names: Sequence[str] | None = None, backbone: str = "efficientnet_lite0", input_size: int = 224,
          crop_fraction: float = 1.0) -> dict:
    """Apply ``op`` at graded strengths to the same images, re-predict, and tabulate recall per class.

    ``model_or_predict_fn`` maps a uint8 image array to logits (``N x K``); a torch module is
    wrapped with the kit's one preprocessing for ``backbone``, ``input_size`` and ``crop_fraction``
    (pass the values it was trained with). ``op``: an operation of
    :mod:`fsfsl_utils.augment` (brightness factor, clarity = sharpness factor, blur sigma, ...).
    Level 1.0 of brightness/clarity is the unchanged image.
    """
    augment.check_operation(op)
    predict = _as_predict_fn(model_or_predict_fn, backbone, input_size, crop_fraction)
    labels = np.asarray(labels)
    rows = []
    for level in levels:
        changed = np.stack([augment.apply_operation(im, op, float(level)) for im in images])
        logits = np.asarray(predict(changed))
        lab, logits = metrics.check_predictions(labels, logits, None if class_names is None else len(class_names))
        pred = logits.argmax(1)
        names = class_names or [str(i) for i in range(logits.shape[1])]
        rows.append({"level": float(level), "accuracy": float((pred == lab).mean()),
                     "recall": {names[c]: (float((pred[lab == c] == c).mean()) if (lab == c).any() else None)
                                for c in range(logits.shape[1])},
                     "mean_brightness": float(np.mean([brightness(to_gray(im)) for im in changed]))})
    return {"op": op, "levels": [float(v) for v in levels], "rows": rows, "n": int(len(labels))}


def sweep_table(result: dict) -> pd.DataFrame:
    """A sweep as a table: one row per level, accuracy and the recall of each class."""
    rows = {r["level"]: {"accuracy": r["accuracy"], **{f"recall {c}": v for c, v in r["recall"].items()}}
            for r in result["rows"]}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(f"{result['op']} level").round(4)


# ----------------------------------------------------------------------------- helpers
def _feature_table(values: np.ndarray, labels: np.ndarray, pred: np.ndarray, class_names: list[str],
                   n_bins: int, binning: str, rng: np.random.Generator) -> dict:
    idx, edges = assign_bins(values, n_bins, binning)
    bins = []
    for b, label in enumerate(bin_labels(n_bins)):
        members = idx == b
        cells = {}
        for c, cname in enumerate(class_names):
            own = members & (labels == c)
            n = int(own.sum())
            tp = int(np.sum(own & (pred == c)))
            fp = int(np.sum(members & (labels != c) & (pred == c)))
            ci = metrics.wilson_interval(tp, n)
            cells[cname] = {"n": n, "recall": tp / n if n else None, "recall_ci": list(ci) if ci else None,
                            "f1": (2 * tp / (2 * tp + fp + (n - tp))) if (2 * tp + fp + n - tp) else None}
        in_bin = values[members]
        bins.append({"label": label, "low": float(in_bin.min()) if members.any() else edges[b],
                     "high": float(in_bin.max()) if members.any() else edges[b + 1], "n": int(members.sum()),
                     "per_class": cells})
    std, p_value = {}, {}
    for c, cname in enumerate(class_names):
        recalls = [b["per_class"][cname]["recall"] for b in bins if b["per_class"][cname]["recall"] is not None]
        std[cname] = float(np.std(recalls)) if recalls else None
        own = labels == c
        p_value[cname] = permutation_chi2(idx[own], pred[own] == c, n_bins, rng)
    return {"binning": binning, "edges": edges, "bins": bins, "std": std, "p_value": p_value,
            "test": f"permutation chi-square of correct vs bin, {N_PERMUTATIONS} permutations"}


def permutation_chi2(bin_idx: np.ndarray, correct: np.ndarray, n_bins: int, rng: np.random.Generator,
                     n_perm: int = N_PERMUTATIONS) -> float:
    """p-value that correctness does not depend on the bin (chi-square statistic, permuted labels).

    1.0 when the question is empty (no images, or all right, or all wrong).
    """
    correct = np.asarray(correct, bool)
    if len(correct) == 0 or correct.all() or not correct.any():
        return 1.0
    n_b = np.bincount(bin_idx, minlength=n_bins).astype(float)
    keep = n_b > 0
    p = correct.mean()

    def stat(corr: np.ndarray) -> np.ndarray:
        k = np.zeros((corr.shape[0], n_bins))
        for b in range(n_bins):
            k[:, b] = corr[:, bin_idx == b].sum(1)
        exp = n_b * p
        return (((k - exp) ** 2)[:, keep] / (exp[keep] * (1 - p))).sum(1)

    observed = stat(correct[None, :])[0]
    perms = np.stack([rng.permutation(correct) for _ in range(n_perm)])
    return float((1 + np.sum(stat(perms) >= observed - 1e-12)) / (n_perm + 1))


def _read_image(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im.copy())
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"cannot read image {path!r} named in name_list: {err}") from err


def _as_predict_fn(model: Callable[[np.ndarray], np.ndarray], backbone: str, input_size: int,
                   crop_fraction: float, batch_size: int = 64) -> Callable[[np.ndarray], np.ndarray]:
    """A torch module wrapped as a function of uint8 images (the kit's one preprocessing for
    ``backbone``); a function is returned as it is."""
    import torch

    from . import models

    if not isinstance(model, torch.nn.Module):
        return model
    models.get_spec(backbone)  # a clear error for an unknown backbone

    def predict(images: np.ndarray) -> np.ndarray:
        dev = next(model.parameters()).device
        model.eval()
        with torch.inference_mode():
            out = [model(models.preprocess(torch.from_numpy(images[s:s + batch_size]).to(dev), backbone, input_size,
                                           crop_fraction)).float().cpu()
                   for s in range(0, len(images), batch_size)]
        return torch.cat(out).numpy().astype(np.float64)
    return predict
