"""Calibration of the verdict statistics on a simulator fitted to committed run records.

    python benchmarks/calibration.py [RECORDS_DIR] [--studies 2000] [--out calibration.json]

The simulator is a latent-variable (probit) model of per-image correctness, fitted by the method of
moments to one comparison of real records (default: the primary, 04 balanced vs 01 baseline on
defect recall, of ``benchmarks/paper-run-2026-11-28``):

    correct[arm, seed, image] = 1[ mu_arm + module + image + arm_x_image + seed_shift + noise > 0 ]

with the module and image terms shared by the arms (difficulty), an arm-by-image term (the arms err
on partly different images), a seed shift per training (the whole model is better or worse) and a
seed-by-image noise of variance 1. Each term's share of the latent variance is read off the
tetrachoric correlation of a pair type in the records (two seeds of one arm on one image; two arms
on one image; one seed on two images of one module; one seed on images of two modules).

Scenarios, each over ``--studies`` simulated studies of the real design (5 seeds per arm, the real
validation images and their modules): *null* (the arms are alike: how often the interval excludes 0,
and how often it covers the truth), *truth = study* (the kit's arms differ by the study's effect and
the study is simulated as it was run, one training per arm on 357 new images: how often the kit
says "larger / smaller than the study's"), and a *frozen* null (every seed gives the same model, as
the frozen probe does). ``tests/test_stats.py`` asserts the rates within [3%, 7%] and the coverage
within [93%, 97%].
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import optimize
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsfsl_utils import report, results  # noqa: E402
from fsfsl_utils import stats as kit_stats  # noqa: E402

DEFAULT_RECORDS = ROOT / "benchmarks" / "paper-run-2026-11-28"


def correctness(records: list[dict], a: str, b: str, key: str = "recall") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image correctness of arms ``a`` and ``b`` (seeds x images, paired by seed) and the images'
    module labels, as 05 computes them."""
    steps = report.by_step(records)
    other = {r["seed"]: r for r in steps[b]}
    ca, cb = [], []
    for ra in steps[a]:
        labels, la = report.judged_arrays(ra)
        _, lb = report.judged_arrays(other[ra["seed"]])
        keep = labels == ra["class_names"].index(report.target_class(ra)) if key == "recall" else np.ones(len(labels),
                                                                                                          bool)
        ca.append(la.argmax(1)[keep] == labels[keep])
        cb.append(lb.argmax(1)[keep] == labels[keep])
    modules = np.asarray(report.image_groups(steps[a][0]))[keep]
    return np.array(ca), np.array(cb), modules


def _unused_tetrachoric(p_both: float, p1: float, p2: float) -> float:
    """The latent correlation of two probit indicators with marginals ``p1``, ``p2`` and joint ``p_both``."""
    h1, h2 = sps.norm.ppf(p1), sps.norm.ppf(p2)

    def gap(rho: float) -> float:
        return sps.multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([h1, h2]) - p_both

    lo, hi = -0.99, 0.999
    if gap(lo) > 0:
        return lo
    if gap(hi) < 0:
        return hi
    return float(optimize.brentq(gap, lo, hi, xtol=1e-5))


TERMS = ("module", "image", "arm_x_image", "seed")  # latent variances fitted; seed-by-image noise has variance 1


def summary(ca: np.ndarray, cb: np.ndarray, modules: np.ndarray) -> dict:
    """The statistics the fit matches: each arm's correctness, the design effect of the baseline's
    per-image correctness (how alike a module's cells are), the two arms' agreement per image, and
    the two-way mean squares of the per-image difference (seed, image, residual)."""
    ca, cb = ca.astype(float), cb.astype(float)
    diff = kit_stats.variance_components(ca - cb, modules)
    return {"rate_a": ca.mean(), "rate_b": cb.mean(),
            "design_b": kit_stats.variance_components(cb, modules)["design_effect"],
            "agreement": float((ca.mean(0) * cb.mean(0)).mean()),
            "ms_seed": diff["ms_seed"], "ms_image": diff["ms_image"], "ms_error": diff["ms_error"]}


def _model(log_var: np.ndarray, rate_a: float, rate_b: float, modules: np.ndarray, seeds: int) -> dict:
    var = dict(zip(TERMS, np.exp(log_var)))
    total = 1 + sum(var.values())
    scale = np.sqrt(total)
    return {"var": var, "total": float(total), "mu_a": float(sps.norm.ppf(rate_a) * scale),
            "mu_b": float(sps.norm.ppf(rate_b) * scale), "seeds": seeds, "images": len(modules),
            "modules": list(modules)}


