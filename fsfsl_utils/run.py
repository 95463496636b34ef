"""The main job: run notebooks 01-05 headlessly with papermill into a new run folder.

    python -m fsfsl_utils.run [--profile auto] [--seeds 1] [--out runs] [--[no-]train-ahead] [--pack N]
                              [-p NAME=VALUE ...]

Each run gets ``<out>/<timestamp>/`` with the executed notebooks, run records, figures,
``summary.md`` / ``summary.json`` and ``run.json`` (timings, peak memory). An earlier run is
never touched. Exit status: 0 on success, 1 when a notebook fails, 2 on bad arguments.
``--train-ahead`` first fine-tunes what notebooks 01-04 will train, all at once
(:func:`fsfsl_utils.experiment.train_ahead`); the notebooks then resume from the checkpoints.
It is the default for the paper profile on CUDA, where the trainings share the GPU (timings:
``benchmarks/RESULTS.md``); ``--no-train-ahead`` turns it off. ``--pack N`` trains up to N seeds of
one arm ahead as one packed network (:mod:`fsfsl_utils.train.packed`; each member's result is its own).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import experiment, models, profiles, session, watchdog
from .experiment import project_root
from .io import atomic_write_json, ensure_writable_dir
from .job_lock import LOCK_NAME, StopRequest, Terminated, check_not_running, release_lock, take_lock
from .job_notebooks import library_messages_to, run_notebooks
from .job_parameters import (
    ALL_NOTEBOOKS,
    NOTEBOOKS,
    RECIPE_NOTEBOOK,
    SETTINGS_PARAMETERS,
    check_backend,
    check_data,
    check_parameter,
    check_training_settings,
    notebook_parameters,
    own_data_notes,
    parse_params,
    training_config,
    with_config_overrides,
)


def new_run_dir(out: Path) -> Path:
    """A fresh ``<out>/<timestamp>`` folder; never an existing one."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for k in range(100):
        path = out / (stamp if k == 0 else f"{stamp}-{k + 1}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder under {out}")


