"""Statistics: the paired interval against an ANOVA table, calibration on a simulator fitted to the
committed records (both sides: false positives and coverage; and the study's own noise), the verdict
words, equivalence, Holm, Nadeau-Bengio, power."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from fsfsl_utils import results, stats


def test_variance_components_match_statsmodels_anova():
    """MS_seed, MS_image, MS_error equal statsmodels' two-way ANOVA table of the same differences, and
    the variance of the mean is (MS_seed + MS_image - MS_error) / (k n) with Satterthwaite's df."""
    import statsmodels.api as sm
    from statsmodels.formula.api import ols

    rng = np.random.default_rng(0)
    k, n = 4, 30
    diff = (rng.random((k, n)) < 0.3).astype(float) - (rng.random((k, n)) < 0.25) + rng.normal(0, 0.3, (k, 1))
    comp = stats.variance_components(diff)
    frame = pd.DataFrame({"d": diff.ravel(), "seed": np.repeat(range(k), n), "image": np.tile(range(n), k)})
    table = sm.stats.anova_lm(ols("d ~ C(seed) + C(image)", frame).fit())
    ms = table["sum_sq"] / table["df"]
    assert comp["ms_seed"] == pytest.approx(ms["C(seed)"]) and comp["ms_image"] == pytest.approx(ms["C(image)"])
    assert comp["ms_error"] == pytest.approx(ms["Residual"])
    assert comp["var"] == pytest.approx((ms["C(seed)"] + ms["C(image)"] - ms["Residual"]) / (k * n))
    terms = [(ms["C(seed)"] / (k * n), k - 1), (ms["C(image)"] / (k * n), n - 1),
             (-ms["Residual"] / (k * n), (k - 1) * (n - 1))]
    assert comp["df"] == pytest.approx(sum(v for v, _ in terms) ** 2 / sum(v * v / d for v, d in terms))


def test_identical_seeds_get_the_images_interval_alone():
    """A frozen arm (five seeds, one model) gets the same interval as one seed: not a 42% wider one."""
    rng = np.random.default_rng(1)
    a, b = rng.random(200) < 0.8, rng.random(200) < 0.7
    one = stats.paired_effect(a[None], b[None])
    five = stats.paired_effect(np.tile(a, (5, 1)), np.tile(b, (5, 1)))
    assert five["high"] - five["low"] == pytest.approx(one["high"] - one["low"])
    assert one["df"] == 199
    with pytest.raises(ValueError, match="same seeds x images"):
        stats.paired_effect(a[None], b[None, :3])


def test_clustered_images_widen_the_interval():
    """Images in groups that share their difficulty: the cluster-robust image part (a delete-one-group
    jackknife) is larger than the independent one, and equals it when every image is its own group."""
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(20), 10)
    shift = rng.normal(0, 0.3, 20)[groups]
    diff = (rng.random((3, 200)) < 0.5 + shift).astype(float) - (rng.random((3, 200)) < 0.5)
    alone = stats.variance_components(diff)
    grouped = stats.variance_components(diff, groups)
    assert grouped["design_effect"] > 1.5 and grouped["var"] > alone["var"] and grouped["clusters"] == 20
    own = stats.variance_components(diff, np.arange(200))
    assert own["image_part"] == pytest.approx(alone["image_part"], rel=0.02)


def test_calibration_on_a_simulator_fitted_to_the_committed_records(benchmark_script):
    """On 2,000 simulated studies per scenario of a latent model fitted to the paper run's primary
    comparison (module, image, arm-by-image, seed terms): with no true difference the interval
    excludes 0 in 3-7% and covers the truth in 93-97%; when the truth equals the study's +8.4 and the
    study is simulated as it ran (one training per arm, 357 new images), the kit says 'differs from the
    study' in 3-7% and covers the truth in 93-97%; a frozen arm pair (one model per arm) is calibrated
    too. The fit reproduces the records' statistics it matches."""
    cal = benchmark_script("calibration")
    records = results.load_records(cal.DEFAULT_RECORDS)
    model = cal.fit(*cal.correctness(records, "04_balanced_augment", "01_baseline"))
    for key in ("design_b", "agreement", "ms_image", "ms_error"):
        assert model["fitted"][key] == pytest.approx(model["target"][key], rel=0.2), key
    assert model["fitted"]["ms_seed"] == pytest.approx(model["target"]["ms_seed"], rel=0.35)
    null, study, frozen = (cal.scenario(model, kind, 2000, seed=i) for i, kind in enumerate(("null", "study",
                                                                                             "frozen")))
    print(null, study, frozen, sep="\n")
    for result in (null, frozen):
        assert 0.03 <= result["interval_excludes_0"] <= 0.07, result
        assert 0.93 <= result["coverage"] <= 0.97, result
    assert 0.03 <= study["differs_from_study"] <= 0.07, study
    assert 0.93 <= study["coverage"] <= 0.97, study


