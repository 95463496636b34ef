"""Figures for the notebooks and the main job (matplotlib; each function returns its Figure)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from . import augment, data, metrics, report
from .data import Dataset
from .io import atomic_write

CLASS_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
FEATURE_UNITS = {"brightness": "mean gray level (0-255)", "clarity": "variance of the Laplacian",
                 "contrast": "standard deviation of gray levels"}
LABELLED_CELLS = 12  # a confusion matrix with more classes is drawn without numbers and names


def save(fig: plt.Figure, results_dir: str | os.PathLike, name: str) -> None:
    """Write ``<results_dir>/figures/<name>.png`` (atomically). Returns nothing, so that a notebook
    cell ending in a save shows no ``Out[n]`` line."""
    atomic_write(Path(results_dir) / "figures" / f"{name}.png",
                 lambda tmp: fig.savefig(tmp, format="png", dpi=150, bbox_inches="tight"))


def data_overview(train: Dataset, val: Dataset) -> pd.DataFrame:
    """Images per class in each part, and per cell type on ELPV (other data has no cell types: one
    ``images`` column)."""
    frames = []
    for part, ds in (("train", train), ("val", val)):
        frame = ds.meta.assign(part=part, cls=[ds.class_names[i] for i in ds.labels])
        frames.append(frame)
    meta = pd.concat(frames)
    if not (meta["cell_type"] != "").any():
        return pd.crosstab([meta["part"], meta["cls"]], pd.Series("images", index=meta.index, name=""),
                           margins=True, margins_name="total").rename_axis(index=["part", "class"])
    meta["cell_type"] = meta["cell_type"].replace("", "-")
    return pd.crosstab([meta["part"], meta["cls"]], meta["cell_type"], margins=True, margins_name="total")


def sample_images(ds: Dataset, per_class: int = 6, seed: int = 0) -> plt.Figure:
    """A row of random images per class (the largest classes when there are many: :func:`report.shown_classes`)."""
    rng = np.random.default_rng(seed)
    shown, picks = shown_picks(ds, per_class, rng)
    fig, axes = plt.subplots(len(shown), per_class, figsize=(1.6 * per_class, 1.7 * len(shown)), squeeze=False)
    for row, (cname, idx) in enumerate(zip(shown, picks)):
        for j in range(per_class):
            ax = axes[row, j]
            ax.axis("off")
            if j < len(idx):
                ax.imshow(ds.images[idx[j]], cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{cname}\n{ds.names[idx[j]]}", fontsize=7)
    _note_hidden(fig, len(shown), len(ds.class_names))
    fig.tight_layout()
    return fig


def shown_picks(ds: Dataset, n: int, rng: np.random.Generator) -> tuple[list[str], list[np.ndarray]]:
    """The classes a figure shows (:func:`report.shown_classes`) and up to ``n`` random images of each."""
    shown = report.shown_classes(ds.class_names, ds.counts())
    return shown, data.pick_per_class(ds.labels, n, rng, [ds.class_names.index(c) for c in shown])


def _bin_counts(block: dict) -> dict[str, int]:
    """Images per class over a sensitivity feature's bins."""
    return {c: sum(b["per_class"][c]["n"] for b in block["bins"]) for c in block["bins"][0]["per_class"]}


def _note_hidden(fig: plt.Figure, shown: int, total: int) -> None:
    """Say in the figure when it names only some of the classes."""
    if shown < total:
        fig.suptitle(f"{shown} of {total} classes (the largest)", fontsize=8)


