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
from collections.abc import Sequence

import ipywidgets as w
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import display

from . import augment, metrics, plots, report
from .data import Dataset
from .explore import (
    GALLERY_SIZE,
    bin_index,
    compare_table,
    default_pair,
    disagreements,
    figure_png,
    flipped_gallery,
    gallery_items,
    label,
    png,
    policy_counts,
    pooled_items,
    pooled_record,
)


def show(widget: SensitivityExplorer | AugmentationPreviewer | RunComparison, interactive: bool = True) -> None:
    """Display the live widget, or (batch runs) a static figure of its current view."""
    if interactive:
        display(widget.widget)
    else:
        print("A static view of this explorer (a batch run). To click bins and images, open the run live: "
              "make explore RUN=<its results folder>")
        fig = widget.static_figure()
        display(fig)
        plt.close(fig)


def _images_of(images: dict[str, np.ndarray] | Dataset) -> dict[str, np.ndarray]:
    return dict(zip(images.names, images.images)) if isinstance(images, Dataset) else dict(images)


def image_tile(image: np.ndarray, caption: str | Sequence[str], width: int = 110) -> w.VBox:
    lines = [caption] if isinstance(caption, str) else list(caption)
    text = "<br>".join(html.escape(line) for line in lines)
    return w.VBox([w.Image(value=png(image), format="png", width=width),
                   w.HTML(f"<div style='font-size:10px;line-height:1.15'>{text}</div>")],
                  layout=w.Layout(width=f"{width + 8}px"))


