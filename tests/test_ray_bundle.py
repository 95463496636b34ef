"""benchmarks/ray_bundle.py and device_checks.sh: the open GPU checks, ready for a lent machine."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from fsfsl_utils import experiment


def test_bundle_of_a_wheel_keeps_ray_core_and_file_modes(tmp_path, capsys, benchmark_script):
    ray_bundle = benchmark_script("ray_bundle")
    wheel = tmp_path / "ray-9.9.9-cp312-cp312-manylinux2014_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, mode in (("ray/__init__.py", 0o644), ("ray/core/src/ray/raylet/raylet", 0o755),
                           ("ray/jars/ray_dist.jar", 0o644), ("ray/rllib/algo.py", 0o644),
                           ("ray/dashboard/client/build/index.html", 0o644), ("ray/dashboard/agent.py", 0o644),
                           ("ray-9.9.9.dist-info/METADATA", 0o644), ("other/x.py", 0o644)):
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, name)
    assert ray_bundle.main([str(wheel), "--out", str(tmp_path / "out"), "--preset", "0"]) == 0
    path = tmp_path / "out" / "ray-9.9.9-slim.tar.xz"
    assert path.name in capsys.readouterr().out
    with tarfile.open(path) as bundle:
        members = {m.name: m for m in bundle.getmembers()}
        assert sorted(members) == ["ray-9.9.9.dist-info/METADATA", "ray/__init__.py", "ray/core/src/ray/raylet/raylet",
                                   "ray/dashboard/agent.py"]
        assert members["ray/core/src/ray/raylet/raylet"].mode == 0o755  # the binaries stay executable
        assert bundle.extractfile("ray/__init__.py").read() == b"ray/__init__.py"
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_bundle_refuses_what_is_not_ray(tmp_path, capsys, benchmark_script):
    ray_bundle = benchmark_script("ray_bundle")
    (tmp_path / "empty").mkdir()
    (tmp_path / "not-ray.whl").write_bytes(b"not a zip")
    (tmp_path / "ray-1.0-py3-none-any.whl").write_bytes(b"a cut-off download")
    for source, message in ((tmp_path / "missing.whl", "no such Ray wheel or folder"),
                            (tmp_path / "empty", "holds no installed 'ray' package"),
                            (tmp_path / "not-ray.whl", "neither a Ray wheel"),
                            (tmp_path / "ray-1.0-py3-none-any.whl", "not a zip file")):
        with pytest.raises(SystemExit) as stop:
            ray_bundle.main([str(source), "--out", str(tmp_path / "out")])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not any((tmp_path / "out").iterdir())  # no half-written bundle left behind


@pytest.mark.slow  # about 40 s: make test-slow runs it before a device session
def test_bundle_of_the_installed_ray_runs_a_task(tmp_path, benchmark_script):
    """What the bundle leaves out is not needed: Ray unpacked from it alone starts a local cluster
    and runs a task asking for a share of a (declared) GPU, as ray_gpu_check.py does."""
    ray = pytest.importorskip("ray")
    ray_bundle = benchmark_script("ray_bundle")
    site = Path(ray.__file__).resolve().parents[1]
    path = ray_bundle.write_bundle(site, tmp_path / "out", preset=0)
    target = tmp_path / "site"
    target.mkdir()
    with tarfile.open(path) as bundle:
        bundle.extractall(target, filter="tar")
    assert not (target / "ray" / "jars").exists() and (target / "ray" / "_raylet.so").exists()
    code = ("import ray, sys; assert ray.__file__.startswith(sys.argv[1]), ray.__file__\n"
            "ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)\n"
            "f = ray.remote(num_gpus=0.25)(lambda x: x + 1)\n"
            "print('answer', ray.get(f.remote(41)))\n"
            "ray.shutdown()\n")
    env = {**os.environ, "PYTHONPATH": str(target), "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "answer 42" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]


def test_device_checks_names_its_checks(tmp_path):
    """benchmarks/device_checks.sh refuses an unknown check, or arguments `all` would not pass on, before
    installing or running anything."""
    script = experiment.project_root() / "benchmarks" / "device_checks.sh"
    env = {**os.environ, "INSTALL": "0", "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    for args in ([], ["packed"]):
        done = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "usage: device_checks.sh pack|ray|all|install" in done.stderr
    done = subprocess.run(["bash", str(script), "all", "--tiny"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "PACK_ARGS and RAY_ARGS" in done.stderr  # not silently dropped
    assert not (tmp_path / "out").exists()


def test_device_checks_installs_the_carried_wheels_and_bundle_once(tmp_path):
    """What call 1 does first on the device machine: the wheels of .whl and .whl-ray installed with
    pip, Ray's bundle unpacked beside them (executables stay executable); call 2 installs nothing."""
    carried = tmp_path / "carried"
    (carried / ".whl").mkdir(parents=True)
    (carried / ".whl-ray").mkdir()
    with zipfile.ZipFile(carried / ".whl" / "demo_fsfsl-0.1-py3-none-any.whl", "w") as wheel:
        files = {"demo_fsfsl/__init__.py": "ANSWER = 42\n",
                 "demo_fsfsl-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: demo-fsfsl\nVersion: 0.1\n",
                 "demo_fsfsl-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n"}
        record = "demo_fsfsl-0.1.dist-info/RECORD"
        files[record] = "".join(f"{name},,\n" for name in [*files, record])
        for name, text in files.items():
            wheel.writestr(name, text)
    with tarfile.open(carried / ".whl-ray" / "ray-9.9.9-slim.tar.xz", "w:xz", preset=0) as bundle:
        for name, text, mode in (("ray/__init__.py", b"__version__ = '9.9.9'\n", 0o644),
                                 ("ray/core/raylet", b"#!/bin/sh\necho raylet\n", 0o755)):
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(text), mode
            bundle.addfile(entry, io.BytesIO(text))
    script = experiment.project_root() / "benchmarks" / "device_checks.sh"
    site = tmp_path / "site"
    env = {**os.environ, "PYTHON": sys.executable, "SITE": str(site), "CARRIED": str(carried),
           "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    first = subprocess.run(["bash", str(script), "install"], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"installed 1 wheel(s) and 0 bundle(s) from .whl into {site}" in first.stdout
    assert f"installed 0 wheel(s) and 1 bundle(s) from .whl-ray into {site}" in first.stdout
    assert os.access(site / "ray" / "core" / "raylet", os.X_OK)
    found = subprocess.run([sys.executable, "-c", "import demo_fsfsl, ray; print(demo_fsfsl.ANSWER, ray.__version__, "
                            "ray.__file__)"], env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True,
                           text=True, timeout=60)
    assert found.stdout.split()[:2] == ["42", "9.9.9"] and found.stdout.split()[2].startswith(str(site))
    again = subprocess.run(["bash", str(script), "install"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "installed" not in again.stdout  # the warm machine keeps what call 1 put there
