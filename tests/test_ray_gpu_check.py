"""benchmarks/ray_gpu_check.py runs once on a lent GPU: its CPU dry run keeps it from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsfsl_utils import experiment


@pytest.mark.slow  # a script for a lent GPU: make test-slow runs its dry run before a device session
def test_ray_gpu_check_dry_run_on_cpu(tmp_path):
    """Through benchmarks/device_checks.sh, as on the device machine (its arguments overridden for a CPU)."""
    root = experiment.project_root()
    env = {**os.environ, "FSFSL_PROGRESS": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable, "DEVICE": "cpu", "INSTALL": "0", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work")}
    done = subprocess.run(["bash", str(root / "benchmarks" / "device_checks.sh"), "ray", "--profile", "smoke",
                           "--trainings", "4", "--epochs", "0"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ray 2." in (tmp_path / "out" / "ray.log").read_text()
    result = json.loads((tmp_path / "out" / "ray_gpu_check.json").read_text())
    assert len(result["trainings"]) == 4 and result["ray_s"] > 0 and result["local_s"] > 0
    assert all(r["backend"] == "ray" and r["resources"].get("GPU") == 0.25 for r in result["ran_on"])
    assert result["max_logit_difference"] == 0.0      # one thread on both sides: the same numbers on a CPU
    bad = subprocess.run([sys.executable, str(root / "benchmarks" / "ray_gpu_check.py"), "--out", str(tmp_path)],
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(root)}, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--synthetic" in bad.stderr
