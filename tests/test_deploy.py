"""Putting a model to work (issue 35): a saved model of every training mode loads and predicts as it was
trained, damaged or foreign files are refused by name, the operating point is chosen on the training
part, ``predict`` scores a folder with bad and odd files, ONNX / TorchScript exports match the
PyTorch model (onnxruntime runs the ONNX one), and Grad-CAM peaks on a bright defect patch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fsfsl_utils import data, experiment, export, predict, profiles, train
from fsfsl_utils.deploy import bundle, cam, exporting, operating


def patch_data(n: int = 40, seed: int = 0) -> tuple[data.Dataset, list[tuple[int, int]]]:
    """Gray noise cells ("ok") and the same with one bright 60-px square ("defect"), and the squares."""
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for k in range(2 * n):
        im = rng.normal(110, 12, (300, 300)).clip(0, 255)
        if k >= n:
            y, x = rng.integers(20, 220, 2)
            im[y:y + 60, x:x + 60] = 250
            boxes.append((int(y), int(x)))
        images.append(im.astype(np.uint8))
    labels = np.array([0] * n + [1] * n)
    ds = data.from_arrays(np.stack(images), labels, ["ok", "defect"], [f"c{k}.png" for k in range(2 * n)])
    return ds, boxes


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A saved model of each training mode: fine-tuned (smoke), probe (frozen backbone) and top blocks
    (on the bright-patch cells, for the heat-map test), with the images each was checked on."""
    root = tmp_path_factory.mktemp("models")
    store = experiment.DataStore()
    out = {}
    for name, profile in (("finetune", "smoke"), ("probe", "cpu")):
        step = experiment.run_step("01_baseline", root / f"runs-{name}", store=store, profile=profile, seed=0,
                                   progress=False, analyse_images=False, limit_per_class=20)
        model = bundle.from_fit(step.fit, step.spec.config, step.record["class_names"], step.record["target_class"],
                                step.record["reference_class"], "L", step.record, step.val.names)
        out[name] = (bundle.save(model, root / name), step.val, np.asarray(step.record["predictions"]["logits"]))
    ds, boxes = patch_data()
    tr, va = data.split(ds, seed=0)
    cfg = profiles.resolve("cpu-finetune", epochs=2)["config"]
    fit = train.fit(tr, va, cfg, seed=0, views=(), progress=False)
    model = bundle.from_fit(fit, cfg, ds.class_names, "defect", "ok", "L")
    out["top"] = (bundle.save(model, root / "top"), va, fit.val_logits)
    out["boxes"] = boxes
    return out


@pytest.mark.parametrize("mode", ["finetune", "probe", "top"])
def test_a_saved_model_predicts_as_it_was_trained(models, mode):
    folder, val, logits = models[mode]
    model = bundle.load(folder)
    assert model.meta["mode"] == mode and model.meta["format"] == bundle.FORMAT
    again = model.logits(val.images)
    spread = float(np.ptp(logits))
    tolerance = 1e-4 if mode != "top" else 2e-3 * spread     # top trained on float16 cached activations
    assert np.abs(again - logits).max() <= tolerance
    assert (again.argmax(1) == logits.argmax(1)).mean() >= 0.98
    meta = json.loads((folder / bundle.META).read_text())
    assert {"config", "preprocessing", "class_names", "target_class", "weights_sha256"} <= set(meta)


def test_a_damaged_or_foreign_model_is_refused_by_name(models, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(models["finetune"][0], folder)
    with pytest.raises(FileExistsError, match="never overwritten"):
        bundle.save(bundle.load(folder), folder)
    raw = bytearray((folder / bundle.WEIGHTS).read_bytes())
    raw[-100] ^= 0x01
    (folder / bundle.WEIGHTS).write_bytes(bytes(raw))
    with pytest.raises(bundle.ModelError, match="model.safetensors does not match the checksum"):
        bundle.load(folder)
    meta = json.loads((models["finetune"][0] / bundle.META).read_text())
    shutil.copy(models["finetune"][0] / bundle.WEIGHTS, folder / bundle.WEIGHTS)
    (folder / bundle.META).write_text(json.dumps({**meta, "kit_version": "9.0.0"}))
    with pytest.raises(bundle.ModelError, match="saved by fsfsl 9.0.0"):
        bundle.load(folder)
    (folder / bundle.META).write_text(json.dumps({**meta, "format": "pickle"}))
    with pytest.raises(bundle.ModelError, match="has format 'pickle'"):
        bundle.load(folder)
    (folder / bundle.META).write_text("{")
    with pytest.raises(bundle.ModelError, match="model.json is missing or unreadable"):
        bundle.load(folder)
    with pytest.raises(bundle.ModelError, match="is not a saved model"):
        bundle.load(tmp_path / "nothing")


def test_the_threshold_meets_its_requirement_on_the_images_that_chose_it():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 300 + [1] * 100)
    scores = np.where(labels == 1, rng.beta(5, 2, 400), rng.beta(2, 5, 400))
    t = operating.threshold_for(labels, scores, 1, 0, operating.parse_requirement("recall>=0.95"))
    assert (scores[labels == 1] >= t).mean() >= 0.95 > (scores[labels == 1] >= np.nextafter(t, 1)).mean()
    t = operating.threshold_for(labels, scores, 1, 0, operating.parse_requirement("reject<=0.02"))
    assert (scores[labels == 0] >= t).mean() <= 0.02
    read = operating.reading(labels, scores, t, 1, 0)
    assert read["reference_recall"]["value"] >= 0.98 and read["target_recall"]["low"] < read["target_recall"]["value"]
    assert operating.parse_requirement("recall>=0.95") == operating.parse_requirement("recall 0.95")
    for bad in ("recall>0.9", "reject 1.5", "precision 0.9", "recall<=0.9"):
        with pytest.raises(ValueError, match="REQUIREMENT"):
            operating.parse_requirement(bad)


