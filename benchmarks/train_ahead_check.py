"""The main job's train-ahead path on a device, without notebooks or the ELPV data (a GPU machine has
neither papermill nor the data wheel): the fine-tunings of steps 01-04 at once
(``experiment.train_ahead``), then ``experiment.run_step`` resumes each from its checkpoint and
records it, as the notebooks do; step 01 is also trained the usual way for comparison.

    python benchmarks/train_ahead_check.py --out ahead.json [--device cuda] [--quick]

Data: a small ImageFolder of ELPV-shaped synthetic images (two gray levels). Prints and writes the
timings of each phase as it ends (a run cut off keeps what it has). Exit status 1 when a record was
not resumed from its checkpoint or, on a CPU, when step 01 trained ahead differs from step 01
trained alone (on CUDA the difference is reported: some of its kernels are not deterministic).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fsfsl_utils import experiment, session
from fsfsl_utils.io import atomic_write_json

STEPS = ("01_baseline", "02_flip", "03_full_augment", "04_balanced_augment")


def make_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """An ImageFolder tree of 300 x 300 gray PNGs, the classes two gray levels apart."""
    rng = np.random.default_rng(seed)
    for name, level in (("normal", 90), ("defective", 150)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 30, (300, 300)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file the result is written to")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="1 epoch at 32 px (a dry run)")
    args = parser.parse_args(argv)
    epochs, size = (1, 32) if args.quick else (5, 224)
    work = Path(tempfile.mkdtemp(prefix="fsfsl-ahead-"))
    result: dict = {"epochs": epochs, "input_size": size, "seconds": {}}

    def phase(name: str, t0: float) -> None:
        result["seconds"][name] = round(time.perf_counter() - t0, 2)
        print(f"{name}: {result['seconds'][name]} s", flush=True)
        atomic_write_json(args.out, result)

    try:
        folder = make_folder(work / "data", per_class=60)

        def settings(results: str) -> session.Settings:
            return session.Settings.from_parameters(
                profile="paper", backbone="efficientnet_lite0", epochs=epochs, input_size=size, data=str(folder),
                seeds=1, results_dir=str(work / results), progress=False)

        ahead = settings("ahead")
        specs = [spec.replace(config=spec.config.replace(device=args.device))
                 for step in STEPS for spec in ahead.specs(step)]
        t0 = time.perf_counter()
        result["trained_ahead"] = experiment.train_ahead(specs, ahead.results_dir, ahead.store, progress=False)
        phase("train_ahead", t0)
        t0 = time.perf_counter()
        records = [experiment.run_step(spec, ahead.results_dir, store=ahead.store, progress=False).record
                   for spec in specs]
        phase("resume_and_record", t0)
        plain_settings = settings("plain")
        t0 = time.perf_counter()
        plain = experiment.run_step(specs[0], plain_settings.results_dir, store=ahead.store, progress=False).record
        phase("01_trained_alone", t0)
        result.update(device=records[0]["device"],
                      resumed=[any("resumed from" in note for note in r["notes"]) for r in records],
                      accuracy={r["step"]: r["metrics"]["accuracy"] for r in records},
                      accuracy_01_alone=plain["metrics"]["accuracy"],
                      train_loss_01={"ahead": records[0]["history"][-1]["train_loss"],
                                     "alone": plain["history"][-1]["train_loss"]})
        same = records[0]["history"] == plain["history"] and records[0]["metrics"] == plain["metrics"]
        result["01_ahead_equals_alone"] = same
        atomic_write_json(args.out, result)
        print(result, flush=True)
        failed = result["trained_ahead"] != len(specs) or not all(result["resumed"])
        return 1 if failed or (result["device"] == "cpu" and not same) else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