def plan(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Which notebooks run with which parameters; ValueError on anything unknown."""
    if args.profile not in profiles.PROFILE_NAMES:
        raise ValueError(f"unknown profile {args.profile!r}; valid: {', '.join(profiles.PROFILE_NAMES)}")
    if args.backbone:
        models.get_spec(args.backbone)
    if (args.seeds is not None and args.seeds < 1) or args.splits < 1:
        raise ValueError(f"--seeds and --splits must be >= 1, got {args.seeds} and {args.splits}")
    names = args.notebooks.split(",") if args.notebooks else list(NOTEBOOKS)
    unknown = [n for n in names if n not in ALL_NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; valid: {', '.join(ALL_NOTEBOOKS)}")
    if args.recipe and RECIPE_NOTEBOOK not in names:  # before 05, which then shows it
        names.insert(names.index("05_analysis") if "05_analysis" in names else len(names), RECIPE_NOTEBOOK)
    given = {"PROFILE": args.profile, "SEEDS": args.seeds, "SPLITS": args.splits, "BACKBONE": args.backbone,
             "EPOCHS": args.epochs, "INPUT_SIZE": args.input_size,
             "DATA": args.data if args.data == "elpv" else str(Path(args.data).expanduser().resolve()),  # not the
             "PROGRESS": bool(args.progress), "WIDGETS": False, "BACKEND": args.backend,      # kernel's folder
             "RAY_ADDRESS": args.ray_address, "TARGET_CLASS": args.target_class}
    extra = training_config(parse_params(args.param or []), args.config)
    declared = {n: notebook_parameters(n) for n in names}
    everywhere = set().union(*declared.values())
    stray = sorted(set(extra) - everywhere)
    if stray:
        raise ValueError(f"unknown notebook parameter(s) {stray}; "
                         f"the notebooks declare: {', '.join(sorted(everywhere))}")
    merged = {**given, **extra}
    for name, value in merged.items():
        spec = next((d[name] for d in declared.values() if name in d), None)
        if spec is not None:
            check_parameter(name, value, spec["inferred_type_name"])
    check_training_settings(merged)
    check_data(merged)
    check_backend(str(merged.get("BACKEND", "local")), str(merged.get("RAY_ADDRESS", "")))
    return [(n, with_config_overrides({k: v for k, v in merged.items() if k in declared[n]}, merged, declared[n]))
            for n in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.run", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="auto", help=f"one of {', '.join(profiles.PROFILE_NAMES)}")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per step (default: the profile's, cpu 5)")
    parser.add_argument("--splits", type=int, default=1, help="study-style splits per step (default 1)")
    parser.add_argument("--backbone", default=None, help="override the profile's backbone")
    parser.add_argument("--epochs", type=int, default=None, help="override the profile's epochs (fine-tune)")
    parser.add_argument("--input-size", type=int, default=None, help="override the profile's input size")
    parser.add_argument("--data", default="elpv",
                        help="'elpv', a .fsfslpack file (python -m fsfsl_utils.data pack) or an ImageFolder folder")
    parser.add_argument("--out", default=str(project_root() / "runs"), help="parent of the run folder")
    parser.add_argument("--notebooks", default="", help="comma-separated subset, e.g. 01_baseline,05_analysis")
    parser.add_argument("-p", "--param", action="append",
                        help="extra notebook parameter NAME=VALUE; a training setting in lower case (name=value, "
                             "e.g. weight_decay=1e-4: any field of fsfsl_utils.config.TrainConfig) goes into CONFIG")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a JSON object of training settings (TrainConfig fields) over the profile's; -p "
                             "name=value overrides it")
    parser.add_argument("--progress", action="store_true", help="show progress bars inside the notebooks")
    parser.add_argument("--backend", default="local", choices=("local", "ray"),
                        help="where the trainings run: this machine, one after another (local), or as Ray tasks (ray)")
    parser.add_argument("--ray-address", default="",
                        help="--backend ray: the cluster's host:port (default: one local Ray cluster for the job)")
    parser.add_argument("--target-class", default="", metavar="NAME",
                        help="the class whose recall matters most (default: defective on ELPV, else the smallest "
                             "class, ties to the class last in alphabetical order)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN_DIR",
                        help="continue an unfinished run (default: the newest under --out) with its own parameters; "
                             "-p NAME=VALUE changes a parameter of the notebooks not yet finished")
    parser.add_argument("--recipe", action="store_true",
                        help="also run notebook 06, the stronger recipe (its ingredients one at a time, the final "
                             "recipe, learning curves), before 05; long: see docs/findings.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the arguments and print what would run, then stop (nothing is created)")
    parser.add_argument("--train-ahead", action=argparse.BooleanOptionalAction, default=None,
                        help="paper profile: fine-tune every training of 01-04 at once first (one CUDA stream "
                             "each, each result as if alone); the notebooks then resume from the checkpoints "
                             "(default: on for the paper profile on CUDA)")
    parser.add_argument("--pack", type=int, default=1, metavar="N",
                        help="training ahead: up to N seeds of one arm fine-tuned as one packed network "
                             "(fsfsl_utils.train.packed; each member's result is its own; default 1: none packed)")
    args = parser.parse_args(argv)
    if os.environ.get("FSFSL_CACHE"):  # relative to where the job started, not to each kernel's folder
        os.environ["FSFSL_CACHE"] = str(Path(os.environ["FSFSL_CACHE"]).expanduser().resolve())
    try:
        out = Path(args.out).expanduser().resolve()
        if args.resume:
            refuse_run_options_on_resume(args, parser)
            run_dir, earlier = unfinished_run(out, args.resume)
            check_not_running(run_dir)
            steps = resumed_steps(earlier, training_config(parse_params(args.param or [])))
            if args.dry_run:
                return print_plan(steps, run_dir)
            return execute(steps, run_dir, earlier.get("train_first", False), earlier, pack=earlier.get("pack", 1))
        if args.pack < 1:
            raise ValueError(f"--pack must be at least 1 (trainings per packed network), got {args.pack}")
        steps = plan(args)
        for note in own_data_notes(args):
            print(f"note: {note}", file=sys.stderr)
        if args.dry_run:
            return print_plan(steps, out / "<timestamp>")
        run_dir = new_run_dir(ensure_writable_dir(out, "runs folder"))  # created only once everything checked out
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train_first = train_ahead_by_default(args.profile) if args.train_ahead is None else args.train_ahead
    return execute(steps, run_dir, train_first=train_first, pack=args.pack)


RUN_OPTIONS = ("profile", "seeds", "splits", "backbone", "epochs", "input_size", "data", "notebooks", "backend",
               "ray_address", "target_class", "train_ahead", "pack", "config", "recipe")  # what shapes a new run


def refuse_run_options_on_resume(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--resume`` continues a run with its own parameters: an option set to anything but its default
    would shape a new run, so it is an error (it would be ignored otherwise; ``make reproduce`` passes
    the defaults, which is fine); ``-p NAME=VALUE`` is how a parameter changes."""
    given = [f"--{dest.replace('_', '-')}" for dest in RUN_OPTIONS if getattr(args, dest) != parser.get_default(dest)]
    if given:
        raise ValueError(f"--resume continues a run with its own parameters: {', '.join(given)} cannot change it; "
                         "change a parameter of the notebooks not yet finished with -p NAME=VALUE")


def resumed_steps(earlier: dict, changes: dict[str, object]) -> list[tuple[str, dict]]:
    """The run's own notebooks and parameters, with ``changes`` (``-p``) applied to the notebooks not
    finished yet that declare them (checked like a new run's); says which it applies where. ValueError
    when a change names a parameter no unfinished notebook declares."""
    steps = [(n, dict(p)) for n, p in earlier["parameters"].items()]
    if not changes:
        return steps
    completed = set(earlier.get("completed", []))
    pending = [n for n, _ in steps if n not in completed]
    declared = {n: notebook_parameters(n) for n in pending}
    stray = sorted(k for k in changes if not any(k in d for d in declared.values()))
    if stray:
        raise ValueError(f"-p {', '.join(stray)}: no notebook left to run ({', '.join(pending) or 'none'}) "
                         "declares it")
    for name, value in changes.items():
        spec = next(d[name] for d in declared.values() if name in d)
        check_parameter(name, value, spec["inferred_type_name"])
    merged = {k: v for _, p in steps for k, v in p.items()}
    merged.update(changes)
    check_training_settings(merged)
    check_data(merged)
    out = []
    for name, params in steps:
        applied = {k: v for k, v in changes.items() if name in declared and k in declared[name]}
        if applied:
            print(f"resume: {name} runs with {', '.join(f'{k}={v!r}' for k, v in applied.items())}")
        out.append((name, {**params, **applied}))
    return out


def print_plan(steps: list[tuple[str, dict]], run_dir: Path) -> int:
    """``--dry-run``: what would run where, then exit 0 (nothing created, no kernel started)."""
    print(f"dry run: would write {run_dir}")
    for i, (name, params) in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {name} ({', '.join(f'{k}={v!r}' for k, v in params.items())})")
    return 0


def unfinished_run(out: Path, which: str) -> tuple[Path, dict]:
    """The run folder to resume and its run.json: ``which`` is a folder, or ``latest`` for the newest
    run under ``out`` that did not finish. ValueError says why when there is none."""
    if which != "latest":
        candidates = [Path(which).expanduser().resolve()]
    else:
        candidates = sorted((d for d in out.iterdir() if (d / "run.json").is_file()), key=lambda d: d.name,
                            reverse=True)
    for run_dir in candidates:
        try:
            info = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError) as err:
            if which != "latest":
                raise ValueError(f"cannot resume {run_dir}: its run.json is missing or unreadable ({err})") from None
            continue
        if info.get("status") != "ok":
            return run_dir, info
        if which != "latest":
            raise ValueError(f"{run_dir} finished (status ok): nothing to resume")
    raise ValueError(f"no unfinished run under {out} to resume")


