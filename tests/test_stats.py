"""Statistics: the paired interval's error rate on simulated data, the verdict rule, Holm, Nadeau-Bengio."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from fsfsl_utils import stats


def simulate(rng: np.random.Generator, n: int, k: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two arms (k seeds each) on the same n images: image difficulty shared by
    both arms, a per-seed shift (training randomness of the whole model) and seed x image noise;
    arm B is easier by ``shift`` (logit units)."""
    easiness = rng.normal(1.6, 1.5, n)

    def arm(delta: float) -> np.ndarray:
        return (easiness + rng.normal(0, 0.3, (k, 1)) + rng.normal(0, 0.6, (k, n)) + delta) > 0

    return arm(0.0), arm(shift)


def test_paired_interval_false_positive_rate_and_power():
    """No true difference: the interval excludes 0 in at most 5% of 600 simulated studies (binomial
    tolerance: 5% + 2 standard errors; 2.5% measured). A true difference of about 8 points is found in
    62% of them (power, 5 seeds)."""
    rng = np.random.default_rng(0)
    reps, n, k = 600, 357, 5          # 357 defective validation images, 5 seeds: the defect-recall comparison
    effects = (stats.paired_effect(*simulate(rng, n, k)) for _ in range(reps))
    false = sum(not (e["low"] <= 0 <= e["high"]) for e in effects)
    rate = false / reps
    assert rate <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / reps), rate
    shift = 0.65                      # logit shift giving about 8 points on these images
    effects = [stats.paired_effect(*simulate(rng, n, k, shift)) for _ in range(200)]
    size = -np.mean([e["estimate"] for e in effects])
    power = np.mean([e["high"] < 0 for e in effects])
    print(f"false-positive rate {rate:.3f} ({reps} studies); true effect {100 * size:.1f} points: power {power:.2f}")
    assert 0.06 <= size <= 0.10 and power >= 0.5   # 0.62 measured: 5 seeds give t with 4 degrees of freedom


def test_paired_effect_by_hand():
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]])
    b = np.array([[1, 0, 0, 0], [0, 0, 0, 1]])
    e = stats.paired_effect(a, b)
    diff = a - b
    se = np.sqrt(diff.mean(1).var(ddof=1) / 2 + diff.mean(0).var(ddof=1) / 4)
    assert e["estimate"] == pytest.approx(0.375)
    assert e["high"] - e["estimate"] == pytest.approx(sps.t.ppf(0.975, 1) * se)
    one = stats.paired_effect(a[:1], b[:1])            # one seed: the images alone, normal quantile
    assert one["df"] == np.inf and one["seed_sd"] is None
    assert one["high"] - one["estimate"] == pytest.approx(1.959964 * np.sqrt((a[0] - b[0]).var(ddof=1) / 4))
    with pytest.raises(ValueError, match="same seeds x images"):
        stats.paired_effect(a, b[:, :3])


def test_verdict_rule():
    e = {"low": 0.02, "high": 0.12}
    assert stats.verdict(e, 0.084) == "consistent with the study"
    assert stats.verdict(e, 0.15) == "rules out the study's effect"
    assert stats.verdict({"low": -0.02, "high": 0.10}, 0.084) == "inconclusive"
    assert stats.verdict({"low": -0.03, "high": -0.01}, 0.084) == "rules out the study's effect"
    assert stats.verdict({"low": -0.03, "high": 0.01}, None) == "no difference shown"


def test_holm_and_corrected_t_by_hand():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    d = [0.02, 0.03, 0.01]
    r = stats.corrected_resampled_t(d, n_train=1112, n_test=1111)
    se = np.sqrt((1 / 3 + 1111 / 1112) * np.var(d, ddof=1))
    assert r["estimate"] == pytest.approx(0.02)
    assert r["p_value"] == pytest.approx(2 * sps.t.sf(0.02 / se, 2))
    with pytest.raises(ValueError, match="at least 2 splits"):
        stats.corrected_resampled_t([0.1], 10, 10)
