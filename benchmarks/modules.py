"""How much the cells of one solar module share: design effects, and what a random split flatters.

    python benchmarks/modules.py RECORDS_DIR [--grouped GROUPED_DIR] [--permutations 2000] [--out FILE]

1. Design effects: for the baseline's per-image correctness (all validation images and the
   defective ones) and for the primary difference (04 balanced vs 01 baseline, defect recall), the
   cluster-robust variance of the mean over the independent one, with the images grouped by module
   (:func:`fsfsl_utils.data.elpv_module_groups`), and the share of ``--permutations`` random
   relabellings of the same group sizes that reach it (a permutation p: are modules more alike
   than chance groups of the same sizes?).
2. With ``--grouped``: the baseline trained and judged on a grouped split (no module on both sides)
   beside the random split's records: accuracy and defect recall with their intervals (over seeds;
   and from the images, clustered by module). Different validation images: a description, not a
   paired test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fsfsl_utils import report, results  # noqa: E402
from fsfsl_utils import stats as kit_stats  # noqa: E402


def correct(record: dict, recall: bool) -> tuple[np.ndarray, np.ndarray]:
    labels, logits = report.judged_arrays(record)
    keep = labels == record["class_names"].index(report.target_class(record)) if recall else np.ones(len(labels), bool)
    groups = np.asarray(report.image_groups(record))
    return (logits.argmax(1) == labels)[keep].astype(float), groups[keep]


def design_effect(values: np.ndarray, groups: np.ndarray, permutations: int, seed: int = 0) -> dict:
    """Design effect of ``values`` (seeds x images) under ``groups``, and its permutation p."""
    observed = kit_stats.variance_components(values, groups)["design_effect"]
    rng = np.random.default_rng(seed)
    reached = sum(kit_stats.variance_components(values, rng.permutation(groups))["design_effect"] >= observed
                  for _ in range(permutations))
    return {"design_effect": round(float(observed), 2), "permutation_p": (reached + 1) / (permutations + 1),
            "permutations": permutations, "clusters": int(len(set(groups.tolist())))}


def design_effects(records: list[dict], permutations: int) -> dict:
    steps = report.by_step(records)
    out = {}
    for recall in (False, True):
        rows = [correct(r, recall) for r in steps["01_baseline"]]
        out[f"01_baseline {'defect recall' if recall else 'accuracy'}"] = design_effect(
            np.array([v for v, _ in rows]), rows[0][1], permutations)
    if "04_balanced_augment" in steps:
        a = [correct(r, True) for r in steps["04_balanced_augment"]]
        diff = np.array([v for v, _ in a]) - np.array([v for v, _ in (correct(r, True) for r in steps["01_baseline"])])
        out["04 vs 01 defect recall (difference)"] = design_effect(diff, a[0][1], permutations)
    return out


def split_summary(records: list[dict]) -> dict:
    """Accuracy and defect recall of the baseline, mean over seeds, with the seeds' and the clustered
    images' 95% intervals (points)."""
    recs = report.by_step(records)["01_baseline"]
    out = {"seeds": len(recs), "split_kind": recs[0].get("split_kind", "random"),
           "validation": recs[0]["val_counts"], "profile": recs[0]["profile"]}
    for name, recall in (("accuracy", False), ("defect recall", True)):
        values = np.array([correct(r, recall)[0] for r in recs])
        groups = correct(recs[0], recall)[1]
        comp = kit_stats.variance_components(values, groups)
        mean, se = comp["grand"], np.sqrt(comp["var"])
        seed_means = values.mean(1)
        seed_lo, seed_hi = report.mean_interval(seed_means)[1:]
        from scipy import stats as sps

        q = sps.t.ppf(0.975, comp["df"])
        out[name] = {"mean": round(100 * mean, 1),
                     "seeds": None if seed_lo is None else [round(100 * seed_lo, 1), round(100 * seed_hi, 1)],
                     "interval": [round(100 * (mean - q * se), 1), round(100 * (mean + q * se), 1)]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("records")
    parser.add_argument("--grouped", default="")
    parser.add_argument("--permutations", type=int, default=2000)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    records = results.load_records(args.records)
    out = {"records": args.records, "design_effects": design_effects(records, args.permutations),
           "random_split": split_summary(records)}
    if args.grouped:
        out["grouped_split"] = split_summary(results.load_records(args.grouped))
    print(json.dumps(out, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