def test_out_of_fold_scores_come_from_models_that_did_not_see_the_image(small):
    train_part, _ = small
    cfg = profiles.resolve("cpu")["config"]
    oof = operating.out_of_fold_scores(train_part, "flip", cfg, seed=0, folds=3, target=1)
    scores = np.asarray(oof["scores"])
    assert oof["folds"] == 3 and np.isfinite(scores).all() and ((0 <= scores) & (scores <= 1)).all()
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(oof["labels"], scores) > 0.7                    # held-out, yet informative


def test_heat_maps_peak_on_a_bright_defect_patch(models):
    """A top-block model trained on cells with one bright square: its Grad-CAM map (Captum) is at least
    twice as strong inside the square as outside, and peaks within 45 px of its centre, for nearly
    every defect cell."""
    folder, val, _ = models["top"]
    model = bundle.load(folder)
    idx = np.flatnonzero(val.labels == 1)
    maps = cam.heat_maps(model, val.images[idx])
    assert maps.shape == (len(idx), 300, 300) and maps.max() == pytest.approx(1.0)
    ratios, near = [], 0
    for k, i in enumerate(idx):
        y, x = models["boxes"][int(val.names[i][1:-4]) - 40]
        inside = np.zeros((300, 300), bool)
        inside[y:y + 60, x:x + 60] = True
        ratios.append(maps[k][inside].mean() / max(maps[k][~inside].mean(), 1e-9))
        py, px = np.unravel_index(maps[k].argmax(), maps[k].shape)
        near += abs(py - (y + 30)) <= 45 and abs(px - (x + 30)) <= 45
    assert np.median(ratios) >= 2.0 and near >= 0.8 * len(idx), (ratios, near)
    picture = cam.overlay(val.images[idx[0]], maps[0])
    assert picture.shape == (300, 300, 3) and picture.dtype == np.uint8