def augmentation_preview(ds: Dataset, ops: Sequence[str] = ("hflip", "brightness", "clarity"), n: int = 2,
                         seed: int = 0, params: dict[str, float] | None = None) -> plt.Figure:
    """Originals beside each operation's copy, ``n`` images per class."""
    rng = np.random.default_rng(seed)
    picks = [i for idx in shown_picks(ds, n, rng)[1] for i in idx]
    fig, axes = plt.subplots(len(picks), 1 + len(ops), figsize=(1.8 * (1 + len(ops)), 1.9 * len(picks)),
                             squeeze=False)
    for r, i in enumerate(picks):
        src = ds.names[i]
        axes[r, 0].imshow(ds.images[i], cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_title(f"{ds.class_names[ds.labels[i]]}: original", fontsize=7)
        for j, op in enumerate(ops, start=1):
            p = (params or {}).get(op, augment.draw_param(op, src, seed))
            axes[r, j].imshow(augment.apply_operation(ds.images[i], op, p), cmap="gray", vmin=0, vmax=255)
            axes[r, j].set_title(op if np.isnan(p) else f"{op} {p:.2f}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _score_words(key: str) -> str:
    """``recall_normal`` as ``normal recall``, ``balanced_accuracy`` as ``balanced accuracy``."""
    return f"{key.removeprefix('recall_')} recall" if key.startswith("recall_") else key.replace("_", " ")


def metric_bars(records: Sequence[dict], keys: Sequence[str] | None = None, n_boot: int = 500) -> plt.Figure:
    """Bars per step (mean over seeds) from 0, each with two 95% intervals: over seeds (thick, training
    randomness; zero width when the seeds give one model) and from the validation images (thin, modules
    as clusters; :data:`fsfsl_utils.report.INTERVALS_NOTE`), so that a bar never looks more certain than
    its images allow. ``n_boot``: bootstrap resamples for a score without an image interval.

    ``keys`` default: accuracy and the recall of every class (of the target class and balanced
    accuracy when there are more than four classes)."""
    groups = report.by_step(records)
    names = records[0]["class_names"]
    keys = keys or (["accuracy"] + [f"recall_{c}" for c in names] if len(names) <= 4 else
                    ["accuracy", "balanced_accuracy", f"recall_{report.target_class(records[0])}"])
    table = report.step_table(records)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(groups), 3.6))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        x = np.arange(len(groups)) + (j - (len(keys) - 1) / 2) * width
        for xi, (step, recs) in zip(x, groups.items()):
            row = table.loc[step]
            mean = row[key]
            seed_lo, seed_hi = row[f"{key}_lo"], row[f"{key}_hi"]
            img_lo, img_hi = row.get(f"{key}_img_lo"), row.get(f"{key}_img_hi")
            if img_lo is None or pd.isna(img_lo):
                labels, logits = report.record_arrays(recs[0])
                fn = metrics.accuracy_fn if key == "accuracy" else metrics.balanced_accuracy_fn \
                    if key == "balanced_accuracy" else \
                    metrics.class_recall(recs[0]["class_names"].index(key.split("_", 1)[1]))
                img_lo, img_hi = metrics.bootstrap_ci(labels, logits, fn, n_boot=n_boot)
            ax.bar(xi, mean, width, color=CLASS_COLORS[j % 4], label=_score_words(key) if xi == x[0] else None)
            ax.errorbar(xi, mean, yerr=[[max(0.0, mean - img_lo)], [max(0.0, img_hi - mean)]], color="black",
                        lw=0.8, capsize=2)
            if seed_lo is not None and not pd.isna(seed_lo):
                ax.errorbar(xi, mean, yerr=[[max(0.0, mean - seed_lo)], [max(0.0, seed_hi - mean)]], color="black",
                            lw=2.5, capsize=0)
    ax.set_xticks(np.arange(len(groups)), [s.replace("_", "\n", 1) for s in groups], fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("score (axis from 0)")
    ax.set_title("Scores per step, mean over seeds; thick: 95% interval over seeds, thin: 95% interval from the "
                 "validation images", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    return fig


def confusion_matrices(records: Sequence[dict]) -> plt.Figure:
    """Confusion matrix of each step's first seed, three to a row, numbers and class names large enough to
    read in a report."""
    groups = report.by_step(records)
    cols = min(3, len(groups))
    rows = int(np.ceil(len(groups) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (step, recs) in zip(axes.flat, groups.items()):
        ax.axis("on")
        cm = np.asarray(recs[0]["metrics"]["confusion_matrix"])
        ax.imshow(cm, cmap="Blues")
        names = recs[0]["class_names"]
        if len(names) <= LABELLED_CELLS:  # beyond that, numbers and names would only overprint
            for (i, j), v in np.ndenumerate(cm):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=12,
                        color="black" if v < cm.max() / 2 else "white")
            ax.set_xticks(range(len(names)), [textwrap.shorten(n, 18) for n in names], fontsize=10)
            ax.set_yticks(range(len(names)), [textwrap.shorten(n, 18) for n in names], fontsize=10, rotation=90,
                          va="center")
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted", fontsize=10)
        ax.set_ylabel("true", fontsize=10)
        ax.set_title(f"{step} (seed {recs[0].get('seed', 0)})", fontsize=10)
    fig.tight_layout()
    return fig


def sensitivity_bars(result: dict, feature: str, ax: plt.Axes | None = None, title: str | None = None) -> plt.Figure:
    """Per-class recall by bin, Wilson 95% intervals as error bars, n above each bar."""
    block = result["sensitivity"][feature]
    own = ax is None  # a figure of its own: laid out here; else the caller lays out its figure
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 3.2))
    ax = ax or fig.add_subplot()
    classes = report.shown_classes(result["class_names"], _bin_counts(block))
    width = 0.8 / len(classes)
    for c, cname in enumerate(classes):
        cells = [b["per_class"][cname] for b in block["bins"]]
        x = np.arange(len(cells)) + (c - (len(classes) - 1) / 2) * width
        rec = [np.nan if v["recall"] is None else v["recall"] for v in cells]
        err = np.array([[0, 0] if v["recall_ci"] is None else [v["recall"] - v["recall_ci"][0],
                                                                v["recall_ci"][1] - v["recall"]] for v in cells]).T
        err = np.clip(err, 0, None)  # rounding can leave -1e-17 at recall 0 or 1
        ax.bar(x, rec, width, yerr=err, capsize=2, color=CLASS_COLORS[c % 4],
               label=f"{cname} (std {block['std'][cname] or 0:.3f}" + (
                   "" if block["p_value"][cname] is None else f", p {report.format_p(block['p_value'][cname])}") + ")")
        for xi, v in zip(x, cells):
            ax.text(xi, 1.02, str(v["n"]), ha="center", fontsize=6)
    ax.set_xticks(np.arange(len(block["bins"])), [b["label"] for b in block["bins"]], fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("recall in bin")
    ax.set_title(title or f"{feature} ({block['binning']} bins)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    if own:
        fig.tight_layout()
    return fig


def sensitivity_panel(result: dict, features: Sequence[str] = ("brightness", "clarity")) -> plt.Figure:
    """:func:`sensitivity_bars` for several features, one row each."""
    fig, axes = plt.subplots(len(features), 1, figsize=(6.5, 3.0 * len(features)), squeeze=False)
    for ax, f in zip(axes[:, 0], features):
        sensitivity_bars(result, f, ax, f"{result.get('step', '')} {f} ({result['sensitivity'][f]['binning']} bins)")
    fig.tight_layout()
    return fig


def feature_histograms(record: dict, features: Sequence[str] = ("brightness", "clarity", "contrast")) -> plt.Figure:
    """Distribution of each image feature per class on the validation images, with the bin edges."""
    values = record["feature_values"]
    labels = np.asarray(record["predictions"]["labels"])
    features = [f for f in features if f in values]
    fig, axes = plt.subplots(1, len(features), figsize=(3.6 * len(features), 2.8), squeeze=False)
    for ax, f in zip(axes[0], features):
        v = np.asarray(values[f])
        for k, cname in enumerate(report.record_classes_shown(record)):
            c = record["class_names"].index(cname)
            ax.hist(v[labels == c], bins=30, alpha=0.6, color=CLASS_COLORS[k % 4], label=cname, density=True)
        for e in record["sensitivity"][f]["edges"][1:-1]:
            ax.axvline(e, color="gray", lw=0.8, ls="--")
        ax.set_title(f"{f} (dashed: bin edges)", fontsize=9)
        ax.set_xlabel(FEATURE_UNITS.get(f, f), fontsize=8)
    axes[0, 0].set_ylabel("density (per class)", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def sensitivity_before_after(before: dict, after: dict, feature: str) -> plt.Figure:
    """One feature's recall by bin for two records on one axis, per class: before dashed with open
    markers, after solid (Wilson 95% intervals as error bars), so each bin's change reads directly."""
    block = after["sensitivity"][feature]
    classes = report.shown_classes(after["class_names"], _bin_counts(block))
    x = np.arange(len(block["bins"]))
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for c, cname in enumerate(classes):
        for rec, when, style, shift in ((before, "before", "--", -0.05), (after, "after", "-", 0.05)):
            cells = [b["per_class"][cname] for b in rec["sensitivity"][feature]["bins"]]
            y = np.array([np.nan if v["recall"] is None else v["recall"] for v in cells])
            err = np.clip(np.array([[0, 0] if v["recall_ci"] is None else
                                    [v["recall"] - v["recall_ci"][0], v["recall_ci"][1] - v["recall"]]
                                    for v in cells]).T, 0, None)
            ax.errorbar(x + shift, y, yerr=err, linestyle=style, marker="o", capsize=2, color=CLASS_COLORS[c % 4],
                        markerfacecolor="white" if when == "before" else CLASS_COLORS[c % 4],
                        label=f"{cname}, {when}: {rec['step']}")
    ax.set_xticks(x, [b["label"] for b in block["bins"]], fontsize=7)
    ax.set_xlabel(f"{feature} bin ({block['binning']}, {FEATURE_UNITS.get(feature, '')})", fontsize=8)
    ax.set_ylabel("recall in bin")
    ax.set_ylim(0, 1.05)
    n = len(after["predictions"]["labels"])
    ax.set_title(f"{feature}: recall by bin before and after, seed {after['seed']}, n = {n} validation images",
                 fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def sweep_curves(result: dict) -> plt.Figure:
    """Per-class recall against the operation's strength (from :func:`sensitivity.sweep`)."""
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    classes = report.shown_classes(list(result["rows"][0]["recall"]))
    for c, cname in enumerate(classes):
        ax.plot(result["levels"], [r["recall"][cname] for r in result["rows"]], "o-", color=CLASS_COLORS[c % 4],
                label=cname)
    ax.axvline(1.0, color="gray", lw=0.8, ls="--")
    ax.text(1.0, 0.02, " unchanged", fontsize=7, color="gray")
    ax.set_xlabel(f"{result['op']} level (1.0: the image as it is)")
    ax.set_ylabel("recall")
    ax.set_ylim(0, 1.02)
    n = f"{result['n']} validation images" if "n" in result else "validation images"
    ax.set_title(f"{result['op']} sweep: the same {n}, changed and predicted again", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roc_curves(records: Sequence[dict], mark_normal_recall: Sequence[float] = (0.973, 0.95)) -> plt.Figure:
    """Validation ROC curves of every step (first seed), defect recall against normal recall."""
    fig, ax = plt.subplots(figsize=(5, 4.2))
    for k, (step, recs) in enumerate(report.by_step(records).items()):
        labels, logits = report.record_arrays(recs[0])
        d = recs[0]["class_names"].index(report.target_class(recs[0]))
        r = recs[0]["class_names"].index(report.reference_class(recs[0]))
        fpr, tpr, _ = roc_curve(labels == d, logits[:, d] - logits[:, r])
        color = plt.cm.tab10(k % 10)
        ax.plot(1 - fpr, tpr, label=step, color=color, lw=1.3)
        point = next((x["operating_point"] for x in recs if x.get("operating_point")), None)
        for reading, filled in ((point, True), (point and point["optimistic"], False)):
            if reading and "validation" in reading:
                v = reading["validation"]
                ax.plot(v["reference_recall"]["value"], v["target_recall"]["value"], "o", ms=6, color=color,
                        mfc=color if filled else "none")
    for nr in mark_normal_recall:
        ax.axvline(nr, color="gray", ls=":", lw=0.8)
    ax.set_xlim(0.8, 1.0)
    ax.set_xlabel(f"{report.reference_class(records[0])} recall")
    ax.set_ylabel(f"{report.target_class(records[0])} recall")
    ax.legend(fontsize=7)
    ax.set_title("ROC (validation, first seed); dots: the kept model's threshold chosen on the training part "
                 "(filled) and on the validation images (open); dotted: 97.3% and 95% normal recall", fontsize=7,
                 wrap=True)
    fig.tight_layout()
    return fig


def paired_differences(records: Sequence[dict], pairs: Sequence[tuple[str, str]] = report.STUDY_COMPARISONS
                       + report.CONTROL_COMPARISONS, key: str = "recall_target") -> plt.Figure:
    """Per comparison A - B: one dot per seed / split (paired on the same validation images), the mean
    with its 95% interval (seeds and images, :func:`fsfsl_utils.report.paired_effects`) and, where the
    study published one, its effect (a red cross)."""
    groups = report.by_step(records)
    shown = [(a, b) for a, b in pairs if a in groups and b in groups]
    label = f"{report.target_class(records[0])} recall" if key == "recall_target" else "accuracy"
    metric = "recall" if key == "recall_target" else "accuracy"
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.5 * max(1, len(shown))))
    study_shown = False
    for y, (a, b) in enumerate(shown):
        other = {(r["split_seed"], r["seed"]): r for r in groups[b]}
        diffs = [100 * (report.scores(r)[key] - report.scores(other[k])[key]) for r in groups[a]
                 if (k := (r["split_seed"], r["seed"])) in other]
        ax.scatter(diffs, [y] * len(diffs), color=CLASS_COLORS[0], s=14, alpha=0.6, zorder=2)
        effect = report.paired_effects(records, a, b, metric)
        if effect is not None and "not_computed" not in effect:
            ax.plot([100 * effect["low"], 100 * effect["high"]], [y, y], color="black", lw=1.5, zorder=1)
            ax.plot([100 * effect["estimate"]] * 2, [y - 0.25, y + 0.25], color="black", lw=2.5, zorder=3)
            study = report.study_effect(a, b, metric) if report.on_elpv(records[0]) else None
            if study is not None:
                ax.scatter([100 * study], [y], marker="x", color="#c0392b", s=40, zorder=4,
                           label=None if study_shown else "the study's effect (one run)")
                study_shown = True
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(range(len(shown)), [f"{report.arm_words(a)} - {report.arm_words(b)}" for a, b in shown],
                  fontsize=7)
    ax.set_xlabel(f"{label} difference, points (dots: seeds; bar: mean; line: 95% interval, seeds and images)")
    ax.set_title(f"Paired differences in {label} on the same validation images", fontsize=8)
    if study_shown:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def wrong_gallery(record: dict, images: dict[str, np.ndarray] | Dataset, n: int = 12) -> plt.Figure:
    """The misclassified validation images, most confident mistakes first."""
    if isinstance(images, Dataset):
        images = dict(zip(images.names, images.images))
    labels, logits = report.record_arrays(record)
    prob = metrics.softmax(logits)
    pred = logits.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-prob[wrong, pred[wrong]])][:n]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.4 * rows), squeeze=False)
    names, classes = record["predictions"]["names"], record["class_names"]
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[names[i]], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{textwrap.shorten(names[i], 22)}\ntrue {textwrap.shorten(classes[labels[i]], 12)}\n"
                     f"pred {textwrap.shorten(classes[pred[i]], 12)} {prob[i, pred[i]]:.2f}", fontsize=6)
    fig.tight_layout(h_pad=1.2)
    return fig


