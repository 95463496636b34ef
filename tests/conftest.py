"""Shared fixtures: ELPV loaded once per test session, small real subsets, temp folders."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from types import ModuleType

import pytest

os.environ.setdefault("FSFSL_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

from fsfsl_utils import data, experiment  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never read or write the user's feature cache (~/.cache/fsfsl)."""
    os.environ["FSFSL_CACHE"] = str(tmp_path_factory.mktemp("fsfsl_cache"))


@pytest.fixture(scope="session")
def elpv() -> data.Dataset:
    return data.load_elpv("study")


@pytest.fixture(scope="session")
def study(elpv) -> tuple[data.Dataset, data.Dataset]:
    return data.split(elpv, seed=0)


@pytest.fixture(scope="session")
def small(elpv) -> tuple[data.Dataset, data.Dataset]:
    """A real ELPV subset: 60 + 60 images split in half, for seconds-long model tests."""
    sub = data.load_elpv("study", limit_per_class=60, seed=1)
    return data.split(sub, seed=0)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("FSFSL_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def store() -> experiment.DataStore:
    """Decoded data shared by the session's trainings (decoding ELPV takes seconds)."""
    return experiment.DataStore()


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory, store) -> list[experiment.StepRun]:
    """Smoke trainings of 01 and 04, seeds 0 and 1, with the sensitivity analysis: the records the
    report, figure and widget tests read."""
    out = tmp_path_factory.mktemp("smoke_runs")
    return [experiment.run_step(step, out, store=store, profile="smoke", seed=seed, progress=False)
            for step in ("01_baseline", "04_balanced_augment") for seed in (0, 1)]


@pytest.fixture(scope="session")
def tiny_pack(tmp_path_factory) -> str:
    """A pack of 16 ELPV cells per class: a training's data that loads in a moment (Ray tasks)."""
    ds = data.load_elpv("study", limit_per_class=16, seed=0)
    return str(data.write_pack(ds, tmp_path_factory.mktemp("pack") / "tiny.fsfslpack", origin="elpv",
                               labels="study", progress=False))


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """Loads a script of benchmarks/ by name (``benchmark_script("pack_check")``) as a module, to call
    its functions: the scripts are files beside their results, not a package."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, experiment.project_root() / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
