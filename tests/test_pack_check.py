"""benchmarks/pack_check.py runs once on a lent GPU: its CPU dry run keeps it from rotting."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from fsfsl_utils import experiment


@pytest.mark.slow  # a script for a lent GPU: make test-slow runs its dry run before a device session
def test_pack_check_dry_run_on_cpu(tmp_path):
    """Through benchmarks/device_checks.sh, as on the device machine (its arguments overridden for a CPU)."""
    root = experiment.project_root()
    env = {**os.environ, "FSFSL_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, "DEVICE": "cpu",
           "INSTALL": "0", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_checks.sh"), "pack", "--tiny", "--epochs", "1",
                           "--input-size", "64", "--seeds", "2", "--pack", "2",
                           "--arms", "01_baseline,04_balanced_augment"],
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


def test_pack_check_refuses_bad_arguments(tmp_path, capsys):
    path = experiment.project_root() / "benchmarks" / "pack_check.py"
    spec = importlib.util.spec_from_file_location("pack_check", path)
    pack_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pack_check)
    for args, message in ((["--synthetic", "--pack", "1"], "--pack and --seeds must be at least 2"),
                          (["--synthetic", "--arms", "99_x"], "unknown arm(s) 99_x"),
                          ([], "give either --data PACK or --synthetic")):
        with pytest.raises(SystemExit) as stop:
            pack_check.main(["--out", str(tmp_path), *args])
        assert stop.value.code == 2 and message in capsys.readouterr().err
