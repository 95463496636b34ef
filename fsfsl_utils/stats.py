"""Statistics for comparing two arms of the study: paired effects with intervals, verdicts, corrections.

An arm is trained with several seeds and evaluated on the same validation images, so a difference
between two arms varies for two reasons: training randomness (another seed gives another model)
and the finite validation set (other images of the same kind would give other numbers). The
per-image differences ``d[s, i]`` (seed s, image i) follow a two-way random-effects model,
``d = effect + seed_s + image_i + noise_si``, and the variance of their mean is estimated without
bias from the two-way ANOVA mean squares (:func:`variance_components`):

    V = (MS_seed + MS_image - MS_error) / (k n)          df: Satterthwaite

which counts the seed-by-image interaction once. An arm whose seeds give the same model (a frozen
probe) has MS_seed = MS_error = 0 and gets the images' interval alone. Images that come in groups
(cells of one solar module share their difficulty) get a cluster-robust image part instead of
MS_image / (k n), with G - 1 degrees of freedom for G groups.

A study's published effect is one training run per arm on one split: it is a noisy number too.
:func:`versus_study` tests *kit effect minus study effect* with the study's one-run variance added
(the seed variance of one run plus the image variance of a validation set of the study's size,
both estimated from the kit's own runs). :data:`VERDICT_RULE` turns that into words with a
direction. :func:`equivalence` is the two one-sided tests (TOST) at a stated margin, used before
any wording that claims equality. With several splits, :func:`corrected_resampled_t` (Nadeau and
Bengio 2003) tests the per-split differences. Holm's correction (statsmodels) adjusts the secondary
comparisons' p-values. ``tests/test_stats.py`` measures the false-positive rate, the coverage and
the rate of "differs from the study" when the truth equals the study, on a simulator fitted to the
committed records.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
ALPHA = 0.05
EQUIVALENCE_MARGIN = 0.02  # two points: "no more than 2 points apart" before any wording of equality
VERDICT_RULE = (
    "Effect = A minus B in points, on per-image correctness averaged over seeds; 95% interval from the two-way "
    "variance components (seeds and validation images, cells of one module counted as one cluster), Satterthwaite "
    "degrees of freedom. Against the study's published effect, itself one noisy run: p tests kit effect minus "
    "study effect with the study's one-run variance added (the seed variance of one run and the image variance of a "
    "validation set of the study's size, estimated from the kit's runs), Holm-adjusted over the comparisons that "
    "have a study effect (the primary as is). 'larger than the study's' / 'smaller than the study's': that p < 0.05; "
    "else 'matches the study' when the kit's interval excludes 0 (or both effects lie within +-2 points of 0 by two "
    "one-sided tests), else 'cannot tell'. Without a study effect: 'difference shown' (Holm p < 0.05), 'equivalent "
    "within +-2 points' (two one-sided tests), else 'no difference shown' with the effects the data exclude.")


def satterthwaite(terms: Sequence[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of ``(value, df)`` variance terms (Welch-Satterthwaite); ``inf``
    when every term has infinite df or the sum is 0."""
    total = sum(v for v, _ in terms)
    denominator = sum(v * v / d for v, d in terms if np.isfinite(d) and d > 0)
    if total <= 0 or denominator <= 0:
        return float("inf")
    return float(total * total / denominator)