def test_the_old_rule_was_wrong_where_the_truth_equals_the_study(benchmark_script):
    """Treating the study's number as exact ('rules out' when it lies outside the kit's interval) says
    the effects differ far more often than 5% when they do not: the reason for versus_study."""
    cal = benchmark_script("calibration")
    records = results.load_records(cal.DEFAULT_RECORDS)
    model = cal.fit(*cal.correctness(records, "04_balanced_augment", "01_baseline"))
    rng = np.random.default_rng(9)
    mods = np.asarray(model["modules"])
    mu_a = cal.mu_for(model, cal.rate_of(model, model["mu_b"]) + 0.084)
    outside = 0
    for _ in range(400):
        a, b = cal.simulate_arms(model, rng, mu_a, model["mu_b"], 5, mods)
        sa, sb = cal.simulate_arms(model, rng, mu_a, model["mu_b"], 1, mods)
        effect = stats.paired_effect(a, b, mods)
        outside += not effect["low"] <= sa.mean() - sb.mean() <= effect["high"]
    assert outside / 400 > 0.15


def test_verdict_words_have_a_direction():
    effect = {"estimate": 0.04, "low": -0.01, "high": 0.09, "se": 0.025, "df": 6, "p_value": 0.11}
    assert stats.verdict(effect, 0.084, p_study=0.41) == "cannot tell"
    assert stats.verdict({**effect, "p_value": 0.01}, 0.084, p_study=0.4) == "matches the study"
    assert stats.verdict(effect, 0.15, p_study=0.01) == "smaller than the study's"
    assert stats.verdict({**effect, "estimate": 0.2}, 0.084, p_study=0.01) == "larger than the study's"
    assert stats.verdict(effect, -0.004, p_study=0.5, study_equivalent=True) == "matches the study"
    assert stats.verdict({**effect, "p_value": 0.001}, None) == "difference shown"
    tight = {"estimate": 0.001, "low": -0.007, "high": 0.009, "se": 0.004, "df": 40, "p_value": 0.8}
    assert stats.verdict(tight, None) == "equivalent within +-2 points"
    assert stats.verdict(effect, None) == ("no difference shown (the data exclude effects below -1.0 or above "
                                           "+9.0 points)")


def test_equivalence_is_two_one_sided_tests():
    assert stats.equivalence(0.0, 0.005, 50) < 0.001            # well inside +-2 points
    assert stats.equivalence(0.0, 0.02, 50) > 0.05              # too wide to claim it
    p = stats.equivalence(0.01, 0.005, 50)
    assert p == pytest.approx(sps.t.cdf((0.01 - 0.02) / 0.005, 50))


def test_versus_study_adds_the_studys_one_run_noise():
    rng = np.random.default_rng(4)
    a = (rng.random((5, 357)) < 0.76) & (rng.random((5, 1)) < 2)
    b = rng.random((5, 357)) < 0.72
    effect = stats.paired_effect(a, b)
    versus = stats.versus_study(effect, 0.084, 357)
    assert versus["se"] > effect["se"] and versus["study_se"] > 0
    assert versus["difference"] == pytest.approx(effect["estimate"] - 0.084)
    one_run, _ = stats.study_run_variance(effect["components"], 357)
    assert one_run == pytest.approx(versus["study_se"] ** 2)


def test_holm_and_corrected_t_by_hand():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    d = [0.02, 0.03, 0.01]
    r = stats.corrected_resampled_t(d, n_train=1112, n_test=1111)
    se = np.sqrt((1 / 3 + 1111 / 1112) * np.var(d, ddof=1))
    assert r["estimate"] == pytest.approx(0.02)
    assert r["p_value"] == pytest.approx(2 * sps.t.sf(0.02 / se, 2))
    with pytest.raises(ValueError, match="at least 2 splits"):
        stats.corrected_resampled_t([0.1], 10, 10)


def test_power_and_seeds_needed_from_measured_components():
    """More seeds shrink the seed part only: power grows with seeds toward the images' limit."""
    comp = {"seed_var": 0.0018, "ms_error": 0.08, "within_var": 0.084, "design_effect": 2.2, "effective_clusters": 20}
    powers = [stats.power(0.084, comp, k, 357) for k in (1, 5, 20)]
    assert powers[0] < powers[1] < powers[2] <= 1
    need = stats.seeds_needed(0.04, comp, 357)
    assert need is not None and stats.power(0.04, comp, need, 357) >= 0.8 > stats.power(0.04, comp, need - 1, 357)
    assert stats.seeds_needed(0.005, comp, 357) is None              # the images alone are too few
