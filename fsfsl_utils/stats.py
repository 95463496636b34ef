"""Statistics for comparing two arms of the study: paired effects with intervals, verdicts, corrections.

An arm is trained with several seeds and evaluated on the same validation images, so a
difference between two arms varies for two reasons: training randomness (another seed gives
another model) and the finite validation set (other images of the same kind would give other
numbers). :func:`paired_effect` puts both into one interval:

    estimate  = mean over seeds s and images i of (correct_A[s, i] - correct_B[s, i])
    variance  = var_s(seed means) / k  +  var_i(image means) / n
    interval  = estimate +- t(k - 1) * sqrt(variance)      (z when k = 1: images only)

With one seed the interval holds the image part alone (training randomness unmeasured). With
several splits, :func:`corrected_resampled_t` (Nadeau and Bengio 2003) tests the per-split
differences, correcting for the overlap of the training sets.

The rule that turns an interval into a verdict on a study's published effect is
:data:`VERDICT_RULE`; ``tests/test_stats.py`` measures its false-positive rate on simulated
paired predictions with no true difference (image difficulty and seed noise both present).
Holm's correction (statsmodels) adjusts the secondary comparisons' p-values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
VERDICT_RULE = (
    "Effect = A minus B in points, averaged over seeds; 95% interval = t over seeds on the seed variance "
    "plus the validation-image variance (both sources of error). Verdict on the study's published effect: "
    "'consistent with the study' when it lies inside the interval and the interval excludes 0; "
    "'rules out the study's effect' when it lies outside the interval; 'inconclusive' when the interval "
    "holds both the study's effect and 0. A difference is 'shown' when the interval excludes 0 "
    "(secondary comparisons: Holm-adjusted p < 0.05).")
SEED_RULE_NOTE = "seed spread = training randomness alone; image interval = finite validation set alone"


def paired_effect(correct_a: np.ndarray, correct_b: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Mean difference of two arms' per-image correctness (``k seeds x n images`` each, paired by seed
    and image), with an interval that holds both seed and image variance.

    Returns ``estimate``, ``low``, ``high`` (fractions), ``p_value`` (two-sided, same t), ``seeds``,
    ``images``, ``seed_sd`` (sd of the per-seed differences), ``image_se`` (standard error from the
    images alone) and ``df``.
    """
    a = np.atleast_2d(np.asarray(correct_a, float))
    b = np.atleast_2d(np.asarray(correct_b, float))
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds x images, got {a.shape} and {b.shape}")
    k, n = a.shape
    if n < 2:
        raise ValueError(f"a paired effect needs at least 2 images, got {n}")
    diff = a - b
    seed_means, image_means = diff.mean(1), diff.mean(0)
    estimate = float(diff.mean())
    image_var = float(image_means.var(ddof=1)) / n
    seed_var = float(seed_means.var(ddof=1)) / k if k > 1 else 0.0
    se = float(np.sqrt(image_var + seed_var))
    df = k - 1 if k > 1 else np.inf
    q = float(sps.t.ppf(0.5 + confidence / 2, df))
    if se == 0:
        p = 1.0 if estimate == 0 else 0.0
    else:
        p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return {"estimate": estimate, "low": estimate - q * se, "high": estimate + q * se, "p_value": p,
            "seeds": int(k), "images": int(n), "seed_sd": float(seed_means.std(ddof=1)) if k > 1 else None,
            "image_se": float(np.sqrt(image_var)), "df": float(df)}


def verdict(effect: dict, study_effect: float | None) -> str:
    """:data:`VERDICT_RULE` applied to one interval (fractions) and the study's published effect."""
    if study_effect is None:
        return "shown" if not effect["low"] <= 0 <= effect["high"] else "no difference shown"
    inside = effect["low"] <= study_effect <= effect["high"]
    if not inside:
        return "rules out the study's effect"
    return "consistent with the study" if not effect["low"] <= 0 <= effect["high"] else "inconclusive"


def holm(p_values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels ``multipletests``), in the order given."""
    p = np.asarray(p_values, float)
    if len(p) == 0:
        return p
    return multipletests(p, alpha=alpha, method="holm")[1]


def corrected_resampled_t(differences: Sequence[float], n_train: int, n_test: int,
                          confidence: float = CONFIDENCE) -> dict:
    """Nadeau-Bengio corrected resampled t-test over ``J`` splits' differences: the variance is
    inflated by ``1/J + n_test/n_train`` because the splits' training sets overlap."""
    d = np.asarray(differences, float)
    J = len(d)
    if J < 2:
        raise ValueError(f"the corrected resampled t-test needs at least 2 splits, got {J}")
    se = float(np.sqrt((1 / J + n_test / n_train) * d.var(ddof=1)))
    q = float(sps.t.ppf(0.5 + confidence / 2, J - 1))
    m = float(d.mean())
    p = 1.0 if se == 0 and m == 0 else (0.0 if se == 0 else float(2 * sps.t.sf(abs(m) / se, J - 1)))
    return {"estimate": m, "low": m - q * se, "high": m + q * se, "p_value": p, "splits": J}

