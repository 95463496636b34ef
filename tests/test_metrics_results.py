"""Metrics against scikit-learn and hand-worked cases; run record schema and atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from fsfsl_utils import io, metrics, results


def crafted():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    logits = np.array([[2, 0], [1, 0], [0, 1], [3, 1], [0, 2], [1, 0], [0, 5]], float)
    return labels, logits


def test_evaluate_matches_sklearn():
    labels, logits = crafted()
    m = metrics.evaluate(labels, logits, ["normal", "defective"])
    pred = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["per_class"]["normal"]["recall"] == pytest.approx(3 / 4)
    assert m["per_class"]["defective"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["defective"]["f1"] == pytest.approx(skm.f1_score(labels, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(labels, pred))
    assert m["confusion_matrix"] == [[3, 1], [1, 2]]
    prob = metrics.softmax(logits)[:, 1]
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(labels, prob))


def test_wilson_reference_values():
    # Wilson 95% for 8/10 (Newcombe 1998, table I style): 0.4902 - 0.9433
    lo, hi = metrics.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(0, 0) is None


def test_mcnemar_exact():
    labels = np.zeros(30, int)
    right = np.tile([[1.0, 0.0]], (30, 1))
    wrong = np.tile([[0.0, 1.0]], (30, 1))
    same = metrics.mcnemar(labels, right, right)
    assert same["p_value"] == 1.0 and same["a_only"] == same["b_only"] == 0
    b = right.copy()
    b[:12] = wrong[:12]                       # A right, B wrong on 12 images, never the reverse
    res = metrics.mcnemar(labels, right, b)
    assert res["a_only"] == 12 and res["b_only"] == 0
    assert res["p_value"] == pytest.approx(2 * 0.5 ** 12)


def test_bootstrap_ci_brackets_estimate():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    logits = np.stack([1 - labels + rng.normal(0, 0.8, 300), labels + rng.normal(0, 0.8, 300)], 1)
    acc = metrics.accuracy_fn(labels, logits)
    lo, hi = metrics.bootstrap_ci(labels, logits, metrics.accuracy_fn, n_boot=300)
    assert lo < acc < hi and hi - lo < 0.15


def test_recall_at_fixed_recall_hand_worked():
    # scores for normal (0) and defective (1); reading the ROC by hand:
    # normal scores 0.1 0.2 0.3 0.9, defective 0.4 0.5 0.95
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.9, 0.4, 0.5, 0.95])
    logits = np.stack([np.zeros(7), np.log(s / (1 - s))], 1)
    r100 = metrics.recall_at_fixed_recall(labels, logits, 1.0)
    assert r100["target_recall"] == pytest.approx(1 / 3)   # threshold above 0.9: only 0.95
    r75 = metrics.recall_at_fixed_recall(labels, logits, 0.75)
    assert r75["target_recall"] == pytest.approx(1.0)      # give up the 0.9 normal: all defects


def test_bad_predictions_raise():
    with pytest.raises(ValueError, match="3 labels but 2 rows"):
        metrics.evaluate([0, 1, 1], np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.evaluate([0, 1], np.array([[0, np.nan], [0, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="3 columns but there are 2 classes"):
        metrics.evaluate([0, 1], np.zeros((2, 3)), ["a", "b"])


def minimal_record(**over):
    rec = {"schema": 1, "step": "01_baseline", "policy": "none", "seed": 0, "split_seed": 0,
           "created": "2026-01-01T00:00:00", "profile": "cpu", "mode": "probe", "backbone": "x", "device": "cpu",
           "config": {}, "versions": {}, "class_names": ["a", "b"], "train_counts": {}, "val_counts": {},
           "wall_seconds": 1.0, "metrics": dict.fromkeys(results.METRIC_KEYS, 0),
           "predictions": {"names": ["i"], "labels": [0], "logits": [[0.1, 0.2]]}}
    rec.update(over)
    return rec


def test_records_validate_and_never_overwrite(tmp_path):
    p1 = results.save_record(minimal_record(), tmp_path)
    p2 = results.save_record(minimal_record(created="2026-01-02T00:00:00"), tmp_path)
    assert p1 != p2 and p1.exists() and p2.name == "01_baseline-seed0-v2.json"
    assert json.loads(p1.read_text())["created"].startswith("2026-01-01")
    loaded = results.load_records(tmp_path)
    assert len(loaded) == 1 and loaded[0]["created"].startswith("2026-01-02")
    assert len(results.load_records(tmp_path, latest_only=False)) == 2
    with pytest.raises(results.RecordError, match="missing key 'metrics'"):
        results.save_record({k: v for k, v in minimal_record().items() if k != "metrics"}, tmp_path)
    with pytest.raises(results.RecordError, match="one value per class"):
        results.save_record(minimal_record(predictions={"names": ["i"], "labels": [0], "logits": [[1.0]]}), tmp_path)
    with pytest.raises(FileNotFoundError, match="run the training notebooks"):
        results.load_records(tmp_path / "empty")


def test_compressed_records_load_like_the_others(tmp_path, benchmark_script):
    """The committed benchmark runs keep their records as .json.gz: load_records and same_records.py read them."""
    import gzip
    import shutil

    plain = results.save_record(minimal_record(), tmp_path / "a")
    results.save_record(minimal_record(seed=1), tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    packed = tmp_path / "b" / "records" / (plain.name + ".gz")
    packed.write_bytes(gzip.compress((tmp_path / "b" / "records" / plain.name).read_bytes()))
    (tmp_path / "b" / "records" / plain.name).unlink()
    loaded = results.load_records(tmp_path / "b")
    assert sorted(r["seed"] for r in loaded) == [0, 1] and any(r["_path"].endswith(".json.gz") for r in loaded)
    same = benchmark_script("same_records")
    assert same.compare_runs(tmp_path / "a", tmp_path / "b", summaries=False) == []
    (tmp_path / "b" / "records" / "x-seed9.json.gz").write_bytes(gzip.compress(b"{not json"))
    with pytest.warns(UserWarning, match="x-seed9.json.gz"):                  # a damaged one is named, skipped
        assert len(results.load_records(tmp_path / "b")) == 2


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(TypeError):
        io.atomic_write_json(tmp_path / "r.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_temp_files_of_killed_writers_are_discarded_and_nothing_else(tmp_path):
    """A writer killed mid-write (SIGKILL: no finally runs) leaves its hidden temp file; once no writer
    of that record runs, discard_orphan_temps removes it and only it."""
    import subprocess
    import sys

    target = io.atomic_write_json(tmp_path / "a[1].json", {"v": 1})  # glob characters in the name
    other = io.atomic_write_json(tmp_path / "b.json", {"v": 2})
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from fsfsl_utils import io\n"
        "die = lambda tmp: (tmp.write_text('half'), os.kill(os.getpid(), signal.SIGKILL))\n"
        "io.atomic_write(sys.argv[1], die)"),
        str(target)], capture_output=True)
    assert killed.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].name.startswith(".a[1].json.")
    assert io.discard_orphan_temps(other) == []
    assert io.discard_orphan_temps(target) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a[1].json", "b.json"]
    assert json.loads(target.read_text()) == {"v": 1}


def test_atomic_write_keeps_the_old_file_hides_its_temp_file_and_follows_the_umask(tmp_path, monkeypatch):
    target = io.atomic_write_json(tmp_path / "r.json", {"v": 1})
    assert target.stat().st_mode & 0o777 == 0o666 & ~io.current_umask()  # as open() would make it, not 0600

    def write_then_fail(tmp):
        tmp.write_text("half")
        assert sorted(p.name for p in tmp_path.glob("*.json")) == ["r.json"]  # readers never see the temp
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.atomic_write(target, write_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"] and json.loads(target.read_text()) == {"v": 1}
    old = os.umask(0o027)  # the umask is read when a file is written, not when the kit was imported
    try:
        assert io.atomic_write(tmp_path / "s.md", lambda tmp: tmp.write_text("x")).stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def crafted_record(step, seed, logits, labels, split_seed=0):
    return {"step": step, "seed": seed, "split_seed": split_seed, "class_names": ["normal", "defective"],
            "train_counts": {"normal": 1, "defective": 1},
            "predictions": {"names": [f"i{k}" for k in range(len(labels))], "labels": list(labels),
                            "logits": np.asarray(logits).tolist()}}


def test_significance_summary_no_evidence_vs_clear_difference():
    from fsfsl_utils import report

    rng = np.random.default_rng(0)
    labels = np.array([0] * 100 + [1] * 100)
    good = np.stack([1 - labels, labels], 1) * 2.0 + rng.normal(0, 0.1, (200, 2))
    noisy = good.copy()
    noisy[100:160] = [[2.0, 0.0]]            # 60 defects missed by B in every seed
    recs = []
    for seed in range(3):
        recs.append(crafted_record("04_balanced_augment", seed, good, labels))
        recs.append(crafted_record("04_balanced_duplicate", seed, good, labels))
        recs.append(crafted_record("04_class_weighted", seed, noisy, labels))
    tests = report.paired_tests(recs, report.CONTROL_COMPARISONS).set_index("B")
    same = tests.loc["04_balanced_duplicate"]
    assert same["accuracy verdict"] == same["defective recall verdict"] == "equivalent within +-2 points"  # alike
    diff = tests.loc["04_class_weighted"].iloc[0]
    assert diff["defective recall effect (pts)"] == 60.0 and diff["accuracy effect (pts)"] == 30.0  # 60 of 200
    assert diff["defective recall verdict"] == "difference shown" and diff["role"] == "secondary"
    table = report.arm_table(recs)
    assert table.loc["04_class_weighted", "defective recall %"].startswith("40.0 (seeds 40.0-40.0; images 30.9-49.8")


def test_primary_comparison_is_judged_against_the_study():
    """04 vs 01 on defect recall is the primary comparison (no Holm); its verdict compares the kit's effect
    with the study's +8.4 points, the study's one-run noise included: an effect of about +8 that
    excludes 0 'matches the study'."""
    from fsfsl_utils import report

    rng = np.random.default_rng(1)
    labels = np.array([0] * 300 + [1] * 300)
    base = np.stack([1 - labels, labels], 1).astype(float)
    recs = []
    for seed in range(4):
        b = base.copy()
        b[300:510] = [[1.0, 0.0]]                 # baseline misses 210 of 300 defects
        a = b.copy()
        a[300 + 25 + seed:300 + 25 + seed + 25] = [[0.0, 1.0]]   # the balanced arm finds 25 more (+8.3 points)
        recs += [crafted_record("01_baseline", seed, b + rng.normal(0, 1e-3, b.shape), labels),
                 crafted_record("04_balanced_augment", seed, a + rng.normal(0, 1e-3, a.shape), labels)]
    row = report.paired_tests(recs, [("04_balanced_augment", "01_baseline")]).iloc[0]
    assert row["role"] == "primary" and row["defective recall study (pts)"] == 8.4
    assert row["defective recall effect (pts)"] == pytest.approx(8.3, abs=0.05)
    assert row["defective recall verdict"] == "matches the study"
    assert row["accuracy effect (pts)"] == pytest.approx(4.2, abs=0.05)   # 25 of 600 images
    assert row["accuracy verdict"] == "matches the study"                  # +4.2 against the study's +3.07
    assert "Primary comparison: 04_balanced_augment vs 01_baseline" in report.verdict_rule()


def test_paired_tests_pair_within_splits():
    from fsfsl_utils import report

    labels = np.array([0, 1] * 20)
    a = np.stack([1 - labels, labels], 1).astype(float)
    recs = [crafted_record("02_flip", 0, a, labels, split_seed=s) for s in (0, 1)]
    recs += [crafted_record("01_baseline", 0, a, labels, split_seed=1)]
    tests = report.paired_tests(recs, [("02_flip", "01_baseline")])
    assert int(tests.iloc[0]["runs"]) == 1     # only split 1 has both arms


def test_threshold_choice_hand_worked():
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.2, 0.3, 0.45, 0.35, 0.4, 0.9])
    logits = np.stack([np.zeros(7), np.log(p1 / (1 - p1))], 1)
    assert metrics.evaluate(labels, logits, ["n", "d"])["per_class"]["d"]["recall"] == pytest.approx(1 / 3)
    m = metrics.evaluate(labels, logits, ["n", "d"], threshold=0.33)
    assert m["per_class"]["d"]["recall"] == 1.0 and m["per_class"]["n"]["recall"] == 0.75
    thr = metrics.threshold_for_recall(labels, logits, 0.75)   # keep 3 of 4 normals: just above 0.3
    assert 0.3 < thr <= 0.35
    m = metrics.evaluate(labels, logits, ["n", "d"], threshold=thr)
    assert m["per_class"]["n"]["recall"] == 0.75 and m["per_class"]["d"]["recall"] == 1.0
    thr = metrics.threshold_for_recall(labels, logits, 1.0)    # every normal: above 0.45, only 0.9 caught
    assert metrics.evaluate(labels, logits, ["n", "d"], threshold=thr)["per_class"]["d"]["recall"] == pytest.approx(
        1 / 3)
    with pytest.raises(ValueError, match="threshold must be a probability"):
        metrics.evaluate(labels, logits, ["n", "d"], threshold=1.5)


def test_recall_at_fixed_recall_matches_brute_force_on_tied_scores():
    """Every threshold is read (roc_curve's drop_intermediate=False): on 300 random cases with many
    tied scores (as bf16 logits give), the reading equals a brute-force search over thresholds."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(8, 60))
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            continue
        score = np.round(rng.normal(labels, 1.0) * 2) / 2    # scores on a coarse grid: ties
        logits = np.stack([np.zeros(n), score], 1)
        fixed = float(rng.uniform(0.5, 1.0))
        got = metrics.recall_at_fixed_recall(labels, logits, fixed)["target_recall"]
        best = 0.0
        for t in np.concatenate([np.unique(score), [np.inf]]):
            pred = score >= t
            if np.mean(~pred[labels == 0]) >= fixed - 1e-12:
                best = max(best, float(np.mean(pred[labels == 1])))
        assert got == pytest.approx(best), (labels, score, fixed)


def _save_many(folder: str, n: int) -> None:
    record = {"schema": 1, "step": "01_baseline", "policy": "none", "seed": 0, "split_seed": 0, "created": "x",
              "profile": "smoke", "mode": "probe", "backbone": "b", "device": "cpu", "config": {}, "versions": {},
              "class_names": ["a", "b"], "train_counts": {}, "val_counts": {}, "wall_seconds": 0.0,
              "metrics": {k: 0 for k in results.METRIC_KEYS}, "predictions": {"names": ["i"], "labels": [0],
                                                                              "logits": [[0.0, 1.0]]}}
    for _ in range(n):
        results.save_record(record, folder)


def test_concurrent_saves_never_overwrite(tmp_path):
    """Two processes saving the same step and seed 200 times each into one folder keep 400 files."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path), 200)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    files = list((tmp_path / "records").glob("*.json"))
    assert len(files) == 400 and not list((tmp_path / "records").glob(".*.tmp"))


def test_damaged_records_are_named_and_skipped(tmp_path):
    _save_many(str(tmp_path), 1)
    (tmp_path / "records" / "02_flip-seed0.json").write_text('{"step": "02_flip", "seed": ')
    (tmp_path / "records" / "03_full_augment-seed0.json").write_text('{"step": "03_full_augment"}')
    with pytest.warns(UserWarning, match="not a readable run record") as caught:
        found = results.load_records(tmp_path)
    skipped = sorted(str(w.message).split(":")[0] for w in caught)
    assert len(skipped) == 2 and skipped[0].endswith("02_flip-seed0.json") and "03_full_augment" in skipped[1]
    assert [r["step"] for r in found] == ["01_baseline"]


def test_records_of_other_data_are_left_out_of_the_study_analysis(tmp_path, capsys):
    from fsfsl_utils import experiment

    _save_many(str(tmp_path), 1)                               # 01_baseline on ELPV
    mine = json.loads(next((tmp_path / "records").glob("*.json")).read_text())
    mine.update(step="02_flip", source="/data/mine", data_origin="/data/mine")
    results.save_record(mine, tmp_path)
    found = experiment.load_records_for_analysis(tmp_path)
    assert [r["step"] for r in found] == ["01_baseline"]
    assert "come from other data" in capsys.readouterr().out


def test_conclusions_of_a_baseline_alone():
    from fsfsl_utils import report

    labels = np.array([0, 1] * 20)
    recs = [crafted_record("01_baseline", 0, np.stack([1 - labels, labels], 1).astype(float), labels)]
    for r in recs:
        r.update(profile="smoke", backbone="b")
    lines = report.conclusions(recs)
    assert lines[0].startswith("Runs: 1 records") and "Baseline: accuracy 100.0%" in lines[1]


def _split_records(labels: np.ndarray, first_defect: int, misses, rng) -> tuple[list[dict], list[float]]:
    """Records of 04 (right on every image) and 01 (missing ``misses(split, seed)`` defective images)
    on 3 splits x 2 seeds, and the mean difference per split of 04's score over 01's."""
    recs, per_split = [], []
    defects = len(labels) - first_defect
    for split in range(3):
        diffs = []
        for seed in range(2):
            good = np.stack([1 - labels, labels], 1).astype(float)
            worse = good.copy()
            worse[rng.choice(np.arange(first_defect, len(labels)), misses(split, seed), replace=False)] = [[1.0, 0.0]]
            recs += [crafted_record("04_balanced_augment", seed, good, labels, split_seed=split),
                     crafted_record("01_baseline", seed, worse, labels, split_seed=split)]
            diffs.append(misses(split, seed) / defects)
        per_split.append(float(np.mean(diffs)))
    return recs, per_split


def test_several_splits_use_the_corrected_resampled_t():
    """With records on several splits, the effect is the Nadeau-Bengio corrected t over the splits'
    mean differences (stats.corrected_resampled_t), not a pooled interval."""
    from fsfsl_utils import report, stats

    labels = np.array([0] * 50 + [1] * 50)
    recs, per_split = _split_records(labels, 50, lambda split, seed: 5 + split, np.random.default_rng(3))
    per_split = [d * 50 / 100 for d in per_split]                      # accuracy: over all 100 images
    effect = report.paired_effects(recs, "04_balanced_augment", "01_baseline", "accuracy")
    expected = stats.corrected_resampled_t(per_split, n_train=2, n_test=100)   # train_counts in crafted records
    assert effect["splits"] == 3 and effect["seeds"] == 6
    assert effect["estimate"] == pytest.approx(expected["estimate"]) and effect["low"] == pytest.approx(expected["low"])


def test_several_splits_judge_a_recall_with_the_whole_validation_set():
    """Nadeau-Bengio's n_test is the split's whole validation set also for a recall (it was the target
    class's count: standard errors 25-35% too small)."""
    from fsfsl_utils import report, stats

    labels = np.array([0] * 70 + [1] * 30)
    recs, per_split = _split_records(labels, 70, lambda split, seed: 3 + split + seed, np.random.default_rng(5))
    effect = report.paired_effects(recs, "04_balanced_augment", "01_baseline", "recall")
    expected = stats.corrected_resampled_t(per_split, n_train=2, n_test=100)
    assert effect["estimate"] == pytest.approx(expected["estimate"])
    assert effect["high"] == pytest.approx(expected["high"])
    narrow = stats.corrected_resampled_t(per_split, n_train=2, n_test=30)
    assert effect["high"] - effect["low"] > narrow["high"] - narrow["low"]
