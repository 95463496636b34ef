"""Are two runs' records the same, apart from times and dates? The check behind a refactoring.

    python benchmarks/same_records.py RUN_BEFORE RUN_AFTER

Every ``records/*.json`` of one run must exist in the other with equal metrics, per-image logits,
view logits, history, sensitivity and settings; ``summary.json`` is compared the same way. Times,
dates, paths (the run folder's own path inside texts too), library versions and where a training
ran are left out. A record written with a fuller config (defaults spelled out) still matches when
every key the older one had keeps its value. Exit status 0 when the runs match, 1 with the
differences listed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

VOLATILE = {"created", "wall_seconds", "timings", "_path", "versions", "ran_on", "seconds", "elapsed", "started",
            "finished", "run_dir", "results_dir", "path", "date"}


def differences(before: object, after: object, where: str = "") -> list[str]:
    """Where ``after`` differs from ``before`` (dicts by key, lists by position, floats exactly)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        fuller = where.endswith("config")  # the config may spell out defaults the older record left implicit
        for key in sorted(set(before) | set(after)):
            if key in VOLATILE:
                continue
            if key not in after:
                out.append(f"{where}.{key}: missing after")
            elif key not in before:
                if not fuller:
                    out.append(f"{where}.{key}: new after")
            else:
                out += differences(before[key], after[key], f"{where}.{key}")
        return out
    if isinstance(before, list) and isinstance(after, list):
        if len(before) != len(after):
            return [f"{where}: {len(before)} items before, {len(after)} after"]
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in differences(b, a, f"{where}[{i}]")]
    if isinstance(before, float) and isinstance(after, float) and math.isnan(before) and math.isnan(after):
        return []
    if isinstance(before, (list, tuple)) and isinstance(after, (list, tuple)):
        return differences(list(before), list(after), where)
    return [] if before == after else [f"{where}: {str(before)[:80]} -> {str(after)[:80]}"]


def compare_runs(before: Path, after: Path, summaries: bool = True) -> list[str]:
    """All differences between two run folders' records (and summaries unless ``summaries`` is False)."""
    files = [_records(before), _records(after)]
    names = sorted(set(files[0]) | set(files[1]))
    if not names:
        return [f"no records in {before / 'records'} or {after / 'records'}"]
    out = []
    for name in names:
        a, b = files[0].get(name), files[1].get(name)
        if a is None or b is None:
            out.append(f"{name}: only in {'after' if b is not None else 'before'}")
            continue
        out += [f"{name}{d}" for d in differences(_read(a, before), _read(b, after))]
    if summaries and (before / "summary.json").is_file():
        out += [f"summary.json{d}" for d in differences(_read(before / "summary.json", before),
                                                        _read(after / "summary.json", after))]
    return out


def _records(run_dir: Path) -> dict[str, Path]:
    """A run's record files by name (``x.json``), compressed (``x.json.gz``, the committed runs) or not."""
    files = [*(run_dir / "records").glob("*.json"), *(run_dir / "records").glob("*.json.gz")]
    return {p.name.removesuffix(".gz"): p for p in files}


def _read(path: Path, run_dir: Path) -> object:
    """A JSON file of a run (or its ``.gz``), its run folder's own path written as ``<run>`` (notes name
    checkpoints in it)."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return json.loads(text.replace(str(run_dir.resolve()), "<run>"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--records-only", action="store_true",
                        help="leave summary.json out (when the report's format changed between the runs)")
    args = parser.parse_args(argv)
    diffs = compare_runs(args.before, args.after, summaries=not args.records_only)
    n = len(list((args.before / "records").glob("*.json")))
    if diffs:
        print(f"{len(diffs)} difference(s) between {args.before} and {args.after}:")
        print("\n".join(f"  {d}" for d in diffs[:200]))
        return 1
    print(f"same: {n} records of {args.before} and {args.after} are equal apart from times, dates and paths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
