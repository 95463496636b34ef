"""The benchmark in its seconds-long CI form: every workload runs, features agree, rows are complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fsfsl_utils import experiment

sys.path.insert(0, str(experiment.project_root() / "benchmarks"))  # the benchmark lives beside its results
import bench  # noqa: E402


def test_quick_benchmark_runs_every_workload(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--workloads", "features,study,finetune,step,paper", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [r["workload"] for r in result["rows"]]
    assert names[0].startswith("features") and any("cache warm" in n for n in names)
    assert sum(n.startswith("paper ") for n in names) == 4
    at_once = next(r for r in result["rows"] if r["workload"].startswith("paper: the four at once"))
    assert at_once["baseline_s"] > 0 and len(at_once["val_accuracy_last_epoch"]) == 4  # against one after another
    fastest = result["fastest_step_variant"]                # the step variants choose the paper's config
    assert set(fastest) == set(bench.STEP_KEYS) and sum(n.startswith("step ") for n in names) == 2
    assert all(r["variant"] == fastest for r in result["rows"] if r["workload"].startswith("paper 0"))
    first_step = next(r for r in result["rows"] if r["workload"].startswith("step "))
    assert first_step["setup_s"] > 0 and len(first_step["last_batch_eager_ms"]) == 3  # the last-batch probe
    assert first_step["last_batch_size"] == bench.LAST_BATCH and first_step["last_batch_graph_ms"] > 0
    feats = result["rows"][0]
    assert feats["min_feature_cosine"] >= bench.MIN_FEATURE_COSINE  # kit ~ naive features (asserted inside too)
    assert feats["best_batch"] in (8, 16, 32) and 0 < feats["peak_fraction"] < 1
    for r in result["rows"]:
        assert r["kit_s"] > 0 and r["kit_img_per_s"] > 0
        if r["baseline_s"] is not None:  # times are rounded to 1 ms, the ratio to 0.01
            lo = (r["baseline_s"] - 5e-4) / (r["kit_s"] + 5e-4) - 5e-3
            hi = (r["baseline_s"] + 5e-4) / max(r["kit_s"] - 5e-4, 1e-9) + 5e-3
            assert lo <= r["speedup"] <= hi
    assert result["machine"]["matmul_fp32_gflops_cpu"] > 0
    assert "workload" in capsys.readouterr().out


def test_feature_mismatch_is_caught(tmp_path, monkeypatch):
    real = bench.naive_features
    monkeypatch.setattr(bench, "naive_features", lambda *a, **k: real(*a, **k)[::-1])
    with pytest.raises(AssertionError, match="features differ"):
        bench.main(["--quick", "--workloads", "features", "--out", str(tmp_path / "b.json")])


def test_unknown_workload(capsys, tmp_path):
    assert bench.main(["--workloads", "gpu", "--out", str(tmp_path / "b.json")]) == 2
    assert "unknown workload" in capsys.readouterr().err


def test_step_variants_start_from_the_kit_defaults():
    """The first variant is what fit does on a GPU; the others change one or two levers."""
    for cuda in (True, False):
        variants = bench.step_variants(cuda)
        defaults = {k: getattr(bench.TrainConfig(), k) for k in bench.STEP_KEYS}
        assert variants[0] == {**defaults, "amp": defaults["amp"] and cuda}
        assert all(set(v) == set(bench.STEP_KEYS) for v in variants)
        assert len({str(v) for v in variants}) == len(variants)
    assert any(v["compile"] for v in bench.step_variants(True))
    assert not any(v["compile"] for v in bench.step_variants(False))


def test_a_failing_step_variant_is_reported_and_skipped(monkeypatch, tmp_path):
    real = bench._time_step

    def unfused_breaks(dev, backbone, size, batch_size, steps, variant, last_batch=0):
        if not variant["fused_adam"]:
            raise RuntimeError("no foreach kernel for this device")
        return real(dev, backbone, size, batch_size, steps, variant, last_batch)

    monkeypatch.setattr(bench, "_time_step", unfused_breaks)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--workloads", "step", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["variant"]["fused_adam"] for r in result["rows"] if r["workload"].startswith("step ")] == [True]
    assert result["fastest_step_variant"]["fused_adam"] is True
    failure = result["step_failures"][0]
    assert "step channels_last, fp32, foreach Adam (" in failure and "RuntimeError: no foreach kernel" in failure


def test_paper_falls_back_to_the_defaults_when_the_chosen_variant_breaks(monkeypatch, tmp_path):
    real = bench.train.fit

    def compile_breaks(tr, val, cfg, **kwargs):
        if cfg.get("compile"):
            raise RuntimeError("inductor crashed")
        return real(tr, val, cfg, **kwargs)

    monkeypatch.setattr(bench.train, "fit", compile_breaks)
    variant = {**bench.step_variants(False)[0], "compile": True}
    rows = bench.bench_paper("cpu", 1, True, 1e9, report=lambda r: None, variant=variant, work=tmp_path)
    steps = [r for r in rows if r["workload"].startswith("paper 0")]
    assert len(steps) == 4 and all(r["variant"] == {} for r in steps)
    assert "failed (RuntimeError: inductor crashed)" in rows[4]["notes"][0] and len(rows[4]["notes"]) == 1
    monkeypatch.setattr(bench.train, "fit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("broken")))
    with pytest.raises(RuntimeError, match="broken"):  # the defaults themselves failing is an error
        bench.bench_paper("cpu", 1, True, 1e9, report=lambda r: None, variant=bench.step_variants(False)[0])


@pytest.mark.slow  # a script for a lent GPU: make test-slow runs its dry run before a device session
def test_the_gpu_script_runs_dry_on_a_cpu(tmp_path):
    """benchmarks/gpu_check.sh is run once per lent GPU, with no second try: its CPU dry run keeps it
    from rotting (same workloads and flags, tiny sizes)."""
    root = bench.experiment.project_root()
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "EXTRA": "--quick", "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    names = [r["workload"] for r in json.loads((tmp_path / "gpu.json").read_text())["rows"]]
    assert any(n.startswith("step ") for n in names) and not any(n.startswith("fine-tune") for n in names)
    finetune = [r["workload"] for r in json.loads((tmp_path / "gpu-finetune.json").read_text())["rows"]]
    assert finetune and all(n.startswith("fine-tune") for n in finetune)
    ahead = json.loads((tmp_path / "ahead.json").read_text())  # the main job's train-ahead path
    assert ahead["trained_ahead"] == 4 and all(ahead["resumed"]) and ahead["01_ahead_equals_alone"]
    assert sum(n.startswith("paper 0") for n in names) == 4 and "no CUDA" in (tmp_path / "gpu.log").read_text()


def test_a_failing_workload_does_not_cost_the_others(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(bench, "bench_finetune", broken)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--workloads", "finetune,step", "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["errors"] == ["finetune: RuntimeError: CUDA error: an illegal memory access"]
    assert any(r["workload"].startswith("step ") for r in result["rows"])