def train_ahead_by_default(profile: str) -> bool:
    """Whether the main job trains ahead unless told: when the profile's fine-tunings checkpoint (paper)
    and CUDA is there (one stream each; on a CPU the trainings would only take turns)."""
    return torch.cuda.is_available() and experiment.checkpointed(profiles.resolve(profile)["profile"])


def training_specs(steps: list[tuple[str, dict]], run_dir: Path) -> list[experiment.StepSpec]:
    """The trainings the planned notebooks will run: each of 01-04 runs the study step it is named
    after (``settings.run``), and 04 also the control arms when ``CONTROLS``."""
    specs = []
    for name, params in steps:
        if name not in experiment.STUDY_STEPS:
            continue
        declared = notebook_parameters(name)
        values = {key: params[key] if key in params else ast.literal_eval(info["default"])
                  for key, info in declared.items()}
        settings = session.Settings.from_parameters(
            **{arg: values[key] for key, arg in SETTINGS_PARAMETERS.items()}, results_dir=str(run_dir))
        names = [name]
        if values.get("CONTROLS"):
            names += list(experiment.CONTROL_STEPS)
        for step in names:
            specs += list(settings.specs(step))
    return specs


def execute(steps: list[tuple[str, dict]], run_dir: Path, train_first: bool = False,
            earlier: dict | None = None, pack: int = 1) -> int:
    """Run the planned notebooks in order (``train_first``: their fine-tunings at once, before, up to
    ``pack`` seeds of an arm as one packed network);
    stop at the first failure. ``run.json`` is written before the first notebook and after each one
    (status ``running`` and the notebooks completed), so a killed job can be resumed: ``earlier``
    (the run.json of that job) keeps its completed notebooks, and trainings resume from their
    checkpoints. While it runs, the folder holds :data:`LOCK_NAME` (no second job takes it over);
    SIGTERM stops it like Ctrl-C, with run.json marked ``stopped``; if it is killed outright,
    :mod:`fsfsl_utils.watchdog` ends its kernels and Ray processes."""
    try:
        take_lock(run_dir)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {run_dir / LOCK_NAME} cannot be written: {err}", file=sys.stderr)
        return 1
    stop = StopRequest()
    previous = {sig: signal.signal(sig, stop.handler) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if _main_thread() else {}
    guard = watchdog.start()  # ends the kernels and a local Ray cluster if this job is killed with SIGKILL
    try:
        with library_messages_to(run_dir / "kernels.log"):
            return _execute(steps, run_dir, train_first, earlier, pack, stop)
    finally:
        guard.terminate()  # this job ends normally: it stops its helpers itself
        guard.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        release_lock(run_dir)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _execute(steps: list[tuple[str, dict]], run_dir: Path, train_first: bool, earlier: dict | None,
             pack: int, stop: StopRequest) -> int:
    os.environ["FSFSL_PROGRESS"] = "1" if any(p.get("PROGRESS") for _, p in steps) else "0"
    os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(sys.prefix) / "share" / "jupyter"),
                                                                os.environ.get("JUPYTER_PATH")]))
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    (run_dir / "notebooks").mkdir(exist_ok=earlier is not None)
    print(f"run folder: {run_dir}" + (" (resumed)" if earlier else ""))
    timings: dict[str, float] = dict(earlier.get("seconds", {})) if earlier else {}
    completed: list[str] = list(earlier.get("completed", [])) if earlier else []
    t_all = time.perf_counter()
    notes = list(earlier.get("notes", [])) if earlier else []
    if earlier:
        notes.append(f"resumed at {dt.datetime.now().isoformat(timespec='seconds')}; kept: "
                     f"{', '.join(completed) or 'nothing'}")

    def progress_record(status: str) -> dict:
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return {"status": status, "completed": completed, "seconds": timings,
                "total_seconds": time.perf_counter() - t_all + (earlier or {}).get("total_seconds", 0.0),
                "peak_rss_mib_of_kernels": round(peak_kib / 1024, 1),
                "parameters": {n: p for n, p in steps}, "train_first": train_first, "pack": pack, "notes": notes,
                "finished" if status != "running" else "updated": dt.datetime.now().isoformat(timespec="seconds")}

    try:
        atomic_write_json(run_dir / "run.json", progress_record("running"))
    except OSError as err:
        print(f"error: {run_dir / 'run.json'} cannot be written: {err}", file=sys.stderr)
        return 1
    try:
        if train_first and len(completed) < sum(n in experiment.STUDY_STEPS for n, _ in steps):
            t0 = time.perf_counter()
            try:
                done = experiment.train_ahead(training_specs(steps, run_dir), run_dir,
                                              progress=any(p.get("PROGRESS") for _, p in steps), pack=pack)
            except Exception as err:  # noqa: BLE001 - the notebooks can still train their own (or resume)
                notes.append(f"training ahead failed ({type(err).__name__}: {err}); each notebook trained its own, "
                             "resuming from any checkpoint written before the failure")
                print(f"      {notes[-1]}", file=sys.stderr, flush=True)
            else:
                packing = f", up to {pack} per packed network" if pack > 1 else ""
                print(f"trained ahead: {done} fine-tunings at once{packing} in {time.perf_counter() - t0:.0f} s"
                      + ("" if done else " (none: only the paper profile checkpoints its fine-tunings)"), flush=True)
            timings["train_ahead"] = time.perf_counter() - t0
        cluster_steps, stop_cluster = shared_ray_cluster(steps)
        try:
            status = run_notebooks(cluster_steps, run_dir, timings, completed,
                                    lambda: atomic_write_json(run_dir / "run.json", progress_record("running")),
                                    stop.check)
        finally:
            stop_cluster()
        stop.check()
    except KeyboardInterrupt as stop:
        status = "stopped" if isinstance(stop, Terminated) else "interrupted"
    info = progress_record(status)
    code = {"interrupted": 130, "stopped": 128 + signal.SIGTERM}.get(status)
    try:
        atomic_write_json(run_dir / "run.json", info)
    except OSError as err:
        print(f"error: the run stopped ({status}) and {run_dir / 'run.json'} cannot be written: {err}", file=sys.stderr)
        return code or 1
    if code:
        how = "interrupted" if status == "interrupted" else "stopped (SIGTERM)"
        print(f"{how}: {run_dir} keeps what finished; run.json says so; continue with --resume", file=sys.stderr)
        return code
    print(f"total {info['total_seconds']:.0f} s, peak kernel memory {info['peak_rss_mib_of_kernels']} MiB")
    if status == "ok" and (run_dir / "summary.json").exists():
        print_summary(run_dir)
    return 0 if status == "ok" else 1


