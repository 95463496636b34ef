"""Many classes (issue 20, item 12): figures and default tables name at most ten classes, so a data
set of 100 or 1,000 classes draws in about the time of a small one."""

from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fsfsl_utils import data, metrics, plots, report


def many_class_records(k: int, per_class: int = 3, steps: tuple[str, ...] = ("01_baseline", "04_balanced_augment")):
    rng = np.random.default_rng(0)
    names = [f"class{c:03d}" for c in range(k)]
    labels = np.repeat(np.arange(k), per_class)
    out = []
    for step in steps:
        logits = rng.normal(size=(len(labels), k)) + 3 * np.eye(k)[labels]
        out.append({"step": step, "seed": 0, "split_seed": 0, "class_names": names, "title": step,
                    "train_counts": {n: 5 + (i % 7) for i, n in enumerate(names)},
                    "train_counts_before_expansion": {n: 5 + (i % 7) for i, n in enumerate(names)},
                    "predictions": {"names": [f"{i}.png" for i in range(len(labels))], "labels": labels.tolist(),
                                    "logits": logits.tolist()},
                    "metrics": metrics.evaluate(labels, logits, names), "view_logits": {}})
    return out


def test_shown_classes_keeps_few_and_picks_the_largest_of_many():
    assert report.shown_classes(["a", "b", "c"]) == ["a", "b", "c"]
    names = [f"c{i}" for i in range(30)]
    counts = {n: i for i, n in enumerate(names)}                # c29 is the largest
    shown = report.shown_classes(names, counts, first=("c0",), limit=5)
    assert shown == ["c0", "c26", "c27", "c28", "c29"]          # first, then the largest, in class order
    with pytest.raises(ValueError):
        report.shown_classes(names, counts, limit=0)


def test_figures_of_a_hundred_classes_are_small_and_quick():
    records = many_class_records(100)
    ds = data.Dataset(np.zeros((300, 16, 16), np.uint8), data.make_meta([f"{i}.png" for i in range(300)],
                                                                   np.repeat(np.arange(100), 3)),
                      [f"class{c:03d}" for c in range(100)])
    t0 = time.perf_counter()
    figures = {"samples": plots.sample_images(ds, per_class=2), "confusion": plots.confusion_matrices(records),
               "bars": plots.metric_bars(records, n_boot=20)}
    elapsed = time.perf_counter() - t0
    assert figures["samples"].axes[0].get_gridspec().nrows == report.MAX_CLASSES_SHOWN
    assert "10 of 100 classes" in figures["samples"]._suptitle.get_text()
    assert all(not ax.texts for ax in figures["confusion"].axes)           # no 10,000 cell labels
    assert len(figures["bars"].axes[0].get_legend().get_texts()) == 3      # accuracy, balanced, the target's recall
    table = report.arm_table(records)
    assert sum(c.endswith(" recall %") for c in table.columns) == report.MAX_CLASSES_SHOWN
    assert elapsed < 30, f"{elapsed:.1f} s"
    for fig in figures.values():
        plt.close(fig)


def test_bootstrap_balanced_accuracy_matches_the_records():
    record = many_class_records(12)[0]
    labels, logits = np.asarray(record["predictions"]["labels"]), np.asarray(record["predictions"]["logits"])
    assert metrics.balanced_accuracy_fn(labels, logits) == pytest.approx(record["metrics"]["balanced_accuracy"])
