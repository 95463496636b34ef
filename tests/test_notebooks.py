"""The notebooks and the main job: papermill smoke runs, parameters, reproducibility, bad input.

One smoke run of the whole main job (01-05 through ``python -m fsfsl_utils.run``) is shared
by the tests of this module; it takes about a minute on the 2-core box.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import papermill
import pytest

from fsfsl_utils import augment, experiment, results, run, session

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"
SMOKE_COUNTS = {"01_baseline": [8, 8], "02_flip": [16, 16], "03_full_augment": [23, 26],
                "04_balanced_augment": [16, 32], "04_balanced_duplicate": [16, 32], "04_class_weighted": [8, 8]}
COMMON = {"PROFILE", "BACKBONE", "INPUT_SIZE", "EPOCHS", "SEEDS", "SEED", "SPLIT_SEED", "SPLITS", "LIMIT_PER_CLASS",
          "DATA", "RESULTS_DIR", "PROGRESS", "CONFIG"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    os.environ["FSFSL_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    code = run.main(["--profile", "smoke", "--out", str(out), "-p", "SWEEP_IMAGES=20"])
    folders = list(out.iterdir())
    assert code == 0 and len(folders) == 1
    return folders[0]


def test_main_job_writes_the_run_folder(smoke_run):
    for name in run.NOTEBOOKS:
        assert (smoke_run / "notebooks" / f"{name}.ipynb").is_file()
    assert (smoke_run / "summary.md").read_text().startswith("# fsfsl run summary")
    info = json.loads((smoke_run / "run.json").read_text())
    assert info["status"] == "ok" and set(info["seconds"]) == set(run.NOTEBOOKS)
    assert info["peak_rss_mib_of_kernels"] > 0
    assert (smoke_run / "analysis" / "01_baseline-seed0" / "sweeps.json").is_file()
    assert {"01_sensitivity.png", "05_roc.png", "04_brightness_before_after.png"} <= \
        {p.name for p in (smoke_run / "figures").iterdir()}


def test_records_of_every_step(smoke_run):
    records = results.load_records(smoke_run)
    assert {r["step"] for r in records} == set(SMOKE_COUNTS)
    for r in records:
        assert list(r["train_counts"].values()) == SMOKE_COUNTS[r["step"]], r["step"]
        assert r["profile"] == "smoke" and r["mode"] == "finetune"
        m = r["metrics"]
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["balanced_accuracy"] <= 1 and 0 <= m["auroc"] <= 1
        assert all(0 <= v["recall"] <= 1 for v in m["per_class"].values())
        assert set(r["view_logits"]) == {"vflip", "blur"}
        assert set(r["sensitivity"]) == {"brightness", "clarity", "contrast"}
        assert (smoke_run / "analysis" / f"{r['step']}-seed0" / "model_analysis_results.json").is_file()


def test_analysis_found_all_four_steps(smoke_run):
    summary = json.loads((smoke_run / "summary.json").read_text())
    steps = {row["step"] for row in summary["Kit vs study"]}
    assert set(experiment.STUDY_STEPS) <= steps
    executed = json.loads((smoke_run / "notebooks" / "05_analysis.ipynb").read_text())
    assert not [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]


def test_same_seed_same_metrics(smoke_run, tmp_path, store):
    """The notebook's record and a direct run with the same seed agree to the last digit."""
    notebook_record = next(r for r in results.load_records(smoke_run) if r["step"] == "02_flip")
    again = experiment.run_step("02_flip", profile="smoke", seed=0, results_dir=tmp_path, progress=False, store=store,
                                analyse_images=False).record
    assert again["metrics"] == notebook_record["metrics"]
    assert np.array_equal(again["predictions"]["logits"], notebook_record["predictions"]["logits"])


def test_every_notebook_declares_its_parameters():
    for name in run.NOTEBOOKS:
        params = run.notebook_parameters(name)
        expected = {"RESULTS_DIR", "PROGRESS"} if name == "05_analysis" else COMMON
        assert expected <= set(params), name
        assert all(p["help"] for p in params.values()), f"{name}: every parameter has a comment"
    shown = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(NB / "01_baseline.ipynb")],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    for p in COMMON | {"SWEEP_IMAGES"}:
        assert f"  {p}: " in shown.stdout


