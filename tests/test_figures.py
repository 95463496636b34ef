"""Every figure of the notebooks says what it shows (a title) and is saved at 150 dpi."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from fsfsl_utils import experiment, plots, sensitivity


def titles(fig: plt.Figure) -> list[str]:
    found = [ax.get_title() for ax in fig.axes if ax.get_title()]
    return found + ([fig._suptitle.get_text()] if fig._suptitle is not None else [])


def test_every_figure_has_a_title_and_150_dpi(smoke_runs, store, tmp_path):
    steps = smoke_runs
    records = [r.record for r in steps]
    first, balanced = records[0], records[-1]
    train_part, val = store.split(limit_per_class=16)
    sweep = sensitivity.sweep(experiment.predictor(steps[0].fit, steps[0].spec.config), val.images[:8],
                              val.labels[:8], "brightness", (0.8, 1.0, 1.2), val.class_names)
    figures = {"samples": plots.sample_images(train_part), "preview": plots.augmentation_preview(train_part),
               "scores": plots.metric_bars(records), "confusion": plots.confusion_matrices(records),
               "sensitivity": plots.sensitivity_panel(first), "features": plots.feature_histograms(first),
               "before_after": plots.sensitivity_before_after(first, balanced, "brightness"),
               "sweep": plots.sweep_curves(sweep), "roc": plots.roc_curves(records),
               "paired": plots.paired_differences(records), "wrong": plots.wrong_gallery(first, val)}
    for name, fig in figures.items():
        assert titles(fig), f"figure {name} has no title"
        plots.save(fig, tmp_path, name)
        plt.close(fig)
        with Image.open(tmp_path / "figures" / f"{name}.png") as im:
            assert np.allclose(im.info["dpi"], 150, atol=0.5) and im.width >= 400, name
    ba = plots.sensitivity_before_after(first, balanced, "brightness")
    assert len(ba.axes) == 1 and "n = " in ba.axes[0].get_title()           # overlaid on one axis, n named
    plt.close(ba)
