"""The Ray backend on a local cluster (this CPU box, a declared fake GPU): trainings run as tasks,
side by side, and write the same records as the local runner; a second run trains nothing."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import ray
import torch

from fsfsl_utils import experiment, runner, session


def ray_processes() -> list[str]:
    out = subprocess.run(["ps", "-eo", "comm="], capture_output=True, text=True).stdout.split()
    return [p for p in out if p in ("raylet", "gcs_server")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster: 4 logical CPUs and one declared GPU (none is used: the trainings run on
    the CPU); token authentication off on this loopback-only test cluster. Stopped afterwards, and no
    Ray process may outlive it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}})
    yield
    ray.shutdown()
    mp.undo()
    deadline = time.time() + 20
    while ray_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert ray_processes() == [], "Ray processes outlived the cluster"


def specs(pack: str, seeds: tuple[int, ...] = (0, 1, 2, 3)) -> list[experiment.StepSpec]:
    return [experiment.StepSpec.build("02_flip", "smoke", seed=s, source=pack, limit_per_class=None)
            for s in seeds]


def test_four_trainings_share_a_gpu_and_match_the_local_runner(cluster, tiny_pack, tmp_path):
    todo = specs(tiny_pack)
    t0 = time.perf_counter()
    remote = runner.RayRunner(num_gpus=0.25, num_cpus=1).run(todo, tmp_path / "ray", analyse_images=False)
    ray_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray workers (OMP_NUM_THREADS=1): CPU sums depend on the thread count
    try:
        local = runner.LocalRunner().run(todo, tmp_path / "local", analyse_images=False)
    finally:
        torch.set_num_threads(threads)
    # the four shared the one (declared) GPU, a quarter each, and ran side by side: on 2 cores the
    # workers' start-up (a fresh process per GPU task) staggers them, so at least two at once
    assert all(r["ran_on"]["resources"].get("GPU") == 0.25 and r["ran_on"]["cuda_visible_devices"] == "0"
               for r in remote)
    spans = [(_created(r) - r["wall_seconds"], _created(r)) for r in remote]
    peak = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert peak >= 2, f"the tasks ran one at a time: {spans} ({ray_s:.0f} s)"
    for r, lo in zip(remote, local):
        assert (r["step"], r["seed"]) == (lo["step"], lo["seed"])
        assert r["metrics"] == lo["metrics"] and np.array_equal(r["predictions"]["logits"], lo["predictions"]["logits"])
        assert r["ran_on"]["backend"] == "ray" and r["ran_on"]["ray"] == ray.__version__
        assert lo["ran_on"]["backend"] == "local"
    files = sorted(p.name for p in (tmp_path / "ray" / "records").iterdir())
    assert files == [f"02_flip-seed{s}.json" for s in range(4)]          # one each, no temporary left
    again = runner.RayRunner().run(todo, tmp_path / "ray", analyse_images=False)   # a second run trains nothing
    assert [r["_path"] for r in again] == [r["_path"] for r in remote]
    assert sorted(p.name for p in (tmp_path / "ray" / "records").iterdir()) == files


def _created(record: dict) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(record["created"]).timestamp()


def test_a_failing_training_names_its_spec_and_shows_the_traceback(cluster, tmp_path):
    bad = experiment.StepSpec.build("01_baseline", "smoke", seed=7, source=str(tmp_path / "missing.fsfslpack"))
    with pytest.raises(runner.TrainingFailed, match=r"01_baseline seed 7 split 0") as err:
        runner.RayRunner(max_retries=0).run([bad], tmp_path / "out", analyse_images=False)
    assert "missing.fsfslpack" in str(err.value) and 'File "' in str(err.value) and "DataError" in str(err.value)


def test_settings_run_through_ray_resumes(cluster, tiny_pack, tmp_path):
    """A notebook's settings.run with BACKEND='ray': records in the results folder; a second call
    returns the same records without training."""
    settings = session.Settings.from_parameters(profile="smoke", seeds=2, data=tiny_pack, results_dir=str(tmp_path),
                                                   progress=False, backend="ray")
    first = settings.run("01_baseline", analyse_images=False)
    assert [r["seed"] for r in first] == [0, 1] and all(r["ran_on"]["backend"] == "ray" for r in first)
    second = settings.run("01_baseline", analyse_images=False)
    assert [r["_path"] for r in second] == [r["_path"] for r in first]
    assert json.loads((tmp_path / "records" / "01_baseline-seed1.json").read_text())["seed"] == 1


def test_bad_backend_and_unreachable_address_fail_fast(tmp_path):
    with pytest.raises(ValueError, match="BACKEND must be one of 'local', 'ray'"):
        session.Settings.from_parameters(profile="smoke", results_dir=str(tmp_path), backend="spark")
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="no Ray cluster answers at RAY_ADDRESS='127.0.0.1:9'"):
        runner.check_reachable("127.0.0.1:9", timeout_s=1.0)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="host:port"):
        runner.check_reachable("nowhere", timeout_s=1.0)
    from fsfsl_utils import run

    assert run.main(["--profile", "smoke", "--out", str(tmp_path), "--backend", "ray",
                     "--ray-address", "127.0.0.1:9"]) == 2          # the main job refuses before any kernel
    assert run.main(["--profile", "smoke", "--out", str(tmp_path), "-p", "BACKEND='spark'"]) == 2
    assert not list(tmp_path.glob("2*"))