def heat_map_gallery(model: object, record: dict, images: dict[str, np.ndarray] | Dataset, n: int = 6) -> plt.Figure:
    """Where a kept model looks (Grad-CAM, :mod:`fsfsl_utils.deploy.cam`): its ``n`` most confident
    target-class images and its ``n`` most confident mistakes on the validation images, each cell
    beside its heat map."""
    from .deploy import cam

    if isinstance(images, Dataset):
        images = dict(zip(images.names, images.images))
    labels, logits = report.record_arrays(record)
    prob = metrics.softmax(logits)
    t = record["class_names"].index(report.target_class(record))
    pred = logits.argmax(1)
    hits = np.flatnonzero((labels == t) & (pred == t))
    hits = hits[np.argsort(-prob[hits, t])][:n]
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-prob[wrong, pred[wrong]])][:n]
    names, classes = record["predictions"]["names"], record["class_names"]
    rows = [("most confident " + classes[t], hits), ("most confident mistakes", wrong)]
    fig, axes = plt.subplots(2, 2 * n, figsize=(1.5 * 2 * n, 3.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, (title, idx) in enumerate(rows):
        if not len(idx):
            continue
        cells = np.stack([images[names[i]] for i in idx])
        maps = cam.heat_maps(model, cells)
        for k, i in enumerate(idx):
            axes[row, 2 * k].imshow(cells[k], cmap="gray", vmin=0, vmax=255)
            axes[row, 2 * k + 1].imshow(cam.overlay(cells[k], maps[k]))
            axes[row, 2 * k].set_title(f"true {classes[labels[i]]}\npred {classes[pred[i]]} {prob[i, pred[i]]:.2f}",
                                       fontsize=6)
        axes[row, 0].text(-0.1, 0.5, title, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right",
                          fontsize=7)
    fig.suptitle(f"Where the kept model of {record['step']} (seed {record['seed']}) looks: Grad-CAM over each cell",
                 fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(curves: dict[str, pd.DataFrame]) -> plt.Figure:
    """Accuracy and the target class's recall against the number of labelled target images, one line per
    recipe, with the seeds' 95% intervals as bars (from :func:`fsfsl_utils.report.learning_curve`)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for k, (name, curve) in enumerate(curves.items()):
        if curve.empty:
            continue
        x_col = next(c for c in curve.columns if c.endswith("images labelled"))
        for ax, metric in zip(axes, ("accuracy", next(c[:-4] for c in curve.columns if c.endswith("recall (%)")))):
            y = curve[f"{metric} (%)"].to_numpy(float)
            spans = [tuple(float(v) for v in s.strip("[]").split(", ")) if s else (np.nan, np.nan)
                     for s in curve[f"{metric} 95% interval"]]
            low, high = np.array([s[0] for s in spans]), np.array([s[1] for s in spans])
            ax.errorbar(curve[x_col], y, yerr=[np.nan_to_num(y - low), np.nan_to_num(high - y)], marker="o",
                        capsize=3, color=CLASS_COLORS[k % 4], label=name)
            ax.set_xscale("log", base=2)
            ax.set_xlabel(x_col, fontsize=8)
            ax.set_ylabel(f"{metric} (%)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.suptitle("Learning curves (mean over seeds, 95% interval over seeds)", fontsize=9)
    fig.tight_layout()
    return fig