def _folder_of_cells(root, val, n=12):
    root.mkdir()
    for i in range(n):
        Image.fromarray(val.images[i]).save(root / f"cell{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not an image")
    Image.fromarray(np.repeat(val.images[0][..., None], 3, -1)).resize((200, 100)).save(root / "colour.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def test_predict_scores_a_folder_names_bad_files_and_warns_about_odd_ones(models, tmp_path, capsys):
    folder, val, _ = models["finetune"]
    cells = _folder_of_cells(tmp_path / "new", val)
    with pytest.warns(UserWarning, match="1 of 14 images are colour"):
        assert predict.main([str(folder), str(cells), "--out", str(tmp_path / "out"), "--batch", "5",
                             "--no-progress", "--page", "6"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 file" in err and "broken.png" in err
    rows = list(csv.DictReader(open(tmp_path / "out" / "predictions.csv")))
    assert len(rows) == 13 and {r["predicted"] for r in rows} <= {"normal", "defective"}
    model = bundle.load(folder)
    first = next(r for r in rows if r["file"].split("/")[-1] == "cell0.png")
    assert float(first["score"]) == pytest.approx(model.decide(model.logits(val.images[:1]))[0][0], abs=1e-5)
    page = (tmp_path / "out" / "predictions.html").read_text()
    assert page.count("<figure>") == 6 and "heat map" in page
    assert predict.main([str(folder), str(cells), "--out", str(tmp_path / "out")]) == 2     # never overwritten
    assert predict.main([str(folder), str(cells), "--out", str(tmp_path / "o2"), "--threshold", "1.5"]) == 2
    (tmp_path / "empty").mkdir()
    assert predict.main([str(folder), str(tmp_path / "empty"), "--out", str(tmp_path / "o3")]) == 2
    assert predict.main([str(tmp_path / "empty"), str(cells), "--out", str(tmp_path / "o4")]) == 2
    assert "no images" in capsys.readouterr().err


def test_an_onnx_export_matches_the_pytorch_model_on_real_images(models, tmp_path):
    """The command line on the model's own ELPV validation images; then onnxruntime on a batch size the
    graph was not traced with."""
    folder, val, _ = models["probe"]
    out = tmp_path / "model.onnx"
    command = [sys.executable, "-m", "fsfsl_utils.export", str(folder), "--format", "onnx", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "decisions all equal" in done.stdout
    spec = json.loads((tmp_path / "model.onnx.preprocessing.json").read_text())
    assert spec["check"]["max_abs_logit_difference"] < 1e-3 and spec["check"]["images"] == export.CHECK_IMAGES
    model = bundle.load(folder)
    got = exporting.run_exported(out, "onnx", exporting.station_pixels(model, val.images[:7]))
    np.testing.assert_allclose(got, model.logits(val.images[:7]), atol=1e-3)
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_torchscript_export_matches_the_pytorch_model(models, tmp_path):
    folder, val, _ = models["finetune"]
    model = bundle.load(folder)
    check = exporting.export(model, "torchscript", tmp_path / "model.pt", val.images[:8])
    assert check["same_decisions"] and check["max_abs_logit_difference"] < 1e-3
    got = exporting.run_exported(tmp_path / "model.pt", "torchscript", exporting.station_pixels(model, val.images[:5]))
    np.testing.assert_allclose(got, model.logits(val.images[:5]), atol=1e-3)
    with pytest.raises(ValueError, match="--format must be one of onnx, torchscript"):
        exporting.export(model, "tflite", tmp_path / "m.tflite", val.images[:2])


def test_a_step_keeps_its_model_with_an_operating_point_chosen_on_the_training_part(tmp_path):
    """run_step(keep=...): the model folder beside the record, the threshold from out-of-fold scores of the
    training part (never the validation images), its validation reading and the optimistic one, all
    in the record and in model.json; 05's table shows them."""
    from fsfsl_utils import report

    step = experiment.run_step("01_baseline", tmp_path, profile="cpu", seed=0, limit_per_class=20, progress=False,
                               analyse_images=False, keep={"requirement": "recall 0.9", "folds": 2})
    record = step.record
    point = record["operating_point"]
    assert record["model"] == "models/01_baseline" and point["requirement"] == "recall 0.9"
    assert point["folds"] == 2 and "no validation image seen" in point["chosen_on"]
    model = bundle.load(tmp_path / record["model"])
    assert model.threshold == pytest.approx(point["threshold"])
    target = record["class_names"].index(record["target_class"])
    scores = operating.target_scores(np.asarray(record["predictions"]["logits"]), target)
    caught = (scores[step.val.labels == target] >= point["threshold"]).mean()
    assert point["validation"]["target_recall"]["value"] == pytest.approx(caught)
    optimistic = point["optimistic"]
    assert (scores[step.val.labels == target] >= optimistic["threshold"]).mean() >= 0.9
    table = report.chosen_operating_points([record])
    assert table.loc[0, "threshold (training part)"] == round(point["threshold"], 3)
    again = experiment.run_step("01_baseline", tmp_path, profile="cpu", seed=0, limit_per_class=20, progress=False,
                                analyse_images=False, keep={"folds": 0})
    assert again.record["model"] == "models/01_baseline-v2"            # a kept model is never overwritten
    assert "threshold" not in again.record["operating_point"]


def test_the_readmes_use_your_model_commands_run_as_written(models, tmp_path, monkeypatch):
    """Every `predict` and `export` line of the README, its placeholders filled with a kept model and a
    folder of cells, runs and exits 0."""
    import re
    import shlex

    from fsfsl_utils.experiment import project_root

    text = (project_root() / "README.md").read_text()
    start = text.index("## Use your model")
    block = text[start:text.index("\n## ", start + 1)]
    lines = [line for line in re.findall(r"^python -m fsfsl_utils\.(?:predict|export) .*$", block, re.M)]
    assert len(lines) == 2
    folder, val, _ = models["probe"]
    cells = _folder_of_cells(tmp_path / "cells", val, n=6)
    (cells / "broken.png").unlink()
    monkeypatch.chdir(tmp_path)
    for line in lines:
        words = shlex.split(line.replace("runs/<timestamp>/models/04_balanced_augment", str(folder))
                            .replace("/path/to/new/cells", str(cells)))
        module = {"fsfsl_utils.predict": predict, "fsfsl_utils.export": export}[words[2]]
        assert module.main(words[3:]) in (0,), line
    assert (tmp_path / "scored" / "predictions.csv").is_file() and (tmp_path / "station.onnx").is_file()


def test_the_galleries_show_where_a_kept_model_looks(models):
    """widgets.Gallery with a saved model: "show heat map" turns the enlarged cell into its Grad-CAM
    overlay and back."""
    from fsfsl_utils import widgets

    folder, val, _ = models["finetune"]
    gallery = widgets.Gallery(dict(zip(val.names, val.images)), model=bundle.load(folder))
    gallery.set([(val.names[0], ["a cell"])])
    gallery.enlarge(val.names[0])
    plain = gallery.large.value
    gallery.heat.value = True
    assert gallery.large.value != plain and gallery.large.value[:4] == b"\x89PNG"
    gallery.heat.value = False
    assert gallery.large.value == plain
    assert widgets.Gallery({}).heat.layout.display == "none"          # no model: no button
