"""benchmarks/paper_rerun.py runs once per lent GPU with no second try: its CPU dry run keeps it from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pytest

from fsfsl_utils import data, experiment


@pytest.mark.slow  # a script for a lent GPU: make test-slow runs its dry run before a device session
def test_paper_rerun_dry_run_on_cpu(tmp_path):
    pack = data.write_pack(data.load_elpv("study", limit_per_class=16, seed=0), tmp_path / "tiny.fsfslpack",
                           origin="elpv", labels="study", progress=False)
    root = experiment.project_root()
    env = {**os.environ, "FSFSL_PROGRESS": "0", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "paper_rerun.py"), "--data", str(pack),
                           "--out", str(tmp_path / "out"), "--profile", "smoke", "--device", "cpu", "--seeds", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with tarfile.open(tmp_path / "out" / "paper-run.tar.gz") as tar:
        names = tar.getnames()
        run = json.load(tar.extractfile("run.json"))
    records = [n for n in names if n.startswith("records/") and n.endswith(".json")]
    assert len(records) == 6 + 6          # seed 0 of six arms, then seed 1 of the two primary and four other arms
    assert not any("checkpoints" in n for n in names)
    assert [g["group"] for g in run["groups"]] == [1, 2, 3] and run["data"]["origin"] == "elpv"
    assert all(0 <= a <= 1 for g in run["groups"] for a in g["accuracy"].values())
    # a part of a group: only the named arms train
    part = subprocess.run([sys.executable, str(root / "benchmarks" / "paper_rerun.py"), "--data", str(pack),
                           "--out", str(tmp_path / "part"), "--profile", "smoke", "--device", "cpu", "--seeds", "2",
                           "--groups", "3", "--arms", "04_class_weighted"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
    with tarfile.open(tmp_path / "part" / "paper-run.tar.gz") as tar:
        assert sorted(n for n in tar.getnames() if n.endswith(".json") and n.startswith("records/")) == [
            "records/04_class_weighted-seed1.json"]
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "paper_rerun.py"), "--data", str(pack),
                          "--out", str(tmp_path / "bad"), "--arms", "09_nothing"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "09_nothing" in bad.stderr


def test_the_rerun_groups_the_trainings_by_importance_or_by_arm_when_packed(benchmark_script):
    rerun = benchmark_script("paper_rerun")
    plain, packed = rerun.groups(5), rerun.groups(5, by_arm=True)
    assert [len(g) for g in plain] == [6, 8, 16] and plain[0] == [(arm, 0) for arm in experiment.STEPS]
    assert [len(g) for g in packed] == [10, 20]
    assert packed[0] == [(arm, k) for arm in ("01_baseline", "04_balanced_augment") for k in range(5)]
    assert sorted(t for g in plain for t in g) == sorted(t for g in packed for t in g)  # the same 30 trainings


@pytest.mark.slow  # a script for a lent GPU, dry-run like the paper rerun's
def test_strong_rerun_dry_run_on_cpu(tmp_path):
    """benchmarks/strong_rerun.py: 06's ladder from a pack, every arm archived as it ends, the final
    recipe read off the arms with every test-time view; with no time left, only the first arm runs."""
    pack = data.write_pack(data.load_elpv("study", limit_per_class=12, seed=0), tmp_path / "tiny.fsfslpack",
                           origin="elpv", labels="study", progress=False)
    root = experiment.project_root()
    env = {**os.environ, "FSFSL_PROGRESS": "0", "PYTHONPATH": str(root)}
    args = [sys.executable, str(root / "benchmarks" / "strong_rerun.py"), "--data", str(pack), "--profile", "smoke",
            "--device", "cpu", "--seeds", "2", "--input-size", "32", "--ingredients", "dihedral,schedule"]
    done = subprocess.run([*args, "--out", str(tmp_path / "out")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with tarfile.open(tmp_path / "out" / "strong-run.tar.gz") as tar:
        names = tar.getnames()
        run = json.load(tar.extractfile("run.json"))
    assert [a["step"] for a in run["arms"]] == ["06_0_base", "06_1_dihedral", "06_2_schedule", "06_final"]
    assert not any("checkpoints" in n for n in names) and run["data"]["origin"] == "elpv"
    records = {json.loads((tmp_path / "out" / "work" / n).read_text())["step"]: n for n in names
               if n.startswith("records/") and n.endswith(".json")}
    final = json.loads((tmp_path / "out" / "work" / records["06_final"]).read_text())
    assert {"hflip", "rot90", "vflip", "blur"} <= set(final["view_logits"])
    dihedral = json.loads((tmp_path / "out" / "work" / records["06_1_dihedral"]).read_text())
    assert dihedral["config"]["train_aug"] == "dihedral" and "rot270" in dihedral["view_logits"]
    short = subprocess.run([*args, "--out", str(tmp_path / "short"), "--budget", "1"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert short.returncode == 0, short.stdout[-3000:] + short.stderr[-3000:]
    run = json.loads((tmp_path / "short" / "work" / "run.json").read_text())
    assert [a["step"] for a in run["arms"]] == ["06_0_base"]
    assert [s["step"] for s in run["skipped"]] == ["06_1_dihedral", "06_2_schedule"] and "kept" not in run
    bad = subprocess.run([*args[:-1], "lite9", "--out", str(tmp_path / "bad")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "lite9" in bad.stderr
