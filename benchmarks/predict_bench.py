"""Scoring a folder with a saved model: images per second and peak memory against the folder's size.

    python benchmarks/predict_bench.py MODEL [--sizes 1000 10000] [--out predict_bench.json]

Writes ``max(--sizes)`` PNG cells (ELPV validation cells, repeated under new names) into a temporary
folder, then for each size runs ``python -m fsfsl_utils.predict`` in a fresh process on the first
``size`` of them and records its wall time and peak resident memory (``getrusage`` of the child).
Memory that does not grow with the folder is the claim: the scorer keeps one batch of images and
the page's few best in memory, whatever the folder holds.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_cells(folder: Path, count: int) -> list[Path]:
    from PIL import Image

    from fsfsl_utils import data

    _, val = data.split(data.load_elpv("study"), seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"cell{i:06d}.png"
        Image.fromarray(val.images[i % len(val)]).save(path, compress_level=1)
        paths.append(path)
    return paths


def run_once(model: str, files: list[Path], out: Path) -> dict:
    listing = out.with_suffix(".txt")
    folder = out.with_name(out.name + "-in")
    folder.mkdir()
    for f in files:  # the scorer reads a folder: link the first `size` cells into one
        (folder / f.name).symlink_to(f)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fsfsl_utils.predict", model, str(folder), "--out", str(out),
                           "--no-progress"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    listing.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return {"images": len(files), "seconds": round(wall, 1), "images_per_second": round(len(files) / wall, 1),
            "peak_rss_mib": round(max(peak, before) / 1024, 1), "peak_grew": peak > before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fsfsl-predict-bench-"))
    try:
        files = write_cells(work / "cells", max(args.sizes))
        runs = [run_once(args.model, files[:n], work / f"out{n}") for n in sorted(args.sizes)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"model": args.model, "runs": runs,
              "note": "peak_rss_mib is the largest child's peak so far (getrusage RUSAGE_CHILDREN): sizes run "
                      "smallest first, so a later, larger run that needs more memory shows as a larger peak"}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