def variance_components(diff: np.ndarray, groups: Sequence | None = None) -> dict:
    """Two-way (seeds x images) ANOVA of per-image differences ``diff`` (``k x n``): mean squares, the
    unbiased variance of the grand mean and its Satterthwaite df.

    ``groups``: one label per image (cells of one module); the image part of the variance is then
    cluster-robust (CR1 over the groups' summed image means, ``G - 1`` df) instead of
    ``MS_image / (k n)``. Returns ``var`` (of the mean), ``df``, ``ms_seed``, ``ms_image``,
    ``ms_error``, ``seed_var`` (variance between seeds of one run's effect), ``within_var``
    (variance over images of one run's per-image differences), ``design_effect`` (cluster-robust /
    independent image variance) and ``clusters``."""
    d = np.atleast_2d(np.asarray(diff, float))
    k, n = d.shape
    if n < 2:
        raise ValueError(f"a paired effect needs at least 2 images, got {n}")
    grand = d.mean()
    seed_means, image_means = d.mean(1), d.mean(0)
    ms_image = k * image_means.var(ddof=1)
    if k > 1:
        ms_seed = n * seed_means.var(ddof=1)
        resid = d - seed_means[:, None] - image_means[None, :] + grand
        ms_error = float((resid ** 2).sum() / ((k - 1) * (n - 1)))
    else:
        ms_seed = ms_error = 0.0
    iid_image = ms_image / (k * n)
    if groups is not None:
        labels = np.asarray(groups)
        if len(labels) != n:
            raise ValueError(f"groups need one label per image: {len(labels)} for {n} images")
        _, index = np.unique(labels, return_inverse=True)
        totals, sizes = np.bincount(index, weights=image_means), np.bincount(index)
        g = len(totals)
        if g > 1:  # delete-one-cluster jackknife of the mean of the image means (CR3): unequal clusters too
            left_out = (totals.sum() - totals) / np.maximum(n - sizes, 1)
            image_part = float((g - 1) / g * ((left_out - left_out.mean()) ** 2).sum())
            spread = (totals - sizes * image_means.mean()) ** 2  # each cluster's share of that variance
            effective = float(spread.sum() ** 2 / (spread ** 2).sum()) if spread.sum() > 0 else g - 1
        else:
            image_part, effective = iid_image, n - 1
        image_df = g - 1 if g > 1 else n - 1
    else:
        g, image_part, image_df, effective = n, iid_image, n - 1, n - 1
    seed_part = (ms_seed - ms_error) / (k * n)
    if k > 1 and seed_part > 0:
        var = seed_part + image_part
        df = satterthwaite([(ms_seed / (k * n), k - 1), (image_part, image_df),
                            (-ms_error / (k * n), (k - 1) * (n - 1))])
    else:  # identical seeds (a frozen arm), one seed, or seed noise below the residual: the images alone
        var, df = image_part, float(image_df)
    design = image_part / iid_image if iid_image > 0 else 1.0
    return {"var": float(var), "df": float(df), "seed_part": float(var - image_part), "image_part": float(image_part),
            "ms_seed": float(ms_seed), "ms_image": float(ms_image),
            "ms_error": ms_error, "seed_var": max(0.0, (ms_seed - ms_error) / n), "seed_df": float(max(k - 1, 0)),
            "within_var": float((ms_image + (k - 1) * ms_error) / k), "design_effect": float(design),
            "clusters": int(g), "effective_clusters": float(min(max(effective, 1.0), image_df)), "grand": float(grand)}


def paired_effect(correct_a: np.ndarray, correct_b: np.ndarray, groups: Sequence | None = None,
                  confidence: float = CONFIDENCE) -> dict:
    """Mean difference of two arms' per-image correctness (``k seeds x n images`` each, paired by seed
    and image), with the interval of :func:`variance_components` (``groups``: cluster labels of the
    images).

    Returns ``estimate``, ``low``, ``high`` (fractions), ``p_value`` (two-sided, against 0), ``se``,
    ``df``, ``seeds``, ``images`` and the ``components``.
    """
    a = np.atleast_2d(np.asarray(correct_a, float))
    b = np.atleast_2d(np.asarray(correct_b, float))
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds x images, got {a.shape} and {b.shape}")
    comp = variance_components(a - b, groups)
    estimate, se, df = comp["grand"], float(np.sqrt(comp["var"])), comp["df"]
    q = float(sps.t.ppf(0.5 + confidence / 2, df))
    p = (1.0 if estimate == 0 else 0.0) if se == 0 else float(2 * sps.t.sf(abs(estimate) / se, df))
    return {"estimate": estimate, "low": estimate - q * se, "high": estimate + q * se, "p_value": p, "se": se,
            "df": df, "seeds": int(a.shape[0]), "images": int(a.shape[1]), "components": comp}


def study_run_variance(components: dict, study_images: int) -> tuple[float, float]:
    """Variance of a *single* training run's effect on ``study_images`` validation images (the study's
    setup), estimated from the kit's variance components: the seed variance of one run plus the
    within-run image variance at the study's size (times the design effect of grouped images).
    Returns ``(variance, df)``."""
    seed = components["seed_var"]
    images = components["design_effect"] * components["within_var"] / study_images
    # the design effect rests on a few large clusters when the clusters are unequal: their effective number
    df = satterthwaite([(seed, components["seed_df"]), (images, components["effective_clusters"])])
    return float(seed + images), df


def versus_study(effect: dict, study_effect: float, study_images: int) -> dict:
    """Test of *kit effect minus study effect* = 0 with the study's one-run noise added to the kit's:
    ``difference`` (fraction), ``se``, ``df``, ``p_value`` (two-sided, unadjusted) and the study's
    one-run ``study_se``. The kit's and the study's seed parts rest on one estimate (the kit's seeds),
    and so do their image parts: each pair enters the degrees of freedom as one term (seeds: k - 1;
    images: the effective number of clusters)."""
    comp = effect["components"]
    study_var, _ = study_run_variance(comp, study_images)
    study_images_var = study_var - comp["seed_var"]
    kit_var = effect["se"] ** 2
    total = kit_var + study_var
    seed_total = comp["seed_part"] + comp["seed_var"]
    df = satterthwaite([(seed_total, comp["seed_df"]), (total - seed_total, comp["effective_clusters"])]) \
        if "seed_part" in comp and study_images_var >= 0 else effect["df"]
    diff = effect["estimate"] - study_effect
    se = float(np.sqrt(total))
    p = (1.0 if diff == 0 else 0.0) if se == 0 else float(2 * sps.t.sf(abs(diff) / se, df))
    return {"difference": float(diff), "se": se, "df": float(df), "p_value": p, "study_se": float(np.sqrt(study_var))}


