"""How many top blocks ``top`` mode should train: a cost/accuracy table, and the choice read off it.

``top`` mode (the ``cpu-finetune`` and ``cpu-strong`` profiles) fine-tunes a backbone's top blocks
over cached activations. Each extra block costs training time; whether it buys accuracy is a
question for the data. This script trains the ``cpu-strong`` base recipe with each number of
blocks in ``--blocks`` on the study's split (``--seeds`` seeds each, records under ``--out``), then
prints one row per count: accuracy and defect recall (mean over seeds, intervals over seeds and
over the validation images), the training seconds per seed, and each count paired with the one
before it by the kit's rule. The choice: the fewest blocks that no larger count beats (a gain shown
in accuracy or in the target class's recall). Judged on the study's validation images, like 06.

    python benchmarks/blocks_table.py --out /tmp/blocks [--blocks 0,1,2,3,5] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fsfsl_utils import report, session


def step_name(blocks: int) -> str:
    """The step of one count (``blocks_3``)."""
    return f"blocks_{blocks}"


def train_counts(out: Path, counts: Sequence[int], seeds: int = 3, progress: bool = False,
                 limit_per_class: int | None = None, **overrides: object) -> list[dict]:
    """Train the ``cpu-strong`` base recipe with each number of top blocks; all records (``overrides``:
    other training settings, e.g. a smaller input for a dry run)."""
    settings = session.Settings.from_parameters(profile="cpu-strong", seeds=seeds, results_dir=str(out),
                                                progress=progress, limit_per_class=limit_per_class,
                                                config=dict(overrides))
    return [r for k in counts for r in settings.run(step_name(k), policy="none", keep_model=False,
                                                    analyse_images=False, trained_blocks=k)]


def table(records: Sequence[dict], counts: Sequence[int]) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """The cost/accuracy table (one row per count), the paired tests of each count against the one
    before, and the chosen count."""
    arms = report.arm_table(records)
    tgt = report.target_class(records[0])
    rows = []
    for k in counts:
        mine = [r for r in records if r["step"] == step_name(k)]
        rows.append({"trained blocks": k, "accuracy %": arms.loc[step_name(k), "accuracy %"],
                     f"{tgt} recall %": arms.loc[step_name(k), f"{tgt} recall %"],
                     "training s per seed": float(np.mean([r["timings"]["train"] for r in mine]))})
    steps = [step_name(k) for k in counts]
    pairs = [(b, a) for i, a in enumerate(steps) for b in steps[i + 1:]]   # every larger count vs each smaller
    tests = report.paired_tests(records, pairs)
    beaten = set()
    for row in tests.to_dict("records"):
        for label in ("accuracy", f"{tgt} recall"):
            if (row.get(f"{label} verdict") or "").startswith("difference shown") and row[f"{label} effect (pts)"] > 0:
                beaten.add(row["B"])
    chosen = next(k for k in counts if step_name(k) not in beaten)
    neighbours = tests[[pair in set(zip(steps[1:], steps)) for pair in zip(tests["A"], tests["B"])]] \
        if len(tests) else tests
    return pd.DataFrame(rows), neighbours, chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the records go (a run resumes there)")
    parser.add_argument("--blocks", default="0,1,2,3,5", help="comma-separated numbers of top blocks")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        counts = sorted({int(v) for v in args.blocks.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--blocks must be comma-separated whole numbers, got {args.blocks!r}")
    records = train_counts(args.out, counts, args.seeds)
    rows, tests, chosen = table(records, counts)
    print(rows.to_string(index=False, float_format="{:.1f}".format))
    tgt = report.target_class(records[0])
    for label in ("accuracy", f"{tgt} recall"):
        print(report.paired_table(tests, label).to_string(index=False))
    print(f"chosen: {chosen} trained block(s), the fewest that no larger count beats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
