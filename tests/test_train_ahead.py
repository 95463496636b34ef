"""Training ahead (``run --train-ahead``): the notebooks' fine-tunings done at once, first; the
notebooks then resume from the finished checkpoints and record the same results."""

from __future__ import annotations

import json
import re

import numpy as np

from fsfsl_utils import experiment, job_parameters, run, session

TINY_PAPER = {"profile": "paper", "backbone": "efficientnet_lite0", "input_size": 32, "epochs": 1,
              "limit_per_class": 8, "seeds": 1, "progress": False}


def test_the_trainings_of_each_notebook_are_known():
    """run.training_specs assumes each of notebooks 01-04 runs the study step it is named after (and
    04 the controls): otherwise training ahead would train the wrong steps (and the notebooks would
    train theirs again)."""
    for name in run.NOTEBOOKS:
        cells = json.loads((job_parameters.notebook_dir() / f"{name}.ipynb").read_text())["cells"]
        source = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        expected = (name,) if name in experiment.STUDY_STEPS else ()
        assert set(re.findall(r'settings\.(?:run|specs)\("([^"]+)"\)', source)) == set(expected)
        assert ("run_controls()" in source) == (name == "04_balanced_augment")
        assert ("CONTROLS" in run.notebook_parameters(name)) == (name == "04_balanced_augment")


def test_training_specs_follow_the_notebook_parameters(tmp_path):
    steps = [("01_baseline", {"PROFILE": "paper", "SEEDS": 2, "EPOCHS": 1}),
             ("04_balanced_augment", {"PROFILE": "paper", "SEEDS": 1, "EPOCHS": 1}),
             ("05_analysis", {"PROFILE": "paper"})]
    specs = run.training_specs(steps, tmp_path)
    assert [(spec.step, spec.seed) for spec in specs] == [
        ("01_baseline", 0), ("01_baseline", 1), ("04_balanced_augment", 0),
        *[(control, 0) for control in experiment.CONTROL_STEPS]]  # CONTROLS defaults to True in 04
    assert all(spec.config.epochs == 1 and spec.profile == "paper" for spec in specs)
    no_controls = run.training_specs([("04_balanced_augment", {"PROFILE": "paper", "SEEDS": 1, "CONTROLS": False})],
                                     tmp_path)
    assert [spec.step for spec in no_controls] == ["04_balanced_augment"]


def test_notebook_steps_resume_from_trainings_done_ahead(tmp_path, store):
    """Two paper-profile steps trained ahead at once, then run as a notebook runs them: the records
    say they resumed, and hold the same predictions as steps trained the usual way."""
    ahead = session.Settings.from_parameters(**TINY_PAPER, results_dir=str(tmp_path / "ahead"))
    usual = session.Settings.from_parameters(**TINY_PAPER, results_dir=str(tmp_path / "usual"))
    ahead.store = usual.store = store  # decoded once for the session
    specs = [*ahead.specs("01_baseline"), *ahead.specs("04_class_weighted")]
    assert experiment.train_ahead(specs, ahead.results_dir, ahead.store) == 2
    assert (tmp_path / "ahead" / "checkpoints" / "01_baseline-seed0" / "last.pt").exists()
    for step in ("01_baseline", "04_class_weighted"):
        resumed = ahead.run(step, analyse_images=False, views=())[0]
        plain = usual.run(step, analyse_images=False, views=())[0]
        assert any("resumed from" in n and "at epoch 1" in n for n in resumed["notes"])
        assert not any("resumed from" in n for n in plain["notes"])
        np.testing.assert_array_equal(resumed["predictions"]["logits"], plain["predictions"]["logits"])
        assert resumed["history"] == plain["history"] and resumed["metrics"] == plain["metrics"]
    cpu = session.Settings.from_parameters(profile="smoke", progress=False, results_dir=str(tmp_path / "smoke"))
    assert experiment.train_ahead(cpu.specs("01_baseline"), cpu.results_dir) == 0  # only the paper profile checkpoints


TINY_MAIN_JOB = ["--profile", "paper", "--seeds", "1", "--backbone", "efficientnet_lite0", "--epochs", "1",
                 "--input-size", "32",
                 "--notebooks", "01_baseline", "--train-ahead", "-p", "LIMIT_PER_CLASS=8", "-p", "SWEEP_IMAGES=0"]


def test_main_job_trains_ahead(tmp_path, capsys):
    """Two seeds of 01 trained ahead as one packed network (--pack 2), then recorded by the notebook."""
    job = list(TINY_MAIN_JOB)
    job[job.index("--seeds") + 1] = "2"
    assert run.main([*job, "--pack", "2", "--out", str(tmp_path)]) == 0
    assert "trained ahead: 2 fine-tunings at once, up to 2 per packed network" in capsys.readouterr().out
    folder = next(tmp_path.iterdir())
    for seed in (0, 1):
        record = json.loads((folder / "records" / f"01_baseline-seed{seed}.json").read_text())
        assert any("resumed from" in n for n in record["notes"])
    info = json.loads((folder / "run.json").read_text())
    assert "train_ahead" in info["seconds"] and info["pack"] == 2
    assert run.main([*TINY_MAIN_JOB, "--pack", "0", "--out", str(tmp_path)]) == 2


def test_a_failed_train_ahead_leaves_the_training_to_the_notebooks(tmp_path, monkeypatch):
    def broken(specs, results_dir, store=None, progress=None, pack=1):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(run.experiment, "train_ahead", broken)
    assert run.main([*TINY_MAIN_JOB, "--out", str(tmp_path)]) == 0
    folder = next(tmp_path.iterdir())
    record = json.loads((folder / "records" / "01_baseline-seed0.json").read_text())
    assert not any("resumed from" in n for n in record["notes"])  # the notebook trained it
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "ok" and "training ahead failed (RuntimeError: CUDA error" in info["notes"][0]


def test_the_main_job_trains_ahead_by_default_only_for_the_paper_profile_on_cuda(monkeypatch, tmp_path):
    assert not run.train_ahead_by_default("paper")  # no CUDA here: the trainings would only take turns
    monkeypatch.setattr(run.torch.cuda, "is_available", lambda: True)
    assert run.train_ahead_by_default("paper") and run.train_ahead_by_default("auto")  # auto -> paper on CUDA
    assert not run.train_ahead_by_default("cpu") and not run.train_ahead_by_default("smoke")
    seen = {}
    monkeypatch.setattr(run, "execute", lambda steps, run_dir, train_first, pack: seen.setdefault("first", train_first))
    for flag, expected in (([], True), (["--no-train-ahead"], False)):
        seen.clear()
        run.main(["--profile", "paper", "--notebooks", "01_baseline", "--out", str(tmp_path), *flag])
        assert seen["first"] is expected