def equivalence(estimate: float, se: float, df: float, margin: float = EQUIVALENCE_MARGIN) -> float:
    """p of the two one-sided tests (TOST) that the true effect lies within ``+-margin``: equivalence is
    shown when it is below 0.05 (the 90% interval lies inside the margin)."""
    if se == 0:
        return 0.0 if abs(estimate) < margin else 1.0
    lower = sps.t.sf((estimate + margin) / se, df)     # H0: effect <= -margin
    upper = sps.t.cdf((estimate - margin) / se, df)    # H0: effect >= +margin
    return float(max(lower, upper))


def verdict(effect: dict, study_effect: float | None, p_study: float | None = None, p_zero: float | None = None,
            study_equivalent: bool = False, alpha: float = ALPHA) -> str:
    """:data:`VERDICT_RULE` in words. ``p_study``: the (adjusted) p of :func:`versus_study`; ``p_zero``:
    the (adjusted) p against 0 (default: the effect's own); ``study_equivalent``: the study's effect
    and the kit's both lie within the equivalence margin of 0."""
    p_zero = effect["p_value"] if p_zero is None else p_zero
    if study_effect is None:
        if p_zero < alpha:
            return "difference shown"
        if equivalence(effect["estimate"], effect["se"], effect["df"]) < alpha:
            return f"equivalent within +-{100 * EQUIVALENCE_MARGIN:.0f} points"
        held = " after Holm's adjustment" if not effect["low"] <= 0 <= effect["high"] else ""
        return (f"no difference shown{held} (the data exclude effects below {100 * effect['low']:+.1f} or above "
                f"{100 * effect['high']:+.1f} points)")
    if p_study is not None and p_study < alpha:
        return "larger than the study's" if effect["estimate"] > study_effect else "smaller than the study's"
    if p_zero < alpha or study_equivalent:
        return "matches the study"
    return "cannot tell"


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels ``multipletests``), in the order given."""
    p = np.asarray(p_values, float)
    if len(p) == 0:
        return p
    return multipletests(p, alpha=alpha, method="holm")[1]


def power(effect: float, components: dict, seeds: int, images: int, extra_var: float = 0.0,
          alpha: float = ALPHA) -> float:
    """Chance that a paired comparison with ``seeds`` seeds on ``images`` images shows a true ``effect``
    (two-sided, level ``alpha``), from measured variance components (``extra_var``: a variance added,
    e.g. the study's one run when telling an effect from the study's): a t approximation (shifted
    central t, Satterthwaite df) with the seed part shrinking as 1/seeds and the image part as measured."""
    n = images
    seed_var = components["seed_var"] / seeds
    error_var = components["ms_error"]
    image_var = components["design_effect"] * max(components["within_var"] - error_var, 0.0) / n \
        + error_var / (seeds * n)
    var = seed_var + image_var + extra_var
    if var <= 0:
        return 1.0 if effect else alpha
    df = satterthwaite([(seed_var, max(seeds - 1, 1)), (image_var + extra_var, components["effective_clusters"])])
    q = sps.t.ppf(1 - alpha / 2, df)
    shift = abs(effect) / np.sqrt(var)
    return float(sps.t.sf(q - shift, df) + sps.t.cdf(-q - shift, df))


def seeds_needed(effect: float, components: dict, images: int, target: float = 0.8, extra_var: float = 0.0,
                 most: int = 200) -> int | None:
    """The fewest seeds (up to ``most``) whose comparison shows ``effect`` with at least ``target``
    power (:func:`power`); None when no number of seeds does (the image part alone is too wide)."""
    for k in range(1, most + 1):
        if power(effect, components, k, images, extra_var) >= target:
            return k
    return None


def corrected_resampled_t(differences: Sequence[float], n_train: int, n_test: int,
                          confidence: float = CONFIDENCE) -> dict:
    """Nadeau-Bengio corrected resampled t-test over ``J`` splits' differences: the variance is
    inflated by ``1/J + n_test/n_train`` because the splits' training sets overlap (``n_test``: the
    split's whole validation set, also for a recall)."""
    d = np.asarray(differences, float)
    J = len(d)
    if J < 2:
        raise ValueError(f"the corrected resampled t-test needs at least 2 splits, got {J}")
    se = float(np.sqrt((1 / J + n_test / n_train) * d.var(ddof=1)))
    q = float(sps.t.ppf(0.5 + confidence / 2, J - 1))
    m = float(d.mean())
    p = 1.0 if se == 0 and m == 0 else (0.0 if se == 0 else float(2 * sps.t.sf(abs(m) / se, J - 1)))
    return {"estimate": m, "low": m - q * se, "high": m + q * se, "p_value": p, "splits": J, "se": se,
            "df": float(J - 1)}
