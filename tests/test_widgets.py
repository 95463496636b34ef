"""Widgets driven headlessly: set controls, fire observers, check what they show against plain functions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fsfsl_utils import augment, experiment, metrics, report, sensitivity, widgets


@pytest.fixture(scope="module")
def smoke_records(smoke_runs, store):
    recs = [run.record for run in smoke_runs]
    return recs, experiment.validation_split(recs[0], store)


def test_sensitivity_explorer_gallery_follows_the_bin(smoke_records):
    records, val = smoke_records
    ex = widgets.SensitivityExplorer(records, val)
    rec = records[0]
    assert ex.plotted == {c: [b["per_class"][c]["recall"] for b in rec["sensitivity"]["brightness"]["bins"]]
                          for c in rec["class_names"]}
    recalls = [2.0 if b["per_class"]["defective"]["recall"] is None else b["per_class"]["defective"]["recall"]
               for b in rec["sensitivity"]["brightness"]["bins"]]
    assert ex.cls.value == "defective" and ex.bin.value == ex.bin.options[int(np.argmin(recalls))]  # weakest bin
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
        values = rec["feature_values"]["brightness"]
        assert all(d["value"] == values[rec["predictions"]["names"].index(d["name"])] for d in ex.items)
        seen |= expected
    assert seen == {n for n, lab in zip(rec["predictions"]["names"], labels) if lab == 1}
    ex.cls.value = "normal"
    assert all(d["label"] == "normal" for d in ex.items)
    ex.record.value = widgets.label(records[2])
    assert ex.plotted["normal"] == [b["per_class"]["normal"]["recall"]
                                    for b in records[2]["sensitivity"]["brightness"]["bins"]]
    ex.feature.value = "clarity"
    assert "clarity" in ex.caption.value
    fig = ex.static_figure()
    assert len(fig.axes) >= 2 and not fig._suptitle
    plt.close(fig)


def test_sensitivity_explorer_pools_the_seeds_of_a_step(smoke_records):
    """'all seeds (pooled)': per bin, the recall of every seed's predictions together; the gallery
    lists each image once with how many seeds got it wrong."""
    records, val = smoke_records
    ex = widgets.SensitivityExplorer(records, val)
    pooled = "01_baseline all seeds (pooled)"
    assert pooled in ex.record.options
    ex.record.value = pooled
    seeds = [r for r in records if r["step"] == "01_baseline"]
    for c in ("normal", "defective"):
        for b in range(len(ex.bin.options)):
            cells = [r["sensitivity"]["brightness"]["bins"][b]["per_class"][c] for r in seeds]
            if all(x["recall"] is not None for x in cells):
                assert ex.plotted[c][b] == pytest.approx(np.mean([x["recall"] for x in cells]))
    ex.cls.value = "defective"
    ex.bin.value = ex.bin.options[0]
    singles = [{d["name"]: d["correct"] for d in widgets.gallery_items(r, "brightness", ex.bin.value, "defective")}
               for r in seeds]
    assert {d["name"] for d in ex.items} == set(singles[0])
    for d in ex.items:
        assert d["runs"] == 2 and d["wrong_in"] == sum(not s[d["name"]] for s in singles)
    assert [d["wrong_in"] for d in ex.items] == sorted((d["wrong_in"] for d in ex.items), reverse=True)
    fig = ex.static_figure()
    plt.close(fig)


def test_the_pooled_record_counts_images_and_identical_seeds_do_not_narrow_it(smoke_records):
    """Pooling five copies of one run (a frozen arm's seeds) shows the images once, the same recall and an
    interval no narrower than one run's images allow (the old pooling counted 5 x the images)."""
    records, _ = smoke_records
    one = records[0]
    pooled = widgets.pooled_record([one] * 5)
    once = widgets.pooled_record([one])
    for feature, block in pooled["sensitivity"].items():
        for b, cell in enumerate(block["bins"]):
            own = one["sensitivity"][feature]["bins"][b]
            assert cell["n"] == own["n"]
            for c, x in cell["per_class"].items():
                assert x["n"] == own["per_class"][c]["n"]
                assert x["recall"] == once["sensitivity"][feature]["bins"][b]["per_class"][c]["recall"]
                assert x["recall_ci"] == once["sensitivity"][feature]["bins"][b]["per_class"][c]["recall_ci"]


def test_gallery_pages_and_enlarges():
    images = {f"im{i}": np.full((8, 8), i, np.uint8) for i in range(30)}
    gallery = widgets.Gallery(images)
    gallery.set([(name, [name, "caption"]) for name in images])
    assert len(gallery.box.children) == widgets.GALLERY_SIZE and gallery.more.layout.display == ""
    gallery.more.click()
    gallery.more.click()
    assert len(gallery.box.children) == 30 and gallery.more.layout.display == "none"
    gallery.box.children[13].children[-1].click()          # the 14th tile's "enlarge" button
    assert gallery.enlarged == "im13" and gallery.large.layout.display == ""
    assert gallery.large.value == widgets.png(images["im13"])
    gallery.set([])
    assert gallery.enlarged is None and gallery.large.layout.display == "none"


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
    assert "outside the training range" in pv.describe("brightness")
    pv.brightness.value = 1.1
    assert "within the training range" in pv.describe("brightness")
    pv.brightness.value = 1.0
    assert pv.describe("brightness").endswith("(unchanged)")
    assert "1.08-1.13" in pv.marks["brightness"].value and "unchanged" in pv.marks["brightness"].value
    assert pv.brightness.layout.width == f"{pv.SLIDER_WIDTH}px"
    first = list(pv.picks)
    pv.other.click()
    assert pv.picks != first and {train.labels[i] for i in pv.picks} == {0, 1}
    assert np.array_equal(pv.current["original"][0], train.images[pv.picks[0]])


def test_run_comparison(smoke_records):
    records, val = smoke_records
    cmp = widgets.RunComparison(records, val)
    a, b = records[2], records[0]          # the default: 04 balanced vs 01 baseline, both seed 0
    assert (cmp.a.value, cmp.b.value) == (widgets.label(a), widgets.label(b))
    labels, la = report.record_arrays(a)
    _, lb = report.record_arrays(b)
    ra, rb = la.argmax(1) == labels, lb.argmax(1) == labels
    names = np.asarray(a["predictions"]["names"])
    assert cmp.diff["a_only"] == names[ra & ~rb].tolist() and cmp.diff["b_only"] == names[~ra & rb].tolist()
    assert cmp.test == metrics.mcnemar(labels, la, lb)
    assert cmp.table.loc["accuracy", f"A: {widgets.label(a)}"] == pytest.approx(100 * ra.mean(), abs=0.05)
    assert "recall_target" not in cmp.table.index and "recall_defective" in cmp.table.index  # each score once
    assert len(cmp.gallery_a.entries) == len(cmp.diff["a_only"])
    cmp.a.value = widgets.label(records[0])        # same record on both sides: said, not tested
    assert cmp.diff == {"a_only": [], "b_only": []} and cmp.test is None
    assert "same run" in cmp.test_html.value
    fig = cmp.static_figure()
    plt.close(fig)


def test_names_placed_in_html_are_escaped():
    """A file named like markup shows as text: no tag reaches the widget's HTML."""
    crafted = "<img src=x onerror=alert(1)>.png"
    tile = widgets.image_tile(np.zeros((8, 8), np.uint8), [crafted, "second line"])
    value = tile.children[1].value
    assert "<br>second line" in value
    assert "<img" not in value and "&lt;img src=x onerror=alert(1)&gt;.png" in value


def test_the_flipped_gallery_shows_each_sides_disagreements(smoke_records):
    """report.html's static run comparison: a row per side, as many images as disagree (up to n), McNemar above."""
    records, val = smoke_records
    a, b = widgets.default_pair(records)
    images = dict(zip(val.names, val.images))
    diff = widgets.disagreements(a, b)
    fig = widgets.flipped_gallery(a, b, images, n=4)
    shown = [sum(1 for ax in row if ax.images) for row in np.asarray(fig.axes).reshape(2, 4)]
    assert shown == [min(4, len(diff["a_only"])), min(4, len(diff["b_only"]))]
    assert "McNemar p" in fig._suptitle.get_text() and "p 0.000" not in fig._suptitle.get_text()
    plt.close(fig)
