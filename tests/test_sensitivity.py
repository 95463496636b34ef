"""Sensitivity analysis: hand-worked tables on synthetic images, binning, std, CIs, JSON, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fsfsl_utils import sensitivity as sens


def synthetic(n_per_level=4, levels=(20, 60, 100, 140, 180)):
    """Flat images at known gray levels, two classes alternating; brightness == level exactly."""
    images, labels = [], []
    for lv in levels:
        for k in range(n_per_level):
            images.append(np.full((12, 12), lv, np.uint8))
            labels.append(k % 2)
    return np.stack(images), np.array(labels)


def test_hand_worked_brightness_table(tmp_path):
    images, labels = synthetic()
    # class 1 is wrong in the darkest bin only; class 0 wrong once in the brightest bin
    pred = labels.copy()
    pred[(np.arange(20) < 4) & (labels == 1)] = 0
    pred[16] = 1  # a class-0 image in the last bin
    logits = np.eye(2)[pred] * 3
    names = [f"img{i}.png" for i in range(20)]
    res = sens.analyse("image_classification", tmp_path, logits, labels, names, images=images,
                       class_names=["normal", "defective"], features=["brightness"])
    block = res["sensitivity"]["brightness"]
    assert [b["label"] for b in block["bins"]] == ["0% - 20%", "20% - 40%", "40% - 60%", "60% - 80%", "80% - 100%"]
    rec1 = [b["per_class"]["defective"]["recall"] for b in block["bins"]]
    rec0 = [b["per_class"]["normal"]["recall"] for b in block["bins"]]
    assert rec1 == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert rec0 == [1.0, 1.0, 1.0, 1.0, 0.5]
    assert block["std"]["defective"] == pytest.approx(np.std(rec1))   # population std, ddof=0
    assert block["std"]["normal"] == pytest.approx(0.2)
    assert [b["low"] for b in block["bins"]] == [20, 60, 100, 140, 180]
    assert len(block["edges"]) == 6
    # F1 of normal in bin 0: tp=2, fp=2 (the defective images predicted normal), fn=0
    assert block["bins"][0]["per_class"]["normal"]["f1"] == pytest.approx(2 * 2 / (2 * 2 + 2))
    assert {w["name"] for w in res["wrong_samples"]} == {"img1.png", "img3.png", "img16.png"}
    on_disk = json.loads((tmp_path / "model_analysis_results.json").read_text())
    assert on_disk == json.loads(json.dumps(res))


def test_quantile_bins_equal_count_and_range_bins_equal_width():
    values = np.random.default_rng(0).lognormal(size=103)
    idx, edges = sens.assign_bins(values, 5, "quantile")
    counts = np.bincount(idx)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    for b in range(4):
        assert values[idx == b].max() <= values[idx == b + 1].min()
    idx, edges = sens.assign_bins(values, 5, "range")
    assert np.allclose(np.diff(edges), (values.max() - values.min()) / 5)
    assert idx[np.argmax(values)] == 4 and idx[np.argmin(values)] == 0


def test_features_formulas():
    img = np.zeros((5, 5), np.uint8)
    img[2, 2] = 10
    assert sens.brightness(img) == pytest.approx(10 / 25)
    assert sens.contrast(img) == pytest.approx(np.std(img.astype(float)))
    # valid Laplacian on the 3x3 interior: centre -40, four neighbours +10, four corners 0
    lap = np.array([0, 10, 0, 10, -40, 10, 0, 10, 0], float)
    assert sens.clarity(img) == pytest.approx(lap.var())
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 100
    assert sens.brightness(sens.to_gray(rgb)) == pytest.approx(59, abs=0.5)


def test_wilson_interval_in_bins_and_sensitivity_test(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    images = rng.integers(0, 255, (n, 8, 8), dtype=np.uint8)
    bright = images.reshape(n, -1).mean(1)
    labels = np.ones(n, int)
    # truly sensitive: right only on bright images
    pred = (bright > np.median(bright)).astype(int)
    res = sens.analyse(pred_list=np.eye(2)[pred], label_list=labels, name_list=[str(i) for i in range(n)],
                       images=images, features=["brightness", "contrast"])
    cell = res["sensitivity"]["brightness"]["bins"][0]["per_class"]["1"]
    assert cell["recall"] == 0.0 and cell["recall_ci"][0] == 0.0 and 0 < cell["recall_ci"][1] < 0.05
    assert res["sensitivity"]["brightness"]["p_value"]["1"] < 0.01
    # noise: correctness independent of the images
    pred = rng.integers(0, 2, n)
    res = sens.analyse(pred_list=np.eye(2)[pred], label_list=labels, name_list=[str(i) for i in range(n)],
                       images=images, features=["brightness"])
    assert res["sensitivity"]["brightness"]["p_value"]["1"] > 0.01
    assert res["sensitivity"]["brightness"]["p_value"]["0"] == 1.0  # no class-0 images


def test_reads_paths_when_no_images_given(tmp_path):
    names = []
    for i, lv in enumerate([10, 50, 90, 130, 170, 210]):
        path = tmp_path / f"c{i}.png"
        Image.fromarray(np.full((6, 6), lv, np.uint8)).save(path)
        names.append(str(path))
    res = sens.analyse("image_classification", None, np.tile([[0.0, 1.0]], (6, 1)), [1] * 6, names,
                       features=["brightness"], n_bins=3)
    assert res["feature_values"]["brightness"] == [10, 50, 90, 130, 170, 210]
    assert [b["n"] for b in res["sensitivity"]["brightness"]["bins"]] == [2, 2, 2]


def test_table_view_matches_modelarts_layout(tmp_path):
    images, labels = synthetic()
    res = sens.analyse(pred_list=np.eye(2)[labels], label_list=labels, name_list=list(map(str, range(20))),
                       images=images, class_names=["0", "1"], features=["brightness"])
    tab = sens.table(res, "brightness")
    assert list(tab.index) == ["0% - 20%", "20% - 40%", "40% - 60%", "60% - 80%", "80% - 100%", "std"]
    assert list(tab.columns) == ["0", "1"] and (tab.loc["std"] == 0).all()


def test_sweep_shows_cause():
    rng = np.random.default_rng(0)
    images = rng.integers(90, 160, (10, 8, 8), dtype=np.uint8)
    labels = np.array([0] * 5 + [1] * 5)

    def predict(imgs):  # "defective" when dark: brightening hides defects
        dark = imgs.reshape(len(imgs), -1).mean(1) < 128
        return np.stack([~dark, dark], 1).astype(float)

    out = sens.sweep(predict, images, labels, op="brightness", levels=[0.5, 1.0, 1.5], class_names=["n", "d"])
    rec_d = [r["recall"]["d"] for r in out["rows"]]
    rec_n = [r["recall"]["n"] for r in out["rows"]]
    assert rec_d[0] == 1.0 and rec_d[2] == 0.0 and rec_n[0] == 0.0 and rec_n[2] == 1.0


def test_sweep_takes_a_model_as_well_as_a_function():
    """A torch module is run through the kit's preprocessing for its backbone, size and crop: the same
    table as the function that does so by hand (the module path raised AttributeError until round 3)."""
    import torch

    from fsfsl_utils import models

    rng = np.random.default_rng(1)
    images = rng.integers(60, 200, (12, 40, 40), dtype=np.uint8)
    labels = np.array([0, 1] * 6)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 2))

    def by_hand(imgs):
        with torch.inference_mode():
            return model(models.preprocess(torch.from_numpy(imgs), "efficientnet_lite0", 32, 0.875)).double().numpy()

    args = dict(op="brightness", levels=[0.6, 1.0, 1.4], class_names=["n", "d"])
    out = sens.sweep(model, images, labels, backbone="efficientnet_lite0", input_size=32, crop_fraction=0.875, **args)
    assert out == sens.sweep(by_hand, images, labels, **args)
    with pytest.raises(ValueError, match="unknown backbone"):
        sens.sweep(model, images, labels, backbone="vgg", **args)


@pytest.mark.parametrize("kwargs, message", [
    ({"label_list": [0, 1]}, "differ in length"),
    ({"pred_list": np.zeros((6, 3))}, "3 columns but there are 2 classes"),
    ({"label_list": [0, 1, 2, 0, 1, 0]}, "labels must be integers in \\[0, 1\\]"),
    ({"pred_list": np.full((6, 2), np.nan)}, "NaN or inf"),
    ({"name_list": [f"/nope/{i}.png" for i in range(6)], "images": None}, "cannot read image '/nope/0.png'"),
    ({"n_bins": 7}, "6 images cannot fill 7 bins"),
    ({"task_type": "detection"}, "unknown task_type 'detection'"),
    ({"features": ["saturation"]}, "unknown feature 'saturation'.*brightness, clarity, contrast"),
])
def test_bad_input_raises_and_writes_nothing(tmp_path, kwargs, message):
    args = {"task_type": "image_classification", "save_path": tmp_path / "out", "pred_list": np.zeros((6, 2)),
            "label_list": [0, 1, 0, 1, 0, 1], "name_list": [f"{i}" for i in range(6)],
            "images": np.zeros((6, 4, 4), np.uint8), "class_names": ["a", "b"]}
    args.update(kwargs)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        sens.analyse(**args)
    assert not (tmp_path / "out").exists()


def test_sweep_table_layout():
    out = {"op": "brightness", "levels": [0.5, 1.0],
           "rows": [{"level": 0.5, "accuracy": 0.5, "recall": {"n": 0.0, "d": 1.0}},
                    {"level": 1.0, "accuracy": 1.0, "recall": {"n": 1.0, "d": 1.0}}]}
    tab = sens.sweep_table(out)
    assert list(tab.columns) == ["accuracy", "recall n", "recall d"] and list(tab.index) == [0.5, 1.0]


def test_precomputed_feature_values_are_used():
    names = [f"/nowhere/{i}.png" for i in range(10)]           # never read: the values are given
    values = {"brightness": np.arange(10.0)}
    res = sens.analyse(pred_list=np.eye(2)[[0] * 10], label_list=[0] * 5 + [1] * 5, name_list=names,
                       features=["brightness"], feature_values=values)
    assert res["feature_values"]["brightness"] == list(range(10))
    assert [b["low"] for b in res["sensitivity"]["brightness"]["bins"]] == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="one value per image"):
        sens.analyse(pred_list=np.eye(2)[[0] * 10], label_list=[0] * 10, name_list=names, features=["brightness"],
                     feature_values={"brightness": np.arange(3.0)})


@pytest.mark.parametrize("profile, size", [("cpu", 96), ("cpu-finetune", 64), ("smoke", 80), ("paper", 48)])
def test_sweep_at_no_change_reproduces_the_record(profile, size, tmp_path, cache_dir, store):
    """One prediction path: the model a step trained, asked again through the sweep's predictor at
    brightness x1.0, gives the record's own logits (probe, top blocks and fine-tune, a non-default input size,
    the fine-tune profile's center crop included)."""
    from fsfsl_utils import experiment

    run = experiment.run_step("01_baseline", tmp_path, store=store, profile=profile, input_size=size,
                              limit_per_class=12, epochs=1, backbone="efficientnet_lite0", progress=False,
                              analyse_images=False, views=())
    record = run.record
    assert record["config"]["input_size"] == size
    val = experiment.validation_split(record, store)
    assert val.names == run.val.names
    logits = np.asarray(record["predictions"]["logits"])
    np.testing.assert_allclose(experiment.predictor(run.fit, run.spec.config)(val.images), logits, atol=2e-4)
    sweep = experiment.sweeps(record, run.fit, run.val, n_images=len(val), levels={"brightness": (1.0,)})["brightness"]
    labels = np.asarray(record["predictions"]["labels"])
    assert sweep["rows"][0]["accuracy"] == pytest.approx((logits.argmax(1) == labels).mean())


def test_a_sweep_is_explained_in_words():
    """The largest change of each class's recall is said, not only plotted (01's brightness sweep
    once showed normal recall falling from 0.90 to 0.65 at x1.4 with no word about it)."""
    result = {"op": "brightness", "rows": [
        {"level": 0.6, "recall": {"normal": 0.88, "defective": 0.60}},
        {"level": 1.0, "recall": {"normal": 0.90, "defective": 0.61}},
        {"level": 1.4, "recall": {"normal": 0.65, "defective": None}}]}
    lines = sens.explain_sweep(result)
    assert lines[0] == "normal: recall 0.90 unchanged; largest change at brightness x1.4: 0.65 (-25 points)"
    assert lines[1].startswith("defective: recall 0.61 unchanged; largest change at brightness x0.6: 0.60")