def print_summary(run_dir: Path) -> None:
    """The conclusions and the kit beside the study, as plain text (summary.md is Markdown, escaped for
    renderers; the terminal gets the words themselves, from summary.json)."""
    import pandas as pd

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError) as err:
        print(f"warning: {run_dir / 'summary.json'} is unreadable ({err})", file=sys.stderr)
        return
    print("Conclusions:")
    print("\n".join(f"- {line}" for line in summary.get("conclusions", [])))
    table = summary.get("Kit vs study")
    if table:
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            frame = pd.DataFrame(table)
            frame = frame.astype(object).where(frame.notna(), "")
            print("\nThe kit beside the study:\n" + frame.to_string(index=False))
    print(f"\nfull summary: {run_dir / 'summary.md'}")


def shared_ray_cluster(steps: list[tuple[str, dict]]) -> tuple[list[tuple[str, dict]], Callable[[], None]]:
    """``BACKEND='ray'`` without ``RAY_ADDRESS``: one local Ray cluster for the whole job, started
    here, its address given to every notebook, stopped by the returned function (not one cluster per
    kernel, and none left behind). Otherwise the steps as they are and a function that does nothing."""
    if not any(p.get("BACKEND") == "ray" and not p.get("RAY_ADDRESS") for _, p in steps):
        return steps, lambda: None
    import ray

    from . import runner

    runner.connect(None)
    address = ray.get_runtime_context().gcs_address
    print(f"Ray: a local cluster for this job at {address}", flush=True)
    return ([(n, {**p, "RAY_ADDRESS": address} if p.get("BACKEND") == "ray" and not p.get("RAY_ADDRESS") else p)
             for n, p in steps], runner.shutdown)


if __name__ == "__main__":
    sys.exit(main())