class Gallery:
    """Image tiles with captions, :data:`GALLERY_SIZE` at a time ("show more" adds the next ones);
    each tile's "enlarge" button shows that image large below the tiles. With a saved ``model``
    (:mod:`fsfsl_utils.deploy`), "show heat map" overlays where that model looks (Grad-CAM) on the
    enlarged image."""

    def __init__(self, images: dict[str, np.ndarray], tile_width: int = 110, large_width: int = 380,
                 model: object | None = None):
        self.images, self.tile_width, self.model = images, tile_width, model
        self.box = w.HBox(layout=w.Layout(flex_flow="row wrap"))
        self.more = w.Button(description="show more", layout=w.Layout(width="190px"))
        self.more.on_click(self.show_more)
        self.large = w.Image(format="png", layout=w.Layout(width=f"{large_width}px", display="none"))
        self.large_caption = w.HTML()
        self.heat = w.ToggleButton(description="show heat map", value=False,
                                   layout=w.Layout(width="140px", display="none" if model is None else ""))
        self.heat.observe(lambda _change: self._show_large(), names="value")
        self.widget = w.VBox([self.box, self.more, w.HBox([self.large, w.VBox([self.large_caption, self.heat])])])
        self.entries: list[tuple[str, list[str]]] = []
        self.shown = 0
        self.enlarged: str | None = None

    def set(self, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
        """Show these ``(image name, caption lines)``, the first page of them."""
        self.entries = [(name, list(lines)) for name, lines in entries]
        self.shown, self.box.children, self.enlarged = 0, (), None
        self.large.layout.display, self.large_caption.value = "none", ""
        self.show_more()

    def show_more(self, _button: object = None) -> None:
        start, self.shown = self.shown, min(len(self.entries), self.shown + GALLERY_SIZE)
        self.box.children = (*self.box.children, *[self._tile(n, c) for n, c in self.entries[start:self.shown]])
        left = len(self.entries) - self.shown
        self.more.description = f"show {min(left, GALLERY_SIZE)} more ({left} left)"
        self.more.layout.display = "" if left else "none"

    def enlarge(self, name: str) -> None:
        lines = dict(self.entries).get(name, [name])
        self.enlarged = name
        self._show_large()
        self.large.layout.display = ""
        self.large_caption.value = "<div style='padding:0 1em'>" + "<br>".join(html.escape(x) for x in lines) + \
            "</div>"

    def _show_large(self) -> None:
        """The enlarged image, or its Grad-CAM overlay when "show heat map" is on."""
        if self.enlarged is None:
            return
        image = self.images[self.enlarged]
        if self.heat.value and self.model is not None:
            from .deploy import cam

            image = cam.overlay(image, cam.heat_maps(self.model, image[None])[0])
        self.large.value = png(image)

    def _tile(self, name: str, lines: list[str]) -> w.VBox:
        tile = image_tile(self.images[name], lines, self.tile_width)
        button = w.Button(description="enlarge", layout=w.Layout(width="80px", height="24px"))
        button.on_click(lambda _b, n=name: self.enlarge(n))
        tile.children = (*tile.children, button)
        return tile


def _item_caption(d: dict, feature: str) -> list[str]:
    mark = f"wrong in {d['wrong_in']} of {d['runs']}" if d["runs"] > 1 else ("✗ wrong" if not d["correct"] else "✓")
    score = f"true-class score {d['score']:.2f}" if d["runs"] > 1 else f"pred {d['predicted']} {d['score']:.2f}"
    return [mark, d["name"], f"true {d['label']}, {score}", f"{feature} {d['value']:.4g}"]


def _range_marks(slider: w.FloatSlider, ranges: Sequence[tuple[float, float]], width: int) -> w.HTML:
    """A strip under a slider's track: the ranges training copies are drawn from (green) and 1.0,
    "unchanged" (a black tick)."""
    span = slider.max - slider.min
    pos = lambda v: 100 * (v - slider.min) / span  # noqa: E731
    parts = [f"<div title='training copies: {lo:g}-{hi:g}' style='position:absolute;left:{pos(lo):.1f}%;"
             f"width:{pos(hi) - pos(lo):.1f}%;top:0;height:8px;background:#4caf50'></div>" for lo, hi in ranges]
    parts.append(f"<div title='1.0: unchanged' style='position:absolute;left:{pos(1.0):.1f}%;top:-2px;width:2px;"
                 "height:12px;background:#000'></div>")
    text = "green: the range training copies are drawn from (" + ", ".join(f"{lo:g}-{hi:g}" for lo, hi in ranges) + \
        "); black: 1.0, unchanged"
    return w.HTML(f"<div style='margin-left:88px;width:{width - 150}px'><div style='position:relative;height:10px;"
                  f"background:#eee'>{''.join(parts)}</div><div style='font-size:10px;color:#555'>{text}</div></div>")


# ----------------------------------------------------------------------------- widgets
class SensitivityExplorer:
    """Run (one seed, or all seeds of a step pooled) / feature / class -> recall by bin; bin -> a
    gallery of its images (wrong first), paged, each one enlargeable."""

    def __init__(self, records: Sequence[dict], images: dict[str, np.ndarray] | Dataset,
                 features: Sequence[str] = ("brightness", "clarity", "contrast"), model: object | None = None):
        if not records:
            raise ValueError("SensitivityExplorer needs at least one run record")
        # label -> (the record shown: one run's, or a step's seeds pooled, made once; the runs behind it)
        self.groups: dict[str, tuple[dict, list[dict]]] = {label(r): (r, [r]) for r in records}
        for recs in report.by_step(report.same_split(records)).values():
            if len(recs) > 1:
                pooled = pooled_record(recs)
                self.groups[label(pooled)] = (pooled, recs)
        self.images = _images_of(images)
        first = records[0]
        feats = [f for f in features if f in first["sensitivity"]]
        self.record = w.Dropdown(options=list(self.groups), description="run", layout=w.Layout(width="340px"))
        self.feature = w.Dropdown(options=feats, description="feature")
        self.cls = w.Dropdown(options=first["class_names"], value=report.target_class(first), description="class")
        self.bin = w.ToggleButtons(options=[b["label"] for b in first["sensitivity"][feats[0]]["bins"]],
                                   description="bin", style={"button_width": "110px"})
        self.plot = w.Image(format="png", layout=w.Layout(max_width="760px"))
        self.caption = w.HTML()
        self.gallery_view = Gallery(self.images, model=model)
        for control in (self.record, self.feature, self.cls):
            control.observe(self._refresh_all, names="value")
        self.bin.observe(self._refresh_gallery, names="value")
        self.widget = w.VBox([w.HBox([self.record, self.feature, self.cls]), self.plot, self.bin, self.caption,
                              self.gallery_view.widget])
        self.plotted: dict[str, list[float | None]] = {}
        self.items: list[dict] = []
        self._refresh_all()

    @property
    def gallery(self) -> w.HBox:
        return self.gallery_view.box

    @property
    def current(self) -> dict:
        """The record shown: one run's, or the pooled record of a step's seeds."""
        return self.groups[self.record.value][0]

    def _refresh_all(self, change: dict | None = None) -> None:
        rec, feature = self.current, self.feature.value
        block = rec["sensitivity"][feature]
        self.plotted = {c: [b["per_class"][c]["recall"] for b in block["bins"]]
                        for c in report.record_classes_shown(rec)}
        recalls = [2.0 if b["per_class"][self.cls.value]["recall"] is None else b["per_class"][self.cls.value]["recall"]
                   for b in block["bins"]]
        self.bin.unobserve(self._refresh_gallery, names="value")
        self.bin.value = block["bins"][int(np.argmin(recalls))]["label"]  # the weakest bin of the class shown
        self.bin.observe(self._refresh_gallery, names="value")
        fig = plots.sensitivity_bars(rec, feature, title=f"{label(rec)}: {feature}")
        fig.set_size_inches(7, 2.8)
        self.plot.value = figure_png(fig)
        plt.close(fig)
        self._refresh_gallery()

    def _refresh_gallery(self, change: dict | None = None) -> None:
        recs, feature = self.groups[self.record.value][1], self.feature.value
        self.items = gallery_items(recs[0], feature, self.bin.value, self.cls.value) if len(recs) == 1 else \
            pooled_items(recs, feature, self.bin.value, self.cls.value)
        wrong = sum(not d["correct"] for d in self.items)
        runs = f" over {len(recs)} runs" if len(recs) > 1 else ""
        self.caption.value = (f"<b>{html.escape(str(self.cls.value))}</b> images in the "
                              f"{html.escape(str(feature))} bin <b>{html.escape(str(self.bin.value))}</b>: "
                              f"{len(self.items)} ({wrong} wrong{runs}), wrong first. The class's weakest bin is "
                              "selected when the view changes; click another bin to see its images.")
        self.gallery_view.set([(d["name"], _item_caption(d, feature)) for d in self.items])

    def static_figure(self) -> plt.Figure:
        """The current view (recall bars + the bin's first images) as one figure."""
        items = self.items[:6]
        fig = plt.figure(figsize=(10, 5.6))
        grid = fig.add_gridspec(2, 6, height_ratios=[1.3, 1], hspace=0.55)
        plots.sensitivity_bars(self.current, self.feature.value, fig.add_subplot(grid[0, :]),
                               f"{label(self.current)}: {self.feature.value}; below: {self.cls.value} images in "
                               f"bin {self.bin.value}, wrong first")
        for j in range(6):
            ax = fig.add_subplot(grid[1, j])
            ax.axis("off")
            if j < len(items):
                d = items[j]
                ax.imshow(self.images[d["name"]], cmap="gray", vmin=0, vmax=255)
                ax.set_title("\n".join(_item_caption(d, self.feature.value)[:3]), fontsize=6)
        return fig


class AugmentationPreviewer:
    """Brightness and clarity sliders over originals of both classes (marked: 1.0 unchanged, and the
    ranges training copies are drawn from), other images on request, and the counts each policy makes."""

    SLIDER_WIDTH = 460

    def __init__(self, train: Dataset, policies: Sequence[str] = ("none", "flip", "full", "balanced"),
                 per_class: int = 1, seed: int = 0):
        self.train, self.per_class, self.seed = train, per_class, seed
        self.picks = self._pick(seed)
        style, layout = {"description_width": "80px"}, w.Layout(width=f"{self.SLIDER_WIDTH}px")
        self.brightness = w.FloatSlider(value=0.9, min=0.4, max=1.6, step=0.01, description="brightness",
                                        style=style, layout=layout)
        self.clarity = w.FloatSlider(value=0.2, min=0.0, max=3.0, step=0.05, description="clarity",
                                     style=style, layout=layout)
        self.marks = {op: _range_marks(getattr(self, op), augment.OPERATIONS[op].ranges, self.SLIDER_WIDTH)
                      for op in ("brightness", "clarity")}
        self.other = w.Button(description="other images", layout=w.Layout(width="130px"))
        self.other.on_click(self.other_images)
        self.grid = w.VBox()
        self.table = w.HTML()
        self.counts = policy_counts(train.counts(), policies)
        self.table.value = "<b>images per class after expansion</b>" + self.counts.to_html(escape=True)
        self.brightness.observe(self._refresh, names="value")
        self.clarity.observe(self._refresh, names="value")
        self.widget = w.VBox([w.HBox([w.VBox([self.brightness, self.marks["brightness"]]),
                                      w.VBox([self.clarity, self.marks["clarity"]]), self.other]),
                              self.grid, self.table])
        self.current: dict[str, list[np.ndarray]] = {}
        self._refresh()

    def _pick(self, seed: int) -> list[int]:
        rng = np.random.default_rng(seed)
        return [int(i) for idx in plots.shown_picks(self.train, self.per_class, rng)[1] for i in idx]

    def other_images(self, _button: object = None) -> None:
        """Another seeded draw of originals (one per class by default)."""
        self.seed += 1
        self.picks = self._pick(self.seed)
        self._refresh()

    def _views(self) -> dict[str, list[np.ndarray]]:
        ims = [self.train.images[i] for i in self.picks]
        return {"original": ims,
                "brightness": [augment.apply_operation(im, "brightness", self.brightness.value) for im in ims],
                "clarity": [augment.apply_operation(im, "clarity", self.clarity.value) for im in ims]}

    def describe(self, op: str) -> str:
        """The slider's value and where it lies: unchanged, in a training range, or outside them."""
        value = getattr(self, op).value
        if abs(value - 1.0) < 1e-9:
            return f"{op} {value:.2f} (unchanged)"
        inside = any(lo <= value <= hi for lo, hi in augment.OPERATIONS[op].ranges)
        return f"{op} {value:.2f} ({'within' if inside else 'outside'} the training range)"

    def _refresh(self, change: dict | None = None) -> None:
        self.current = self._views()
        rows = []
        for k, i in enumerate(self.picks):
            cname = self.train.class_names[self.train.labels[i]]
            rows.append(w.HBox([image_tile(self.current[op][k], [f"{cname}: {op}" if op == "original" else
                                                              f"{cname}: {self.describe(op)}", self.train.names[i]],
                                      150) for op in self.current]))
        self.grid.children = rows

    def static_figure(self) -> plt.Figure:
        fig, axes = plt.subplots(len(self.picks), 3, figsize=(7, 2.3 * len(self.picks)), squeeze=False)
        for r in range(len(self.picks)):
            for j, op in enumerate(self.current):
                axes[r, j].imshow(self.current[op][r], cmap="gray", vmin=0, vmax=255)
                axes[r, j].set_title(op if op == "original" else self.describe(op), fontsize=8)
                axes[r, j].axis("off")
        fig.tight_layout()
        return fig


class RunComparison:
    """Two records side by side: scores, exact McNemar, and the images one gets right and the other
    wrong (paged, enlargeable). Starts on the study's headline: 04 balanced vs 01 baseline, same seed."""

    def __init__(self, records: Sequence[dict], images: dict[str, np.ndarray] | Dataset, model: object | None = None):
        if len(records) < 2:
            raise ValueError("RunComparison needs at least two run records")
        self.records = {label(r): r for r in records}
        self.images = _images_of(images)
        keys = list(self.records)
        a, b = default_pair(records)
        self.a = w.Dropdown(options=keys, value=label(a), description="A", layout=w.Layout(width="320px"))
        self.b = w.Dropdown(options=keys, value=label(b), description="B", layout=w.Layout(width="320px"))
        self.table_html = w.HTML()
        self.test_html = w.HTML()
        self.gallery_a = Gallery(self.images, 100, model=model)
        self.gallery_b = Gallery(self.images, 100, model=model)
        self.a.observe(self._refresh, names="value")
        self.b.observe(self._refresh, names="value")
        self.widget = w.VBox([w.HBox([self.a, self.b]), self.table_html, self.test_html,
                              w.HTML("<b>A right, B wrong</b>"), self.gallery_a.widget,
                              w.HTML("<b>B right, A wrong</b>"), self.gallery_b.widget])
        self.test: dict | None = None
        self._refresh()

    def _refresh(self, change: dict | None = None) -> None:
        ra, rb = self.records[self.a.value], self.records[self.b.value]
        self.table = compare_table(ra, rb)
        self.table_html.value = self.table.to_html(escape=True)
        self.diff = disagreements(ra, rb)
        labels, la = report.record_arrays(ra)
        _, lb = report.record_arrays(rb)
        if self.a.value == self.b.value:
            self.test = None
            self.test_html.value = ("<b style='color:#a00'>A and B are the same run: choose two different runs "
                                    "to compare.</b>")
        else:
            self.test = metrics.mcnemar(labels, la, lb)
            verdict = "a difference" if self.test["p_value"] < 0.05 else "no evidence of a difference"
            seeds = "same seed and split" if (ra["seed"], ra["split_seed"]) == (rb["seed"], rb["split_seed"]) else \
                "different seeds: the difference mixes the arms with training randomness"
            self.test_html.value = (f"exact McNemar on the same {len(labels)} validation images ({seeds}): A alone "
                                    f"right on {self.test['a_only']}, B alone on {self.test['b_only']}, "
                                    f"p = {self.test['p_value']:.3g} ({verdict} at 0.05)")
        pa, pb = metrics.softmax(la), metrics.softmax(lb)
        classes = ra["class_names"]
        where = {n: i for i, n in enumerate(ra["predictions"]["names"])}

        def caption(n: str) -> list[str]:
            i = where[n]
            return [n, f"true {classes[labels[i]]}", f"A: {classes[pa[i].argmax()]} {pa[i].max():.2f}",
                    f"B: {classes[pb[i].argmax()]} {pb[i].max():.2f}"]

        self.gallery_a.set([(n, caption(n)) for n in self.diff["a_only"]])
        self.gallery_b.set([(n, caption(n)) for n in self.diff["b_only"]])

    def static_figure(self) -> plt.Figure:
        fig, ax = plt.subplots(figsize=(7, 0.6 + 0.28 * len(self.table)))
        ax.axis("off")
        tab = ax.table(cellText=self.table.to_numpy().round(1), rowLabels=list(self.table.index),
                       colLabels=list(self.table.columns), loc="center")
        tab.set_fontsize(8)
        title = "A and B are the same run" if self.test is None else \
            (f"McNemar p {report.format_p(self.test['p_value'])}; A alone right on {self.test['a_only']}, "
             f"B alone on {self.test['b_only']} images")
        ax.set_title(f"A: {self.a.value} vs B: {self.b.value} (percent)\n{title}", fontsize=9)
        return fig


__all__ = ("GALLERY_SIZE", "AugmentationPreviewer", "Gallery", "RunComparison", "SensitivityExplorer", "bin_index",
           "compare_table", "default_pair", "disagreements", "figure_png", "flipped_gallery", "gallery_items",
           "image_tile", "label", "png", "policy_counts", "pooled_items", "pooled_record", "show")
