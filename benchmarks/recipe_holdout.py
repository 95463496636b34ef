"""Notebook 06's final recipe judged on images that chose nothing: another split.

06 keeps an ingredient when its arm beats the arm before it on the study's validation images, so the
final recipe's scores on those images are optimistic. This script retrains the base recipe and the
final recipe of a finished 06 run (their settings and labels read from its records; ``--step``: another
of its arms instead of the final) on another study-style split (``--split-seed``, default 1), same
seeds, and writes the records to ``<run>/holdout-split<k>/``; then prints the paired effect of that
arm vs base there, by the kit's rule. ``--split-kind grouped`` keeps every module on one side
(``<run>/holdout-grouped<k>/``): what the recipe keeps on cells of modules it has never seen.

    python benchmarks/recipe_holdout.py runs/<timestamp> [--split-seed 1] [--seeds 3] [--step 06_3_schedule]
        [--split-kind grouped]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fsfsl_utils import profiles, report, results, session

BASE, FINAL = "06_0_base", "06_final"


def settings_of(record: dict) -> tuple[dict, str]:
    """A 06 record's training settings over its profile's, and its label policy."""
    base = profiles.resolve(record["profile"])["config"].as_dict()
    return {k: v for k, v in record["config"].items() if base.get(k) != v}, record.get("labels", "study")


def holdout(run: Path, split_seed: int = 1, seeds: int = 3, progress: bool = False, step: str = FINAL,
            split_kind: str = "random") -> list[dict]:
    """Train the base recipe and ``step`` (the final recipe, or another arm) of the 06 run in ``run`` on
    split ``split_seed`` of ``split_kind``; their records."""
    steps = (BASE, step)
    found = {r["step"]: r for r in results.load_records(run) if r["step"] in steps}
    missing = [s for s in steps if s not in found]
    if missing:
        raise ValueError(f"{run} holds no records of {missing}: run notebook 06 there first")
    out = run / f"holdout-{'split' if split_kind == 'random' else split_kind}{split_seed}"
    settings = session.Settings.from_parameters(profile=found[BASE]["profile"], seeds=seeds, split_seed=split_seed,
                                                split_kind=split_kind, results_dir=str(out), progress=progress)
    records = []
    for step in steps:
        config, labels = settings_of(found[step])
        records += settings.run(step, labels=labels, policy="none", keep_model=False, **config)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--split-seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--step", default=FINAL, help="the arm judged against the base (default: the final recipe)")
    parser.add_argument("--split-kind", choices=("random", "grouped"), default="random")
    args = parser.parse_args(argv)
    records = holdout(args.run, args.split_seed, args.seeds, step=args.step, split_kind=args.split_kind)
    print(report.arm_table(records).to_string())
    tests = report.paired_tests(records, [(args.step, BASE)])
    for label in ("accuracy", f"{report.target_class(records[0])} recall"):
        print(report.paired_table(tests, label).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