def test_unknown_parameter_is_reported(capsys, tmp_path):
    assert run.main(["--profile", "smoke", "--out", str(tmp_path), "-p", "LEARNING_RATE=0.1"]) == 2
    assert "unknown notebook parameter(s) ['LEARNING_RATE']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bad_profile_fails_clearly(capsys, tmp_path):
    assert run.main(["--profile", "fast", "--out", str(tmp_path)]) == 2
    valid = "auto, cpu, cpu-finetune, paper, cpu-strong, gpu-strong, smoke"
    assert f"unknown profile 'fast'; valid: {valid}" in capsys.readouterr().err
    with pytest.raises(papermill.PapermillExecutionError, match="unknown backbone 'vgg16'"):
        papermill.execute_notebook(str(NB / "02_flip.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   parameters={"PROFILE": "smoke", "BACKBONE": "vgg16",
                                               "RESULTS_DIR": str(tmp_path / "r"), "PROGRESS": False},
                                   progress_bar=False, cwd=str(tmp_path))


def test_unwritable_results_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: use a path under a file instead
            target = tmp_path / "file"
            target.write_text("x")
            bad = target / "runs"
        else:
            bad = locked / "runs"
        with pytest.raises((PermissionError, OSError)):
            session.Settings.from_parameters(profile="smoke", results_dir=str(bad), progress=False)
        assert run.main(["--profile", "smoke", "--out", str(bad)]) == 2
    finally:
        locked.chmod(0o700)


def test_analysis_before_training_says_what_to_do(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="run the training notebooks \\(01-04\\) first"):
        papermill.execute_notebook(str(NB / "05_analysis.ipynb"), str(tmp_path / "05.ipynb"), kernel_name="python3",
                                   parameters={"RESULTS_DIR": str(tmp_path / "empty"), "PROGRESS": False},
                                   progress_bar=False, cwd=str(tmp_path))


def test_splits_and_profile_default_seeds(tmp_path):
    assert session.Settings.from_parameters(profile="cpu", results_dir=str(tmp_path), progress=False).seeds \
        == [0, 1, 2, 3, 4]
    settings = session.Settings.from_parameters(profile="smoke", seeds=1, splits=2, results_dir=str(tmp_path),
                                                   progress=False)
    recs = settings.run("01_baseline", analyse_images=False)
    assert [r["split_seed"] for r in recs] == [0, 1]
    assert recs[0]["predictions"]["names"] != recs[1]["predictions"]["names"]
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == ["01_baseline-seed0.json",
                                                                        "01_baseline-split1-seed0.json"]
    with pytest.raises(ValueError, match="SPLITS must be a whole number >= 1"):
        session.Settings.from_parameters(profile="smoke", splits=0, results_dir=str(tmp_path), progress=False)


def test_every_training_setting_is_reachable_from_a_notebook(tmp_path):
    """CONFIG takes any TrainConfig field over the profile's (and EPOCHS & co.); unknown names and bad
    values are errors that name CONFIG; the specs, hence the records, carry the values."""
    from fsfsl_utils.config import FIELDS

    assert session.check_config_parameter(dict.fromkeys(FIELDS)).keys() == set(FIELDS)
    settings = session.Settings.from_parameters(profile="smoke", epochs=2, results_dir=str(tmp_path), progress=False,
                                                config={"weight_decay": 0.01, "lr_schedule": "cosine", "epochs": 3})
    cfg = next(settings.specs("02_flip")).config
    assert (cfg.weight_decay, cfg.lr_schedule, cfg.epochs, cfg.input_size) == (0.01, "cosine", 3, 64)
    with pytest.raises(ValueError, match=r"CONFIG: unknown training parameter\(s\) \['wd'\]"):
        session.Settings.from_parameters(profile="smoke", results_dir=str(tmp_path), config={"wd": 0.1})
    with pytest.raises(ValueError, match="CONFIG lr_schedule: lr_schedule must be 'step' or 'cosine'"):
        session.Settings.from_parameters(profile="smoke", results_dir=str(tmp_path), config={"lr_schedule": "linear"})


