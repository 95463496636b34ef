"""Widgets: ipywidgets explorers over the kit's plain functions.

- :class:`SensitivityExplorer`: a record, a feature and a class -> recall by bin; a bin -> the gallery
  of its images (true / predicted label, score), wrong ones first.
- :class:`AugmentationPreviewer`: brightness and clarity sliders -> originals beside their copies
  for both classes, and how many images each policy makes per class.
- :class:`RunComparison`: two records -> metrics side by side, exact McNemar, and the images one
  gets right and the other wrong.

Each widget keeps what it shows in plain attributes (``items``, ``plotted``, ``counts``, ...) and
is built from functions that headless code can call directly. :func:`show` displays the widget in
a live notebook, or a static figure in batch runs (papermill has no frontend to talk to).
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display
from PIL import Image

from . import augment, metrics, plots, report, sensitivity
from .data import Dataset

GALLERY_SIZE = 12


# ----------------------------------------------------------------------------- plain functions
def bin_index(record: dict, feature: str) -> np.ndarray:
    """The bin of every validation image of a record for one feature (as ``analyse`` formed them)."""
    block = record["sensitivity"][feature]
    idx, _ = sensitivity.assign_bins(np.asarray(record["feature_values"][feature]), len(block["bins"]),
                                     block["binning"])
    return idx


def gallery_items(record: dict, feature: str, bin_label: str, class_name: str) -> list[dict]:
    """Images of ``class_name`` in one bin: name, true and predicted class, score; wrong first."""
    labels, logits = report.record_arrays(record)
    prob = metrics.softmax(logits)
    pred = logits.argmax(1)
    names, classes = record["predictions"]["names"], record["class_names"]
    b = [x["label"] for x in record["sensitivity"][feature]["bins"]].index(bin_label)
    c = classes.index(class_name)
    members = np.flatnonzero((bin_index(record, feature) == b) & (labels == c))
    items = [{"name": names[i], "label": classes[labels[i]], "predicted": classes[pred[i]],
              "score": float(prob[i, pred[i]]), "correct": bool(pred[i] == labels[i])} for i in members]
    return sorted(items, key=lambda d: (d["correct"], -d["score"]))


def disagreements(rec_a: dict, rec_b: dict) -> dict[str, list[str]]:
    """Validation images that A gets right and B wrong (``a_only``), and the reverse (``b_only``)."""
    la, lga = report.record_arrays(rec_a)
    lb, lgb = report.record_arrays(rec_b)
    if rec_a["predictions"]["names"] != rec_b["predictions"]["names"]:
        raise ValueError("the two records were evaluated on different validation images")
    ra, rb = lga.argmax(1) == la, lgb.argmax(1) == lb
    names = np.asarray(rec_a["predictions"]["names"])
    return {"a_only": names[ra & ~rb].tolist(), "b_only": names[~ra & rb].tolist()}


def compare_table(rec_a: dict, rec_b: dict) -> pd.DataFrame:
    """Scores of two records side by side, with the difference."""
    sa, sb = report.scores(rec_a), report.scores(rec_b)
    frame = pd.DataFrame({f"A: {label(rec_a)}": sa, f"B: {label(rec_b)}": sb})
    frame["difference"] = frame.iloc[:, 0] - frame.iloc[:, 1]
    return frame.round(4)


def policy_counts(class_counts: dict[str, int], policies: Sequence[str]) -> pd.DataFrame:
    """Images per class each policy produces from the given counts."""
    return pd.DataFrame({p: augment.get_policy(p).counts(class_counts) for p in policies}).T


def label(record: dict) -> str:
    split = f" split{record['split_seed']}" if record.get("split_seed") else ""
    return f"{record['step']} seed{record['seed']}{split}"


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def show(widget: SensitivityExplorer | AugmentationPreviewer | RunComparison, interactive: bool = True) -> None:
    """Display the live widget, or (batch runs) a static figure of its current view."""
    if interactive:
        display(widget.widget)
    else:
        fig = widget.static_figure()
        display(fig)
        plt.close(fig)


def _images_of(images: dict[str, np.ndarray] | Dataset) -> dict[str, np.ndarray]:
    return dict(zip(images.names, images.images)) if isinstance(images, Dataset) else dict(images)


def _tile(image: np.ndarray, caption: str, width: int = 110) -> w.VBox:
    return w.VBox([w.Image(value=png(image), format="png", width=width),
                   w.HTML(f"<div style='font-size:10px;line-height:1.1'>{html.escape(caption)}</div>")],
                  layout=w.Layout(width=f"{width + 8}px"))


# ----------------------------------------------------------------------------- widgets
class SensitivityExplorer:
    """Record / feature / class -> recall by bin; bin -> gallery of its images, wrong first."""

    def __init__(self, records: Sequence[dict], images: dict[str, np.ndarray] | Dataset,
                 features: Sequence[str] = ("brightness", "clarity", "contrast")):
        if not records:
            raise ValueError("SensitivityExplorer needs at least one run record")
        self.records = {label(r): r for r in records}
        self.images = _images_of(images)
        first = records[0]
        feats = [f for f in features if f in first["sensitivity"]]
        self.record = w.Dropdown(options=list(self.records), description="record")
        self.feature = w.Dropdown(options=feats, description="feature")
        self.cls = w.Dropdown(options=first["class_names"], value=first["class_names"][-1], description="class")
        self.bin = w.ToggleButtons(options=[b["label"] for b in first["sensitivity"][feats[0]]["bins"]],
                                   description="bin", style={"button_width": "110px"})
        self.plot = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.caption = w.HTML()
        self.gallery = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        for control in (self.record, self.feature, self.cls):
            control.observe(self._refresh_all, names="value")
        self.bin.observe(self._refresh_gallery, names="value")
        self.widget = w.VBox([w.HBox([self.record, self.feature, self.cls]), self.plot, self.bin, self.caption,
                              self.gallery])
        self.plotted: dict[str, list[float | None]] = {}
        self.items: list[dict] = []
        self._refresh_all()

    @property
    def current(self) -> dict:
        return self.records[self.record.value]

    def _refresh_all(self, change: dict | None = None) -> None:
        rec, feature = self.current, self.feature.value
        block = rec["sensitivity"][feature]
        self.plotted = {c: [b["per_class"][c]["recall"] for b in block["bins"]]
                        for c in report.record_classes_shown(rec)}
        fig = plots.sensitivity_bars(rec, feature, title=f"{label(rec)}: {feature}")
        fig.set_size_inches(7, 2.8)
        self.plot.value = figure_png(fig)
        plt.close(fig)
        self._refresh_gallery()

    def _refresh_gallery(self, change: dict | None = None) -> None:
        self.items = gallery_items(self.current, self.feature.value, self.bin.value, self.cls.value)
        wrong = sum(not d["correct"] for d in self.items)
        self.caption.value = (f"<b>{html.escape(str(self.cls.value))}</b> images in the "
                              f"{html.escape(str(self.feature.value))} bin <b>{html.escape(str(self.bin.value))}</b>: "
                              f"{len(self.items)} ({wrong} wrong); first {GALLERY_SIZE}:")
        self.gallery.children = [
            _tile(self.images[d["name"]], f"{'✗' if not d['correct'] else '✓'} {d['name']}<br>true {d['label']}, "
                  f"pred {d['predicted']} {d['score']:.2f}") for d in self.items[:GALLERY_SIZE]]

    def static_figure(self) -> plt.Figure:
        """The current view (recall bars + the bin's gallery) as one figure."""
        items = self.items[:6]
        fig = plt.figure(figsize=(10, 5.2))
        grid = fig.add_gridspec(2, 6, height_ratios=[1.3, 1])
        plots.sensitivity_bars(self.current, self.feature.value, fig.add_subplot(grid[0, :]),
                               f"{label(self.current)}: {self.feature.value}")
        for j in range(6):
            ax = fig.add_subplot(grid[1, j])
            ax.axis("off")
            if j < len(items):
                d = items[j]
                ax.imshow(self.images[d["name"]], cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{d['name']}\n{d['label']}->{d['predicted']} {d['score']:.2f}", fontsize=6)
        fig.suptitle(f"{self.cls.value} in bin {self.bin.value}: wrong first", fontsize=9)
        return fig


class AugmentationPreviewer:
    """Brightness and clarity sliders over originals of both classes, and the counts each policy makes."""

    def __init__(self, train: Dataset, policies: Sequence[str] = ("none", "flip", "full", "balanced"),
                 per_class: int = 1, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.train = train
        self.picks = [int(i) for idx in plots.shown_picks(train, per_class, rng)[1] for i in idx]
        self.brightness = w.FloatSlider(value=0.7, min=0.4, max=1.6, step=0.05, description="brightness")
        self.clarity = w.FloatSlider(value=0.0, min=0.0, max=3.0, step=0.1, description="clarity")
        self.grid = w.VBox()
        self.table = w.HTML()
        self.counts = policy_counts(train.counts(), policies)
        self.table.value = "<b>images per class after expansion</b>" + self.counts.to_html(escape=True)
        self.brightness.observe(self._refresh, names="value")
        self.clarity.observe(self._refresh, names="value")
        self.widget = w.VBox([w.HBox([self.brightness, self.clarity]), self.grid, self.table])
        self.current: dict[str, list[np.ndarray]] = {}
        self._refresh()

    def _views(self) -> dict[str, list[np.ndarray]]:
        ims = [self.train.images[i] for i in self.picks]
        return {"original": ims,
                "brightness": [augment.apply_operation(im, "brightness", self.brightness.value) for im in ims],
                "clarity": [augment.apply_operation(im, "clarity", self.clarity.value) for im in ims]}

    def _refresh(self, change: dict | None = None) -> None:
        self.current = self._views()
        rows = []
        for k, i in enumerate(self.picks):
            cname = self.train.class_names[self.train.labels[i]]
            rows.append(w.HBox([_tile(self.current[op][k], f"{cname}: {op}" + (
                "" if op == "original" else f" {getattr(self, op).value:.2f}"), 150) for op in self.current]))
        self.grid.children = rows

    def static_figure(self) -> plt.Figure:
        fig, axes = plt.subplots(len(self.picks), 3, figsize=(6, 2.1 * len(self.picks)), squeeze=False)
        for r in range(len(self.picks)):
            for j, op in enumerate(self.current):
                axes[r, j].imshow(self.current[op][r], cmap="gray", vmin=0, vmax=255)
                axes[r, j].set_title(op, fontsize=8)
                axes[r, j].axis("off")
        fig.tight_layout()
        return fig


class RunComparison:
    """Two records side by side: scores, exact McNemar, images one gets right and the other wrong."""

    def __init__(self, records: Sequence[dict], images: dict[str, np.ndarray] | Dataset):
        if len(records) < 2:
            raise ValueError("RunComparison needs at least two run records")
        self.records = {label(r): r for r in records}
        self.images = _images_of(images)
        keys = list(self.records)
        self.a = w.Dropdown(options=keys, value=keys[-1], description="A")
        self.b = w.Dropdown(options=keys, value=keys[0], description="B")
        self.table_html = w.HTML()
        self.test_html = w.HTML()
        self.gallery_a = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.gallery_b = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.a.observe(self._refresh, names="value")
        self.b.observe(self._refresh, names="value")
        self.widget = w.VBox([w.HBox([self.a, self.b]), self.table_html, self.test_html,
                              w.HTML("<b>A right, B wrong</b>"), self.gallery_a,
                              w.HTML("<b>B right, A wrong</b>"), self.gallery_b])
        self._refresh()

    def _refresh(self, change: dict | None = None) -> None:
        ra, rb = self.records[self.a.value], self.records[self.b.value]
        self.table = compare_table(ra, rb)
        labels, la = report.record_arrays(ra)
        _, lb = report.record_arrays(rb)
        self.test = metrics.mcnemar(labels, la, lb)
        self.diff = disagreements(ra, rb)
        self.table_html.value = self.table.to_html(escape=True)
        verdict = "a difference" if self.test["p_value"] < 0.05 else "no evidence of a difference"
        self.test_html.value = (f"exact McNemar: A only right on {self.test['a_only']}, B only on "
                                f"{self.test['b_only']} images, p = {self.test['p_value']:.3g} ({verdict})")
        for box, names in ((self.gallery_a, self.diff["a_only"]), (self.gallery_b, self.diff["b_only"])):
            box.children = [_tile(self.images[n], n, 90) for n in names[:GALLERY_SIZE]]

    def static_figure(self) -> plt.Figure:
        fig, ax = plt.subplots(figsize=(7, 0.4 + 0.28 * len(self.table)))
        ax.axis("off")
        tab = ax.table(cellText=self.table.to_numpy().round(4), rowLabels=list(self.table.index),
                       colLabels=list(self.table.columns), loc="center")
        tab.set_fontsize(8)
        ax.set_title(f"McNemar p = {self.test['p_value']:.3g}; A only right {self.test['a_only']}, "
                     f"B only right {self.test['b_only']}", fontsize=9)
        return fig
