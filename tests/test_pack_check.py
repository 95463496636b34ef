"""benchmarks/pack_check.py runs once on a lent GPU: its CPU dry run keeps it from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsfsl_utils import experiment


@pytest.mark.slow  # a script for a lent GPU: make test-slow runs its dry run before a device session
def test_both_checks_in_one_call_dry_run_on_cpu(tmp_path):
    """`device_checks.sh all`, the planned device call, as on the device machine (its scripts'
    arguments overridden for a CPU): the pack check, then the Ray check in the time left."""
    root = experiment.project_root()
    env = {**os.environ, "FSFSL_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "DEVICE": "cpu",
           "INSTALL": "0", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "RAY_AUTH_MODE": "disabled",
           "PACK_ARGS": "--tiny --epochs 1 --input-size 64 --seeds 2 --pack 2 --arms 01_baseline,04_balanced_augment",
           "RAY_ARGS": "--profile smoke --trainings 2 --epochs 0", "LIMIT": "500", "RAY_MIN": "60"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_checks.sh"), "all"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "first epoch: largest logit difference" in (tmp_path / "out" / "pack.log").read_text()
    result = json.loads((tmp_path / "out" / "pack_check.json").read_text())  # what the device call brings back
    # one thread, batch 16 at 64 px: the grouped 1x1 convolutions' weight gradients round differently
    # (about 1e-6), so the logits after an epoch agree to about 1e-5, not bit for bit
    assert all(r["max_logit_difference"] < 1e-3 and r["same_prediction"] == 1.0 for r in result["first_epoch"])
    assert result["first_epoch_within_tolerance"] and result["first_epoch_limit"] == 0.05
    assert all(r["max_logit_difference"] == 0.0 for r in result["first_epoch_alone_twice"])  # a CPU repeats itself
    side = result["side_by_side"]
    assert side["trainings"] == 2 and side["epochs"] == 1 and side["streams_s"] > 0 and side["packed_s"] > 0
    assert all(r["max_logit_difference"] < 1e-3 for r in side["per_seed"])
    assert result["study"]["trained"] == 4 and result["study"]["seconds"] > 0  # two arms x two seeds
    ray = json.loads((tmp_path / "out" / "ray_gpu_check.json").read_text())  # RAY_ARGS reached its script
    assert len(ray["trainings"]) == 2 and ray["ray_s"] > 0 and ray["max_logit_difference"] == 0.0


def test_one_call_skips_the_ray_check_without_time_and_fails_with_a_failed_check(tmp_path):
    """`all` runs the Ray check only when RAY_MIN seconds of LIMIT are left, and says so in ray.log;
    a pack check that fails (here: refused arguments) makes the call fail."""
    root = experiment.project_root()
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "INSTALL": "0", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "PACK_ARGS": "--pack 1", "LIMIT": "100", "RAY_MIN": "1000"}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_checks.sh"), "all"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--pack and --seeds must be at least 2" in (tmp_path / "out" / "pack.log").read_text()
    assert "ray check not run" in (tmp_path / "out" / "ray.log").read_text()
    assert not (tmp_path / "out" / "ray_gpu_check.json").exists()


def test_pack_check_refuses_bad_arguments(tmp_path, capsys, benchmark_script):
    pack_check = benchmark_script("pack_check")
    for args, message in ((["--synthetic", "--pack", "1"], "--pack and --seeds must be at least 2"),
                          (["--synthetic", "--arms", "99_x"], "unknown arm(s) 99_x"),
                          ([], "give either --data PACK or --synthetic")):
        with pytest.raises(SystemExit) as stop:
            pack_check.main(["--out", str(tmp_path), *args])
        assert stop.value.code == 2 and message in capsys.readouterr().err


def test_each_carried_wheel_folder_is_installed_once_so_two_calls_can_carry_one_each(tmp_path):
    """The device calls carry .whl, then .whl-ray (together they and the tree exceed one call's 64 MiB):
    `device_checks.sh install` installs each carried folder once, the second one in a later call."""
    root = experiment.project_root()
    carried, site = tmp_path / "carried", tmp_path / "site"
    (carried / ".whl").mkdir(parents=True)
    env = {**os.environ, "PYTHON": sys.executable, "SITE": str(site), "CARRIED": str(carried),
           "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}

    def install() -> str:
        done = subprocess.run(["bash", str(root / "benchmarks" / "device_checks.sh"), "install"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "from .whl into" in install()
    (carried / ".whl-ray").mkdir()
    second = install()
    assert "from .whl-ray into" in second and "from .whl into" not in second
    assert install() == ""