def fit(ca: np.ndarray, cb: np.ndarray, modules: np.ndarray, draws: int = 24, seed: int = 0) -> dict:
    """Method of simulated moments: the latent variances (module, image, arm-by-image, seed shift;
    noise 1) whose simulated studies, on the records' own design (seeds, images, modules), reproduce
    :func:`summary` of the records best (Nelder-Mead on the log-variances, squared relative errors,
    the same random numbers for every candidate); each arm's mean follows from its correctness."""
    target = summary(ca, cb, modules)
    k = ca.shape[0]
    keys = ("design_b", "agreement", "ms_seed", "ms_image", "ms_error")

    def loss(log_var: np.ndarray) -> float:
        model = _model(log_var, target["rate_a"], target["rate_b"], modules, k)
        rng = np.random.default_rng(seed)
        sims = [summary(*simulate_arms(model, rng, model["mu_a"], model["mu_b"], k, modules), modules)
                for _ in range(draws)]
        return float(sum((np.mean([s[key] for s in sims]) / target[key] - 1) ** 2 for key in keys))

    start = np.log([5.0, 15.0, 0.2, 0.1])  # the neighbourhood of the paper run's fit
    best = optimize.minimize(loss, start, method="Nelder-Mead", options={"maxiter": 400, "xatol": 0.02,
                                                                         "fatol": 1e-4})
    model = _model(best.x, target["rate_a"], target["rate_b"], modules, k)
    rng = np.random.default_rng(seed + 1)
    sims = [summary(*simulate_arms(model, rng, model["mu_a"], model["mu_b"], k, modules), modules)
            for _ in range(4 * draws)]
    model["target"] = {key: float(v) for key, v in target.items()}
    model["fitted"] = {key: float(np.mean([s[key] for s in sims])) for key in target}
    return model


def rate_of(model: dict, mu: float) -> float:
    """The population correctness of an arm with latent mean ``mu``."""
    return float(sps.norm.cdf(mu / np.sqrt(model["total"])))


def mu_for(model: dict, rate: float) -> float:
    return float(sps.norm.ppf(np.clip(rate, 1e-6, 1 - 1e-6)) * np.sqrt(model["total"]))


def simulate_arms(model: dict, rng: np.random.Generator, mu_a: float, mu_b: float, seeds: int,
                  modules: np.ndarray, frozen: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One simulated pair of arms (seeds x images) on images drawn afresh in the given modules layout."""
    v = model["var"]
    _, idx = np.unique(modules, return_inverse=True)
    n, g = len(modules), idx.max() + 1
    shared = rng.normal(0, np.sqrt(v["module"]), g)[idx] + rng.normal(0, np.sqrt(v["image"]), n)

    def arm(mu: float) -> np.ndarray:
        base = mu + shared + rng.normal(0, np.sqrt(v["arm_x_image"]), n)
        draws = 1 if frozen else seeds  # a frozen model has no training randomness: no seed shift either
        shift = 0.0 if frozen else rng.normal(0, np.sqrt(v["seed"]), (draws, 1))
        latent = base + shift + rng.normal(0, 1, (draws, n))
        out = latent > 0
        return np.repeat(out, seeds, axis=0) if frozen else out

    return arm(mu_a), arm(mu_b)


def scenario(model: dict, kind: str, studies: int, seed: int = 0, study_effect: float = 0.084,
             study_images: int = 357) -> dict:
    """Rates over ``studies`` simulated studies: ``null`` and ``frozen`` (false positives against 0 and
    coverage of the true effect), ``study`` (the truth equals the study's effect: how often the kit
    says its effect differs from the study's noisy one)."""
    rng = np.random.default_rng(seed)
    modules = np.asarray(model["modules"])
    base = model["mu_b"]
    truth = study_effect if kind == "study" else 0.0
    mu_a = mu_for(model, rate_of(model, base) + truth)
    true_effect = rate_of(model, mu_a) - rate_of(model, base)
    excludes0 = covers = differs = outside = 0
    study_modules = modules  # the study's own validation images: new cells in a layout like the kit's
    for _ in range(studies):
        a, b = simulate_arms(model, rng, mu_a, base, model["seeds"], modules, frozen=kind == "frozen")
        effect = kit_stats.paired_effect(a, b, modules)
        excludes0 += not (effect["low"] <= 0 <= effect["high"])
        covers += effect["low"] <= true_effect <= effect["high"]
        if kind == "study":
            sa, sb = simulate_arms(model, rng, mu_a, base, 1, study_modules[:study_images])
            observed = float(sa.mean() - sb.mean())
            differs += kit_stats.versus_study(effect, observed, study_images)["p_value"] < kit_stats.ALPHA
            outside += not effect["low"] <= observed <= effect["high"]  # the old rule: "rules out the study's"
    return {"scenario": kind, "studies": studies, "true_effect": true_effect,
            "interval_excludes_0": excludes0 / studies, "coverage": covers / studies,
            "differs_from_study": differs / studies if kind == "study" else None,
            "old_rule_rules_out": outside / studies if kind == "study" else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records", nargs="?", default=str(DEFAULT_RECORDS))
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    records = results.load_records(args.records)
    model = fit(*correctness(records, "04_balanced_augment", "01_baseline"))
    out = {"records": str(args.records), "fit": {k: v for k, v in model.items() if k != "modules"},
           "scenarios": [scenario(model, kind, args.studies, seed=i) for i, kind in
                         enumerate(("null", "study", "frozen"))]}
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
