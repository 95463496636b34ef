"""The paper profile's trainings through Ray on one GPU (4 per GPU) beside the local runner (issue 17).

    python benchmarks/ray_gpu_check.py --out OUT [--data PACK | --synthetic] [--trainings 4] [--per-gpu 4]

Runs the same trainings twice in one process, side by side in time: first with the local runner
(one after another, as `settings.run` does without Ray), then as Ray tasks on a local Ray cluster
(``num_gpus = 1 / per_gpu`` each), and writes ``OUT/ray_gpu_check.json``: both wall times, their
ratio, where each Ray task ran, and how far the two runs' logits are apart (on CUDA the kernels
are not bit-reproducible; on a CPU they are equal when both use one thread).

``--synthetic`` makes a pack of ELPV-shaped random images with the study's counts on the spot (the
time of a training depends on counts and shapes, not on pixel values), so nothing but the kit,
Ray and the EfficientNet-Lite0 wheels has to travel to the GPU machine. The Ray wheel for
Python 3.12 (75.6 MiB) is more than one call's carry beside them, so Ray core travels as
``benchmarks/ray_bundle.py``'s bundle (20.6 MiB); ``benchmarks/device_checks.sh ray`` installs it
and runs this script.

CPU dry run (tests/test_ray_gpu_check.py)::

    python benchmarks/ray_gpu_check.py --out DIR --synthetic --profile smoke --device cpu --trainings 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fsfsl_utils import data, experiment, runner
from fsfsl_utils.io import atomic_write_json


def synthetic_pack(path: Path, per_class: dict[str, int], seed: int = 0) -> str:
    """A pack of 300 x 300 gray noise images with ``per_class`` counts (ELPV-shaped, study labels)."""
    rng = np.random.default_rng(seed)
    names, labels = [], []
    for label, (cls, n) in enumerate(per_class.items()):
        names += [f"{cls}{i:05d}.png" for i in range(n)]
        labels += [label] * n
    images = rng.integers(0, 256, size=(len(names), 300, 300), dtype=np.uint8)
    meta = pd.DataFrame({"name": names, "label": labels, "source": names, "split": "", "cell_type": "",
                         "probability": np.nan, "op": "original", "param": ""})
    ds = data.Dataset(images, meta, list(per_class))
    return str(data.write_pack(ds, path, origin="synthetic", labels="study", progress=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default="", help="a .fsfslpack (e.g. the study's images)")
    parser.add_argument("--synthetic", action="store_true", help="make an ELPV-shaped random pack here")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--device", default=None, help="the trainings' device (default: the profile's)")
    parser.add_argument("--trainings", type=int, default=4, help="how many (seed 0 of the arms, then seed 1, ...)")
    parser.add_argument("--per-gpu", type=int, default=4, help="Ray trainings sharing one GPU")
    parser.add_argument("--epochs", type=int, default=0, help="override the profile's epochs (0: keep)")
    args = parser.parse_args(argv)
    if bool(args.data) == args.synthetic:
        parser.error("give either --data PACK or --synthetic")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = args.data or synthetic_pack(out / "synthetic.fsfslpack", {"normal": 1508, "defective": 715}
                                         if args.profile != "smoke" else {"normal": 32, "defective": 32})
    arms = list(experiment.STEPS)
    config = {k: v for k, v in (("device", args.device), ("epochs", args.epochs or None)) if v}
    specs = [experiment.StepSpec.build(arms[i % len(arms)], args.profile, seed=i // len(arms), source=source,
                                       **config) for i in range(args.trainings)]
    result: dict = {"profile": args.profile, "trainings": [f"{s.step}-seed{s.seed}" for s in specs],
                    "data": Path(source).name, "per_gpu": args.per_gpu, "ray": None,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    t0 = time.perf_counter()
    local = runner.LocalRunner(progress=False).run(specs, out / "local", analyse_images=False)
    result["local_s"] = round(time.perf_counter() - t0, 1)
    print(f"local runner: {len(specs)} trainings in {result['local_s']} s", flush=True)
    atomic_write_json(out / "ray_gpu_check.json", result)  # the local time survives a Ray run cut off by a limit
    import ray

    t0 = time.perf_counter()
    ray.init(num_gpus=max(1, torch.cuda.device_count()), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    result["ray_start_s"] = round(time.perf_counter() - t0, 1)
    try:
        t1 = time.perf_counter()
        remote = runner.RayRunner(num_gpus=1 / args.per_gpu, num_cpus=1, progress=False).run(
            specs, out / "ray", analyse_images=False)
        result["ray_s"] = round(time.perf_counter() - t1, 1)
    finally:
        ray.shutdown()
    result["ray"] = ray.__version__
    result["local_over_ray"] = round(result["local_s"] / result["ray_s"], 2)
    result["ran_on"] = [r["ran_on"] for r in remote]
    diff = [float(np.abs(np.asarray(a["predictions"]["logits"]) - np.asarray(b["predictions"]["logits"])).max())
            for a, b in zip(local, remote)]
    result["max_logit_difference"] = max(diff)
    result["accuracy"] = {f"{a['step']}-seed{a['seed']}": [a["metrics"]["accuracy"], b["metrics"]["accuracy"]]
                          for a, b in zip(local, remote)}
    atomic_write_json(out / "ray_gpu_check.json", result)
    print(json.dumps({k: result[k] for k in ("gpu", "local_s", "ray_start_s", "ray_s", "local_over_ray",
                                             "max_logit_difference")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
