"""What the explorers show, as plain functions headless code can call (no ipywidgets): a bin's gallery
items, the pooled record of several seeds, two records' disagreements, images as PNG bytes.
:mod:`fsfsl_utils.widgets` builds its widgets on them."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image
from scipy import stats as sps

from . import augment, metrics, report, sensitivity
from . import stats as kit_stats

GALLERY_SIZE = 12


def bin_index(record: dict, feature: str) -> np.ndarray:
    """The bin of every validation image of a record for one feature (as ``analyse`` formed them)."""
    block = record["sensitivity"][feature]
    idx, _ = sensitivity.assign_bins(np.asarray(record["feature_values"][feature]), len(block["bins"]),
                                     block["binning"])
    return idx


def gallery_items(record: dict, feature: str, bin_label: str, class_name: str) -> list[dict]:
    """Images of ``class_name`` in one bin: name, true and predicted class, score, the feature's value;
    wrong first."""
    labels, logits = report.record_arrays(record)
    prob = metrics.softmax(logits)
    pred = logits.argmax(1)
    names, classes = record["predictions"]["names"], record["class_names"]
    values = record["feature_values"][feature]
    b = [x["label"] for x in record["sensitivity"][feature]["bins"]].index(bin_label)
    c = classes.index(class_name)
    members = np.flatnonzero((bin_index(record, feature) == b) & (labels == c))
    items = [{"name": names[i], "label": classes[labels[i]], "predicted": classes[pred[i]],
              "score": float(prob[i, pred[i]]), "correct": bool(pred[i] == labels[i]), "value": float(values[i]),
              "wrong_in": int(pred[i] != labels[i]), "runs": 1} for i in members]
    return sorted(items, key=lambda d: (d["correct"], -d["score"]))


def pooled_items(records: Sequence[dict], feature: str, bin_label: str, class_name: str) -> list[dict]:
    """:func:`gallery_items` over several seeds of one step on the same images: each image once, with
    how many runs got it wrong (``wrong_in`` of ``runs``) and its mean score for the true class;
    the most often wrong first."""
    per_run = [{d["name"]: d for d in gallery_items(r, feature, bin_label, class_name)} for r in records]
    out = []
    for name, first in per_run[0].items():
        seen = [run[name] for run in per_run]
        wrong = sum(not d["correct"] for d in seen)
        true_score = float(np.mean([d["score"] if d["correct"] else 1 - d["score"] for d in seen]))
        out.append({**first, "wrong_in": wrong, "runs": len(seen), "correct": wrong == 0, "score": true_score,
                    "predicted": first["label"] if wrong * 2 < len(seen) else "mostly other"})
    return sorted(out, key=lambda d: (-d["wrong_in"], d["score"]))


def pooled_record(records: Sequence[dict]) -> dict:
    """One record-like dict for several seeds of a step on the same validation images: per bin and
    class, ``n`` counts *images* (not image-seed pairs) and the recall is the mean over seeds; its 95%
    interval holds both the seeds and the images (:func:`fsfsl_utils.stats.variance_components`, the
    cells of one module as one cluster), so that seeds giving one model (a frozen arm) do not narrow it.
    Its ``p_value`` is left empty: the permutation test needs one run. Figures and galleries take it
    like a record."""
    first = records[0]
    if any(r["predictions"]["names"] != first["predictions"]["names"] for r in records):
        raise ValueError("pooling needs records evaluated on the same validation images (one split)")
    pooled = {**first, "seed": "all", "sensitivity": {}, "pooled_runs": len(records)}
    labels = np.asarray(first["predictions"]["labels"])
    correct = np.array([report.record_arrays(r)[1].argmax(1) == labels for r in records], float)
    groups = report.image_groups(first)
    groups = np.asarray(groups) if groups is not None else np.arange(len(labels))
    for feature, block in first["sensitivity"].items():
        idx = bin_index(first, feature)
        bins = []
        for b, old in enumerate(block["bins"]):
            cells = {}
            for c, cname in enumerate(first["class_names"]):
                own = (idx == b) & (labels == c)
                n = int(own.sum())
                recall = float(correct[:, own].mean()) if n else None
                cells[cname] = {"n": n, "recall": recall, "recall_ci": _seed_image_interval(correct[:, own],
                                                                                             groups[own])}
            bins.append({**old, "per_class": cells, "n": int((idx == b).sum())})
        std = {c: float(np.std([x["per_class"][c]["recall"] for x in bins if x["per_class"][c]["recall"] is not None]))
               for c in first["class_names"]}
        pooled["sensitivity"][feature] = {**block, "bins": bins, "std": std,
                                          "p_value": {c: None for c in first["class_names"]}}
    return pooled


def _seed_image_interval(correct: np.ndarray, groups: np.ndarray, confidence: float = 0.95) -> list[float] | None:
    """95% interval of a recall over seeds (rows) and images (columns), modules as clusters; Wilson on
    the images when there are too few of them for the variance components."""
    k, n = correct.shape
    if n == 0:
        return None
    if n < 3 or len(np.unique(groups)) < 3:
        ci = metrics.wilson_interval(round(float(correct.mean()) * n), n)
        return list(ci) if ci else None
    comp = kit_stats.variance_components(correct, groups)
    half = float(sps.t.ppf(0.5 + confidence / 2, max(comp["df"], 1.0)) * np.sqrt(comp["var"]))
    return [max(0.0, comp["grand"] - half), min(1.0, comp["grand"] + half)]


def default_pair(records: Sequence[dict]) -> tuple[dict, dict]:
    """The study's headline comparison for :class:`RunComparison`: 04 balanced vs 01 baseline on the
    same seed and split when both ran, else the last record vs the first."""
    by_key = {(r["step"], r["split_seed"], r["seed"]): r for r in records}
    for r in records:
        if r["step"] == report.PRIMARY[0] and (report.PRIMARY[1], r["split_seed"], r["seed"]) in by_key:
            return r, by_key[(report.PRIMARY[1], r["split_seed"], r["seed"])]
    return records[-1], records[0]


def disagreements(rec_a: dict, rec_b: dict) -> dict[str, list[str]]:
    """Validation images that A gets right and B wrong (``a_only``), and the reverse (``b_only``)."""
    la, lga = report.record_arrays(rec_a)
    lb, lgb = report.record_arrays(rec_b)
    if rec_a["predictions"]["names"] != rec_b["predictions"]["names"]:
        raise ValueError("the two records were evaluated on different validation images")
    ra, rb = lga.argmax(1) == la, lgb.argmax(1) == lb
    names = np.asarray(rec_a["predictions"]["names"])
    return {"a_only": names[ra & ~rb].tolist(), "b_only": names[~ra & rb].tolist()}


def flipped_gallery(rec_a: dict, rec_b: dict, images: dict[str, np.ndarray], n: int = 6) -> plt.Figure:
    """The run comparison as a static figure for report.html: up to ``n`` validation images that A gets
    right and B wrong (top row) and the reverse (bottom row), each titled with its name and true class,
    the counts and the exact McNemar p above."""
    diff = disagreements(rec_a, rec_b)
    labels, logits = report.record_arrays(rec_a)
    test = metrics.mcnemar(labels, logits, report.record_arrays(rec_b)[1])
    names = rec_a["predictions"]["names"]
    true = {name: rec_a["class_names"][label] for name, label in zip(names, labels)}
    fig, axes = plt.subplots(2, n, figsize=(1.7 * n, 4.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    rows = [(f"{rec_a['step']} right, {rec_b['step']} wrong", diff["a_only"]),
            (f"{rec_b['step']} right, {rec_a['step']} wrong", diff["b_only"])]
    for r, (title, shown) in enumerate(rows):
        axes[r, 0].text(-0.1, 0.5, f"{title}\n({len(shown)} images)", transform=axes[r, 0].transAxes, rotation=90,
                        va="center", ha="right", fontsize=7)
        for ax, name in zip(axes[r], shown[:n]):
            ax.imshow(images[name], cmap="gray", vmin=0, vmax=255)
            ax.set_title(f"{name[:22]}\ntrue {true[name][:14]}", fontsize=6)
    fig.suptitle(f"Where {rec_a['step']} and {rec_b['step']} (seed {rec_a.get('seed')}) disagree; exact McNemar "
                 f"p {report.format_p(test['p_value'])}", fontsize=8)
    fig.tight_layout()
    return fig


def compare_table(rec_a: dict, rec_b: dict) -> pd.DataFrame:
    """Scores of two records side by side (percent, each score once), with the difference A - B."""
    aliases = ("recall_target", "recall_reference", "f1_target")  # other names of rows already shown
    sa, sb = ({k: 100 * v for k, v in report.scores(r).items() if k not in aliases} for r in (rec_a, rec_b))
    frame = pd.DataFrame({f"A: {label(rec_a)}": sa, f"B: {label(rec_b)}": sb})
    frame["A - B (points)"] = frame.iloc[:, 0] - frame.iloc[:, 1]
    return frame.round(1)


def policy_counts(class_counts: dict[str, int], policies: Sequence[str]) -> pd.DataFrame:
    """Images per class each policy produces from the given counts."""
    return pd.DataFrame({p: augment.get_policy(p).counts(class_counts) for p in policies}).T


def label(record: dict) -> str:
    split = f" split{record['split_seed']}" if record.get("split_seed") else ""
    seed = "all seeds (pooled)" if record["seed"] == "all" else f"seed{record['seed']}"
    return f"{record['step']} {seed}{split}"


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()
