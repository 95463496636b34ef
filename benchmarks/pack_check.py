"""Packed fine-tuning on a GPU (issue 16, part 2): the seeds of one arm as one network, beside
today's path, then the study's 30 trainings packed.

    python benchmarks/pack_check.py --out OUT (--data PACK | --synthetic) [--pack 5] [--seeds 5]
                                    [--epochs 0] [--side-epochs 10] [--budget 540]

1. Side by side in one process, the ``--seeds`` trainings of 01 baseline (``--side-epochs`` of
   the recipe: the time per epoch is what is compared, and the device's minutes go to step 2):
   first as today (``train.fit_many``: one CUDA stream each), then packed (``fit_many(pack=N)``).
   Both times, their ratio, and how far each packed member is from the same training unpacked:
   the largest logit difference, the share of validation images with the same prediction and both
   accuracies.
   Grouped kernels may sum gradients in another order than the single ones (on a CPU with one
   thread at small sizes they do not: ``tests/test_packed.py`` checks bit for bit), and training
   amplifies rounding, so the check is against a tolerance: after one epoch, packed and alone
   logits within the larger of ``--tolerance`` and twice the difference between the same
   trainings run alone twice (a GPU's own nondeterminism); final accuracies are compared with the
   seeds' spread (meaningful with ``--data``: on ``--synthetic`` noise there is nothing to learn).
2. All trainings of the study (six arms, or ``--arms``, x ``--seeds``) trained ahead packed
   (``experiment.train_ahead(pack=N)``), timed; issue 16's target is 360 s on one H200. It starts
   only when the rate measured in 1 says it ends within ``--budget`` seconds.

Writes ``OUT/pack_check.json`` after every stage (a run cut off by a time limit keeps what it
measured; ``study.started`` without ``study.seconds`` means step 2 did not finish).
``--synthetic`` makes an ELPV-shaped random pack here (a training's time depends on counts and
shapes, not on pixel values).

CPU dry run (tests/test_pack_check.py)::

    python benchmarks/pack_check.py --out DIR --synthetic --device cpu --epochs 1 --input-size 64 --seeds 2 --tiny \
        --arms 01_baseline,04_balanced_augment
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fsfsl_utils import augment, experiment, train
from fsfsl_utils.io import atomic_write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ray_gpu_check import synthetic_pack  # noqa: E402


def timed_fits(jobs: list[dict], pack: int) -> tuple[float, list[train.FitResult]]:
    t0 = time.perf_counter()
    fits = train.fit_many(jobs, progress=False, pack=pack)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, fits


def compare(alone: list[train.FitResult], packed: list[train.FitResult], labels: np.ndarray) -> list[dict]:
    """Per seed: the largest logit difference (last epoch), the share of equal predictions and both accuracies."""
    rows = []
    for a, b in zip(alone, packed):
        rows.append({"max_logit_difference": float(np.abs(a.last_logits - b.last_logits).max()),
                     "same_prediction": float((a.last_logits.argmax(1) == b.last_logits.argmax(1)).mean()),
                     "accuracy_alone": float((a.last_logits.argmax(1) == labels).mean()),
                     "accuracy_packed": float((b.last_logits.argmax(1) == labels).mean())})
    return rows


def save(out: Path, result: dict, t_start: float) -> None:
    """Write ``OUT/pack_check.json`` as measured so far (atomically), with the seconds since the start."""
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    atomic_write_json(out / "pack_check.json", result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default="", help="a .fsfslpack (e.g. the study's images)")
    parser.add_argument("--synthetic", action="store_true", help="make an ELPV-shaped random pack here")
    parser.add_argument("--tiny", action="store_true", help="16 + 16 synthetic images (the CPU dry run)")
    parser.add_argument("--device", default=None, help="the trainings' device (default: the profile's)")
    parser.add_argument("--pack", type=int, default=5, help="trainings per packed network")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=0, help="override the paper profile's 50 epochs (0: keep)")
    parser.add_argument("--side-epochs", type=int, default=10,
                        help="epochs of the side-by-side timing in step 1 (0: the recipe's)")
    parser.add_argument("--input-size", type=int, default=0, help="override the input size (0: keep)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest first-epoch logit difference, packed vs alone, accepted on CUDA")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds the whole check may take")
    parser.add_argument("--arms", default="", help="step 2 with only these arms, comma-separated (default: all six)")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a] or list(experiment.STEPS)
    unknown = sorted(set(arms) - set(experiment.STEPS))
    if unknown:
        parser.error(f"--arms: unknown arm(s) {', '.join(unknown)}; valid: {', '.join(experiment.STEPS)}")
    if bool(args.data) == args.synthetic:
        parser.error("give either --data PACK or --synthetic")
    if args.pack < 2 or args.seeds < 2:
        parser.error("--pack and --seeds must be at least 2 (packing needs two trainings)")
    t_start = time.perf_counter()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = args.data or synthetic_pack(out / "synthetic.fsfslpack", {"normal": 16, "defective": 16} if args.tiny
                                         else {"normal": 1508, "defective": 715})
    config = {k: v for k, v in (("device", args.device), ("epochs", args.epochs or None),
                                ("input_size", args.input_size or None)) if v}
    store = experiment.DataStore()

    def specs_of(steps: list[str], **overrides) -> list[experiment.StepSpec]:
        return [experiment.StepSpec.build(step, "paper", seed, source=source, **{**config, **overrides})
                for step in steps for seed in range(args.seeds)]

    result: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "data": Path(source).name, "pack": args.pack, "seeds": args.seeds,
                    "config": specs_of(["01_baseline"])[0].config.as_dict(), "tolerance": args.tolerance}
    # 1a. one epoch, alone vs packed: the per-step difference before training amplifies it
    first = experiment.ahead_jobs(specs_of(["01_baseline"], epochs=1), out / "first-epoch", store, progress=False)
    first = [{**j, "checkpoint_dir": None} for j in first]
    labels = first[0]["val"].labels
    _, alone = timed_fits(first, 1)
    _, again = timed_fits(first, 1)  # the same trainings alone once more: the device's own nondeterminism
    _, packed = timed_fits(first, args.pack)
    result["first_epoch"] = compare(alone, packed, labels)
    result["first_epoch_alone_twice"] = compare(alone, again, labels)
    worst = max(r["max_logit_difference"] for r in result["first_epoch"])
    rerun = max(r["max_logit_difference"] for r in result["first_epoch_alone_twice"])
    limit = max(args.tolerance, 2 * rerun)
    result["first_epoch_limit"] = limit
    result["first_epoch_within_tolerance"] = worst <= limit
    save(out, result, t_start)  # written after every stage: a run cut off by its time limit keeps what it measured
    print(f"first epoch: largest logit difference packed vs alone {worst:.3g}, alone vs alone {rerun:.3g} "
          f"(limit: the larger of {args.tolerance} and twice the latter)", flush=True)
    # 1b. 01's trainings, today's path vs packed, side by side
    full_epochs = specs_of(["01_baseline"])[0].config.epochs
    side_epochs = min(args.side_epochs, full_epochs) if args.side_epochs > 0 else full_epochs
    jobs = experiment.ahead_jobs(specs_of(["01_baseline"], epochs=side_epochs), out / "side-by-side", store,
                                 progress=False)
    jobs = [{**j, "checkpoint_dir": None} for j in jobs]
    t_alone, alone = timed_fits(jobs, 1)
    t_packed, packed = timed_fits(jobs, args.pack)
    rows = compare(alone, packed, labels)
    spread = float(np.std([r["accuracy_alone"] for r in rows], ddof=1))
    result["side_by_side"] = {"trainings": len(jobs), "epochs": side_epochs, "streams_s": round(t_alone, 1),
                              "packed_s": round(t_packed, 1),
                              "speed_up": round(t_alone / t_packed, 2), "per_seed": rows,
                              "seed_spread_of_accuracy": spread,
                              "largest_accuracy_difference": max(abs(r["accuracy_alone"] - r["accuracy_packed"])
                                                                 for r in rows)}
    save(out, result, t_start)
    print(f"01 baseline, {len(jobs)} seeds: streams {t_alone:.1f} s, packed {t_packed:.1f} s "
          f"({t_alone / t_packed:.2f}x)", flush=True)
    # 2. the study's trainings, packed, when the measured rate says they fit
    study = specs_of(arms)
    train_counts = store.split(source, "study", 0, None)[0].counts()
    epochs = study[0].config.epochs
    image_epochs = epochs * sum(sum(augment.get_policy(s.policy).counts(train_counts).values()) for s in study)
    rate = t_packed / (side_epochs * len(jobs[0]["train"]) * len(jobs))
    estimate = rate * image_epochs
    elapsed = time.perf_counter() - t_start
    result["study"] = {"trainings": len(study), "image_epochs": image_epochs, "estimated_s": round(estimate, 1)}
    if elapsed + estimate <= args.budget:
        result["study"]["started"] = True
        save(out, result, t_start)
        t0 = time.perf_counter()
        done = experiment.train_ahead(study, out / "study", store, progress=False, pack=args.pack)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        # issue 16's target is for the whole study (30 trainings, 50 epochs, the study's counts) on a GPU
        whole = torch.cuda.is_available() and len(study) == 30 and epochs == 50 and not args.tiny
        result["study"].update(trained=done, seconds=round(seconds, 1), target_s=360,
                               target_met=bool(seconds <= 360 and result["first_epoch_within_tolerance"])
                               if whole else None)
        print(f"the study's {done} trainings packed by {args.pack}: {seconds:.1f} s (target 360 s)", flush=True)
    else:
        result["study"]["skipped"] = f"estimated {estimate:.0f} s with {elapsed:.0f} s used (budget {args.budget:.0f})"
        print(f"study: skipped, {result['study']['skipped']}", flush=True)
    save(out, result, t_start)
    print(json.dumps({k: result[k] for k in ("gpu", "first_epoch_within_tolerance", "study", "wall_s")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
