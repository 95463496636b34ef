"""Widgets driven headlessly: set controls, fire observers, check what they show against plain functions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fsfsl_utils import augment, experiment, metrics, report, sensitivity, widgets


@pytest.fixture(scope="module")
def smoke_records(tmp_path_factory):
    out = tmp_path_factory.mktemp("widget_runs")
    recs = [experiment.run_step(step, profile="smoke", seed=0, results_dir=out, progress=False).record
            for step in ("01_baseline", "04_balanced_augment")]
    return recs, experiment.validation_split(recs[0])


def test_sensitivity_explorer_gallery_follows_the_bin(smoke_records):
    records, val = smoke_records
    ex = widgets.SensitivityExplorer(records, val)
    rec = records[0]
    assert ex.plotted == {c: [b["per_class"][c]["recall"] for b in rec["sensitivity"]["brightness"]["bins"]]
                          for c in rec["class_names"]}
    idx, _ = sensitivity.assign_bins(np.asarray(rec["feature_values"]["brightness"]), 5, "quantile")
    labels = np.asarray(rec["predictions"]["labels"])
    seen = set()
    for b, bin_label in enumerate(ex.bin.options):
        ex.bin.value = bin_label                     # fires the observer
        expected = {rec["predictions"]["names"][i] for i in np.flatnonzero((idx == b) & (labels == 1))}
        assert {d["name"] for d in ex.items} == expected
        assert all(d["label"] == "defective" for d in ex.items)
        assert [d["correct"] for d in ex.items] == sorted(d["correct"] for d in ex.items)  # wrong first
        assert len(ex.gallery.children) == min(len(expected), widgets.GALLERY_SIZE)
        seen |= expected
    assert seen == {n for n, lab in zip(rec["predictions"]["names"], labels) if lab == 1}
    ex.cls.value = "normal"
    assert all(d["label"] == "normal" for d in ex.items)
    ex.record.value = widgets.label(records[1])
    assert ex.plotted["normal"] == [b["per_class"]["normal"]["recall"]
                                    for b in records[1]["sensitivity"]["brightness"]["bins"]]
    ex.feature.value = "clarity"
    assert "clarity" in ex.caption.value
    fig = ex.static_figure()
    assert len(fig.axes) >= 2
    plt.close(fig)


def test_augmentation_previewer_sliders(smoke_records, small):
    train, _ = small
    pv = widgets.AugmentationPreviewer(train)
    assert pv.counts.loc["balanced"].to_dict() == augment.get_policy("balanced").counts(train.counts())
    before = [im.copy() for im in pv.current["brightness"]]
    pv.brightness.value = 1.4
    after = pv.current["brightness"]
    assert not np.array_equal(before[0], after[0])
    assert np.array_equal(after[0], augment.apply_operation(train.images[pv.picks[0]], "brightness", 1.4))
    assert after[0].mean() > before[0].mean()
    assert {train.labels[i] for i in pv.picks} == {0, 1}
    pv.clarity.value = 3.0
    assert np.array_equal(pv.current["clarity"][1], augment.apply_operation(train.images[pv.picks[1]], "clarity", 3))


def test_run_comparison(smoke_records):
    records, val = smoke_records
    cmp = widgets.RunComparison(records, val)
    a, b = records[1], records[0]
    labels, la = report.record_arrays(a)
    _, lb = report.record_arrays(b)
    ra, rb = la.argmax(1) == labels, lb.argmax(1) == labels
    names = np.asarray(a["predictions"]["names"])
    assert cmp.diff["a_only"] == names[ra & ~rb].tolist() and cmp.diff["b_only"] == names[~ra & rb].tolist()
    assert cmp.test == metrics.mcnemar(labels, la, lb)
    assert cmp.table.loc["accuracy", f"A: {widgets.label(a)}"] == pytest.approx(ra.mean(), abs=1e-4)
    cmp.a.value = widgets.label(records[0])        # same record on both sides: nothing differs
    assert cmp.diff == {"a_only": [], "b_only": []} and cmp.test["p_value"] == 1.0
    assert "no evidence" in cmp.test_html.value


def test_names_placed_in_html_are_escaped():
    """A file named like markup shows as text: no tag reaches the widget's HTML."""
    crafted = "<img src=x onerror=alert(1)>.png"
    tile = widgets._tile(np.zeros((8, 8), np.uint8), crafted)
    value = tile.children[1].value
    assert "<img" not in value and "&lt;img src=x onerror=alert(1)&gt;.png" in value