def test_own_imagefolder_through_the_main_job(tmp_path, capsys):
    """A user's tree with other class names goes through 01, 04 (majority / minority policies) and 05,
    with a smallest class of 3 images (1 for validation): 05 completes and says which statistic it
    could not compute and why."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cname, n in (("ok", 30), ("crack", 3)):
        folder = tmp_path / "mine" / cname
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{cname}{i}.jpg")
    (tmp_path / "recipe.json").write_text('{"weight_decay": 0.01, "lr": 0.5}')       # any training setting:
    code = run.main(["--profile", "smoke", "--data", str(tmp_path / "mine"), "--out", str(tmp_path / "runs"),
                     "--notebooks", "01_baseline,04_balanced_augment,05_analysis", "-p", "SWEEP_IMAGES=0",
                     "--config", str(tmp_path / "recipe.json"), "-p", "lr=0.002"])      # a file, then -p name=value
    assert code == 0
    run_dir = next((tmp_path / "runs").iterdir())
    recs = {r["step"]: r for r in results.load_records(run_dir)}
    assert {(r["config"]["weight_decay"], r["config"]["lr"]) for r in recs.values()} == {(0.01, 0.002)}
    assert recs["01_baseline"]["class_names"] == ["crack", "ok"]
    assert recs["01_baseline"]["train_counts"] == {"crack": 2, "ok": 8}
    assert recs["04_balanced_augment"]["train_counts"] == {"crack": 8, "ok": 16}   # minority x4, majority x2
    assert recs["04_balanced_duplicate"]["train_counts"] == {"crack": 8, "ok": 16}
    assert (run_dir / "summary.md").exists()
    captured = capsys.readouterr()
    assert "crack recall: not computed: 1 validation crack image(s): a paired effect needs at least 2" in captured.out
    assert "note: the target class (whose recall matters most) is 'crack', the smallest class" in captured.err


@pytest.mark.parametrize("args, message", [
    (["-p", "SEEDS=abc"], "parameter SEEDS must be int or None, got 'abc'"),
    (["-p", "SEEDS=0"], "parameter SEEDS must lie in [1, 1000], got 0"),       # None, not 0, is the profile's
    (["--epochs", "0"], "parameter EPOCHS: epochs must be a number in [1, 10000]"),
    (["--epochs", "-1"], "parameter EPOCHS: epochs must be a number in [1, 10000]"),
    (["--input-size", "20"], "input_size 20 is too small for efficientnet_lite0"),
    (["-p", "SEED=-1"], "parameter SEED must lie in"),
    (["-p", f"SEED={2**70}"], "parameter SEED must lie in"),
    (["-p", "LIMIT_PER_CLASS=-1"], "parameter LIMIT_PER_CLASS must lie in"),
    (["-p", "learning_rate=0.1"], "CONFIG: unknown training parameter(s) ['learning_rate']; valid: mode, backbone"),
    (["-p", "weight_decay=2"], "parameter CONFIG weight_decay: weight_decay must be a number in [0, 1], got 2"),
    (["-p", "CONFIG=[1]"], "CONFIG must be a dict of training parameters"),
    (["--config", "/nope.json"], "--config /nope.json: not a readable JSON file"),
])
def test_bad_arguments_stop_before_any_kernel(args, message, capsys, tmp_path):
    """Exit status 2 with a message naming the parameter, and no run folder left behind."""
    assert run.main(["--profile", "smoke", "--out", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_interrupted_and_unwritable_runs_end_in_one_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C ends the job with status 130, one line and a run.json marked interrupted; a run folder
    that cannot be written ends with status 1 and one line naming the file."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupt)
    assert run.main(["--profile", "smoke", "--out", str(tmp_path / "a"), "--notebooks", "01_baseline"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted:")
    info = json.loads(next((tmp_path / "a").glob("*/run.json")).read_text())
    assert info["status"] == "interrupted"

    def read_only(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(run, "atomic_write_json", read_only)
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: None)
    assert run.main(["--profile", "smoke", "--out", str(tmp_path / "b"), "--notebooks", "01_baseline"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json cannot be written" in err[0]


def test_a_killed_main_job_resumes(tmp_path, monkeypatch, capsys, store):
    """A job killed in its second notebook (run.json left 'running', as kill -9 leaves it) resumes with
    --resume: the finished notebook is kept, the rest runs, and the records equal a step run alone."""
    real = papermill.execute_notebook
    calls = []

    def killed_in_02(source, target, **kwargs):
        calls.append(Path(source).stem)
        if Path(source).stem == "02_flip" and calls.count("02_flip") == 1:
            raise KeyboardInterrupt
        return real(source, target, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", killed_in_02)
    job = ["--profile", "smoke", "--out", str(tmp_path), "--notebooks", "01_baseline,02_flip",
           "-p", "SWEEP_IMAGES=0", "-p", "LIMIT_PER_CLASS=6"]
    assert run.main(job) == 130
    folder = next(tmp_path.iterdir())
    info = json.loads((folder / "run.json").read_text())
    assert info["completed"] == ["01_baseline"]
    info["status"] = "running"                                # what kill -9 leaves behind
    (folder / "run.json").write_text(json.dumps(info))
    first = (folder / "notebooks" / "01_baseline.ipynb").stat().st_mtime_ns
    assert run.main(["--out", str(tmp_path), "--resume"]) == 0
    assert calls == ["01_baseline", "02_flip", "02_flip"]
    assert (folder / "notebooks" / "01_baseline.ipynb").stat().st_mtime_ns == first
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "ok" and info["completed"] == ["01_baseline", "02_flip"]
    assert any(n.startswith("resumed at") for n in info["notes"])
    record = json.loads((folder / "records" / "02_flip-seed0.json").read_text())
    alone = experiment.run_step("02_flip", tmp_path / "alone", store=store, profile="smoke", limit_per_class=6,
                                progress=False, analyse_images=False).record
    assert record["predictions"] == alone["predictions"] and record["metrics"] == alone["metrics"]
    assert run.main(["--out", str(tmp_path), "--resume"]) == 2            # nothing left to resume
    assert "no unfinished run" in capsys.readouterr().err


def test_the_stronger_recipe_runs_headless_in_the_main_job(tmp_path, capsys):
    """Notebook 06 through the main job (``--recipe`` puts it before 05): the ladder of arms, the final
    recipe with its ensemble and operating point, a learning curve on half the labels; written down in
    words. Smoke size: two ingredients, one seed."""
    code = run.main(["--profile", "smoke", "--out", str(tmp_path), "--notebooks", "01_baseline,05_analysis",
                     "--recipe", "-p", "SWEEP_IMAGES=0", "-p", "INGREDIENTS=dihedral,soft_labels",
                     "-p", "LEARNING_CURVE=0.5,1"])
    assert code == 0, capsys.readouterr().err
    run_dir = next(tmp_path.iterdir())
    info = json.loads((run_dir / "run.json").read_text())
    assert info["completed"] == ["01_baseline", "06_stronger_recipe", "05_analysis"]
    recs = {r["step"]: r for r in results.load_records(run_dir)}
    assert {"06_0_base", "06_1_dihedral", "06_2_soft_labels", "06_final", "06_curve_base_50"} <= set(recs)
    assert recs["06_1_dihedral"]["config"]["train_aug"] == "dihedral" and recs["06_2_soft_labels"]["labels"] == "soft"
    assert recs["06_2_soft_labels"]["predictions"]["names"] == recs["06_0_base"]["predictions"]["names"]
    assert "hflip" in recs["06_0_base"]["view_logits"]                 # each arm keeps the views it trains on
    assert set(augment.DIHEDRAL_VIEWS) <= set(recs["06_1_dihedral"]["view_logits"])
    half = recs["06_curve_base_50"]
    assert half["label_fraction"] == 0.5 and sum(half["train_counts"].values()) == \
        sum(-(-n // 2) for n in recs["06_0_base"]["train_counts"].values())
    executed = (run_dir / "notebooks" / "06_stronger_recipe.ipynb").read_text()
    assert "Kept (a gain shown and no loss)" in executed and "labelled defective images gave" in executed
    assert (run_dir / "figures" / "06_learning_curves.png").exists()
    page = (run_dir / "report.html").read_text()                       # 05 and report.html show 06
    assert ">The stronger recipe (06)<" in page
    for pair in ("06_1_dihedral vs 06_0_base", "06_2_soft_labels vs 06_1_dihedral", "06_final vs 06_0_base"):
        assert pair in page, pair
    summary = (run_dir / "summary.md").read_text()
    assert "## 06: what each ingredient buys, defective recall" in summary
    assert r"06\_2\_soft\_labels vs 06\_1\_dihedral" in summary        # the soft-label arm is analysed too


@pytest.mark.slow
def test_the_gpu_strong_recipe_dry_runs_on_the_cpu(tmp_path, capsys):
    """The command a lent GPU runs for notebook 06's fine-tuned numbers (docs/findings.md), at a size a CPU
    finishes: the gpu-strong profile (whole network, cosine, amp) with two ingredients, one seed, tiny images."""
    code = run.main(["--profile", "gpu-strong", "--out", str(tmp_path), "--notebooks", "06_stronger_recipe",
                     "--recipe", "--seeds", "1", "--epochs", "1", "--input-size", "64", "-p", "LIMIT_PER_CLASS=8",
                     "-p", "INGREDIENTS=dihedral,average", "-p", "LEARNING_CURVE=", "-p", "THRESHOLD_FOLDS=2"])
    assert code == 0, capsys.readouterr().err
    recs = {r["step"]: r for r in results.load_records(next(tmp_path.iterdir()))}
    assert {"06_0_base", "06_1_dihedral", "06_2_average", "06_final"} <= set(recs)
    assert {r["mode"] for r in recs.values()} == {"finetune"} and recs["06_2_average"]["config"]["ema_decay"] == 0.99
