"""Notebook 01 on 10 and on 100 classes with the same number of images (issue 20, item 12).

Builds two ImageFolder trees from ELPV cells (400 images each: 10 classes x 40, 100 classes x 4;
a cell's class is arbitrary, so the accuracy means nothing), runs notebook 01 on each with the
smoke profile through papermill, and prints the two wall times side by side::

    python benchmarks/many_classes.py [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import papermill
from PIL import Image

from fsfsl_utils import data, experiment


def make_tree(root: Path, classes: int, per_class: int) -> Path:
    cells = data.load_elpv("study").images
    for c in range(classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(cells[c * per_class + j]).save(folder / f"{j}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="fsfsl-classes-"))
    times = {}
    for classes, per_class in ((10, 40), (100, 4)):
        tree = make_tree(work / f"data{classes}", classes, per_class)
        t0 = time.perf_counter()
        papermill.execute_notebook(
            str(experiment.project_root() / "notebooks" / "01_baseline.ipynb"), str(work / f"01_{classes}.ipynb"),
            parameters={"PROFILE": "smoke", "DATA": str(tree), "LIMIT_PER_CLASS": per_class, "SEEDS": 1,
                        "RESULTS_DIR": str(work / f"runs{classes}"), "PROGRESS": False, "WIDGETS": False},
            kernel_name="python3", progress_bar=False)
        times[classes] = time.perf_counter() - t0
        print(f"{classes} classes x {per_class} images: notebook 01 in {times[classes]:.1f} s", flush=True)
    print(f"ratio 100 / 10 classes: {times[100] / times[10]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
