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
import inspect
import json
import os
import platform
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from . import experiment, io, models, profiles, results, session, watchdog
from .experiment import project_root
from .io import atomic_write_json, ensure_writable_dir

NOTEBOOKS = ("01_baseline", "02_flip", "03_full_augment", "04_balanced_augment", "05_analysis")
# the notebook parameters that Settings.from_parameters takes: each one's name in lower case
SETTINGS_PARAMETERS = {name.upper(): name for name in inspect.signature(session.Settings.from_parameters).parameters
                       if name not in ("labels", "results_dir")}


def notebook_dir() -> Path:
    return project_root() / "notebooks"


def notebook_parameters(name: str) -> dict[str, dict]:
    """The parameters a notebook declares (papermill's inspection of its tagged cell)."""
    import papermill

    return papermill.inspect_notebook(str(notebook_dir() / f"{name}.ipynb"))


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


def parse_params(pairs: Sequence[str]) -> dict[str, object]:
    """``NAME=VALUE`` pairs; values are Python literals when they parse as one, else strings."""
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"parameter {pair!r} must look like NAME=VALUE")
        key, value = pair.split("=", 1)
        try:
            params[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key.strip()] = value
    return params


def training_config(params: dict[str, object], config_file: str | None = None) -> dict[str, object]:
    """``params`` with every training setting gathered into ``CONFIG`` (the notebooks' dict of
    :class:`~fsfsl_utils.config.TrainConfig` fields): first the JSON object in ``config_file``, then
    ``-p CONFIG={...}``, then ``-p name=value`` for each field named in lower case (``-p
    weight_decay=1e-4``). ValueError names the file or the parameter."""
    params = dict(params)
    config: dict[str, object] = {}
    if config_file:
        path = Path(config_file).expanduser()
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--config {path}: not a readable JSON file ({err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {path}: must hold a JSON object of training parameters, "
                             f"e.g. {{\"weight_decay\": 0.0001}}")
        config.update(loaded)
    if "CONFIG" in params:
        config.update(session.check_config_parameter(params.pop("CONFIG")))
    for key in [k for k in params if k.islower()]:
        config[key] = params.pop(key)
    session.check_config_parameter(config)
    if config:
        params["CONFIG"] = config
    return params


def plan(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """Which notebooks run with which parameters; ValueError on anything unknown."""
    if args.profile not in profiles.PROFILE_NAMES:
        raise ValueError(f"unknown profile {args.profile!r}; valid: {', '.join(profiles.PROFILE_NAMES)}")
    if args.backbone:
        models.get_spec(args.backbone)
    if args.seeds < 0 or args.splits < 1:
        raise ValueError(f"--seeds must be >= 0 and --splits >= 1, got {args.seeds} and {args.splits}")
    names = args.notebooks.split(",") if args.notebooks else list(NOTEBOOKS)
    unknown = [n for n in names if n not in NOTEBOOKS]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; valid: {', '.join(NOTEBOOKS)}")
    given = {"PROFILE": args.profile, "SEEDS": args.seeds, "SPLITS": args.splits, "BACKBONE": args.backbone or "",
             "EPOCHS": args.epochs or 0, "INPUT_SIZE": args.input_size or 0,
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
    return [(n, {k: v for k, v in merged.items() if k in declared[n]}) for n in names]


def check_data(params: dict) -> None:
    """DATA, TARGET_CLASS and REFERENCE_DIR point at something usable, checked before any kernel starts
    (nothing is decoded: folder names and a pack's header only); ValueError names the parameter."""
    from . import data
    from .study import class_roles

    source = str(params.get("DATA", "elpv"))
    try:
        names = data.class_names_of(source, "study")
    except (FileNotFoundError, data.DataError, OSError) as err:
        raise ValueError(f"parameter DATA: {err} (give 'elpv', a .fsfslpack file or an ImageFolder folder)") from None
    if params.get("TARGET_CLASS"):
        class_roles(names, target=str(params["TARGET_CLASS"]))
    if "REQUIREMENT" in params:
        from .deploy.operating import parse_requirement

        parse_requirement(str(params["REQUIREMENT"]))
    kind = params.get("SPLIT_KIND", "random")
    if kind not in data.SPLIT_KINDS:
        raise ValueError(f"parameter SPLIT_KIND must be one of {', '.join(data.SPLIT_KINDS)}, got {kind!r}")
    if kind == "grouped" and data.source_origin(source) != "elpv":
        raise ValueError("parameter SPLIT_KIND: a grouped split needs each image's module, which only ELPV cells "
                         "carry (DATA elpv or a pack of it)")
    reference = str(params.get("REFERENCE_DIR") or "")
    if reference:
        folder = Path(reference).expanduser()
        try:
            found = results.load_records(folder) if (folder / "records").is_dir() else []
        except (OSError, ValueError) as err:
            raise ValueError(f"parameter REFERENCE_DIR: {folder} cannot be read ({err})") from None
        if not found:
            raise ValueError(f"parameter REFERENCE_DIR: {folder} holds no run records (records/*.json); give the "
                             "folder of an earlier run, e.g. runs/<timestamp>")


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds
# the run-level parameters (training parameters are checked by TrainConfig)
RANGES = {"SEEDS": (0, 1000), "SPLITS": (1, 100), "SEED": (0, MAX_SEED), "SPLIT_SEED": (0, MAX_SEED),
          "THRESHOLD_FOLDS": (0, 20),
          "LIMIT_PER_CLASS": (0, 10**9), "SWEEP_IMAGES": (0, 10**6)}


def check_parameter(name: str, value: object, type_name: str) -> None:
    """A notebook parameter has the type its cell declares and lies in its range; ValueError names it."""
    types = {"int": int, "str": str, "bool": bool, "float": (int, float), "dict": dict}
    optional = type_name.startswith("Optional[") and type_name.endswith("]")
    kinds = [type_name[9:-1], "None"] if optional else [t.strip() for t in type_name.split("|")]
    if value is None and "None" in kinds:
        return
    want = types.get(kinds[0]) if len([k for k in kinds if k != "None"]) == 1 else None
    if want is not None and (not isinstance(value, want) or (want is int and isinstance(value, bool))):
        raise ValueError(f"parameter {name} must be {type_name}, got {value!r}")
    if name in RANGES:
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"parameter {name} must lie in [{lo}, {hi}], got {value!r}")


def check_backend(backend: str, address: str) -> None:
    """BACKEND names a runner, and a given RAY_ADDRESS answers (before any kernel starts)."""
    from . import runner

    if backend not in runner.BACKENDS:
        raise ValueError(f"parameter BACKEND must be one of {', '.join(runner.BACKENDS)}, got {backend!r}")
    if backend == "ray" and address:
        try:
            runner.check_reachable(address, timeout_s=3.0)
        except ConnectionError as err:
            raise ValueError(str(err)) from None


def check_training_settings(params: dict) -> None:
    """The training config the notebooks will resolve, checked now by :class:`~fsfsl_utils.config.TrainConfig`
    (a negative EPOCHS, an input size too small for the backbone fail here, not deep inside a kernel)."""
    names = ("BACKBONE", "INPUT_SIZE", "EPOCHS")  # 0 and "": the profile's value
    config = session.check_config_parameter(params.get("CONFIG"))
    try:
        profiles.resolve(str(params.get("PROFILE", "auto")),
                         **{**{n.lower(): params.get(n) or None for n in names}, **config})
    except ValueError as err:
        named = next((n for n in names if n.lower() in str(err)), None) \
            or next((f"CONFIG {k}" for k in config if k in str(err)), None)
        raise ValueError(f"parameter {named}: {err}" if named else str(err)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.run", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="auto", help=f"one of {', '.join(profiles.PROFILE_NAMES)}")
    parser.add_argument("--seeds", type=int, default=0, help="seeds per step (default 0: the profile's, cpu 5)")
    parser.add_argument("--splits", type=int, default=1, help="study-style splits per step (default 1)")
    parser.add_argument("--backbone", default="", help="override the profile's backbone")
    parser.add_argument("--epochs", type=int, default=0, help="override the profile's epochs (fine-tune)")
    parser.add_argument("--input-size", type=int, default=0, help="override the profile's input size")
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
        if args.dry_run:
            return print_plan(steps, out / "<timestamp>")
        run_dir = new_run_dir(ensure_writable_dir(out, "runs folder"))  # created only once everything checked out
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train_first = train_ahead_by_default(args.profile) if args.train_ahead is None else args.train_ahead
    return execute(steps, run_dir, train_first=train_first, pack=args.pack)


RUN_OPTIONS = ("profile", "seeds", "splits", "backbone", "epochs", "input_size", "data", "notebooks", "backend",
               "ray_address", "target_class", "train_ahead", "pack", "config")  # what shapes a new run


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


LOCK_NAME = "run.lock"  # in a run folder while a job runs it: pid, host and start time of that job


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``kill``): the job stops like Ctrl-C and marks its run as stopped."""


class StopRequest:
    """The signal that asked this job to stop (SIGINT or SIGTERM; None until one does). Its handler raises
    at once; :meth:`check` raises again at the next notebook when that first exception landed where
    Python swallows it (a ``__del__``, a callback: "Exception ignored in ..."), so a stop is never lost."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, frame: object) -> None:
        self.signum = signum
        self.check()

    def check(self) -> None:
        if self.signum == signal.SIGTERM:
            raise Terminated
        if self.signum is not None:
            raise KeyboardInterrupt


def _lock_holder(run_dir: Path) -> dict | None:
    """The job that holds ``run_dir``'s lock when it is still alive (same host, same process, same start
    time: a reused pid does not count), else None. A job on another host counts as alive: it cannot
    be checked from here."""
    import psutil

    try:
        lock = json.loads((run_dir / LOCK_NAME).read_text())
        pid, host, created = int(lock["pid"]), str(lock["host"]), float(lock["process_created"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != platform.node():
        return lock
    try:
        alive = abs(psutil.Process(pid).create_time() - created) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        alive = False
    return lock if alive and pid != os.getpid() else None


def check_not_running(run_dir: Path) -> None:
    """ValueError naming the job when another job is running ``run_dir`` now (its lock's process is alive)."""
    holder = _lock_holder(run_dir)
    if holder is not None:
        where = "" if holder["host"] == platform.node() else f" (on host {holder['host']}: if that job is gone, " \
            f"delete {run_dir / LOCK_NAME})"
        raise ValueError(f"{run_dir} is being run by another job: pid {holder['pid']} on {holder['host']}, started "
                         f"{holder['started']}{where}; wait for it to end or stop it before --resume")


def take_lock(run_dir: Path) -> None:
    """Mark ``run_dir`` as run by this process (pid, host, start time); ValueError when a live job holds
    it. A lock left by a dead job (kill -9) is taken over."""
    import psutil

    check_not_running(run_dir)
    me = {"pid": os.getpid(), "host": platform.node(), "started": dt.datetime.now().isoformat(timespec="seconds"),
          "process_created": psutil.Process().create_time()}
    io.atomic_write_json(run_dir / LOCK_NAME, me)


def release_lock(run_dir: Path) -> None:
    try:
        if json.loads((run_dir / LOCK_NAME).read_text()).get("pid") == os.getpid():
            (run_dir / LOCK_NAME).unlink()
    except (OSError, ValueError):
        pass


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
            status = _run_notebooks(cluster_steps, run_dir, timings, completed,
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


def kernel_manager(log_path: Path) -> type:
    """A Jupyter kernel manager whose kernels write their own messages (start-up warnings, the traceback
    of a kernel stopped mid-reply by Ctrl-C) to ``log_path`` instead of the job's terminal; cell
    errors still reach the executed notebooks. Uses jupyter_client's documented hook for launching
    kernels differently (``_async_launch_kernel``)."""
    from jupyter_client import AsyncKernelManager

    class LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: object) -> None:
            with open(log_path, "a") as log:  # the kernel keeps its own copy of the descriptor
                kw.setdefault("stderr", log)
                kw.setdefault("stdout", log)
                await super()._async_launch_kernel(kernel_cmd, **kw)

    return LoggedKernelManager


class Published:
    """Whether :func:`publish_notebook` kept the executed notebook (truthy), and if not, why."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def __bool__(self) -> bool:
        return not self.reason


def publish_notebook(partial: Path, target: Path) -> Published:
    """Move an executed notebook from where papermill saved it cell by cell to ``target``, atomically and
    only when it is whole JSON: a notebook cut off by a full disk (or a killed job) is never left as
    ``target``; the cut file is removed and the reason returned."""
    try:
        json.loads(partial.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Published(f"no executed notebook was written for {target.name}")
    except (OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        return Published(f"the executed {target.name} could not be written whole ({type(err).__name__}; a full "
                         "disk?): not kept")
    os.replace(partial, target)
    return Published()


def _run_notebooks(steps: list[tuple[str, dict]], run_dir: Path, timings: dict[str, float], completed: list[str],
                   after_each: Callable[[], object], before_each: Callable[[], object] = lambda: None) -> str:
    """Execute the notebooks in order (those in ``completed`` are kept), stopping at the first failure;
    returns the run's status. ``before_each`` runs before every notebook (it may raise to stop the job),
    ``after_each`` after every finished one."""
    import papermill

    for i, (name, params) in enumerate(steps, 1):
        before_each()
        if name in completed:
            print(f"[{i}/{len(steps)}] {name}: kept from the earlier run", flush=True)
            continue
        params = {**params, "RESULTS_DIR": str(run_dir)} if "RESULTS_DIR" in notebook_parameters(name) else params
        target = run_dir / "notebooks" / f"{name}.ipynb"
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k != "RESULTS_DIR")
        print(f"[{i}/{len(steps)}] {name} ({shown}) ...", flush=True)
        t0 = time.perf_counter()
        partial = run_dir / "notebooks" / ".partial" / f"{name}.ipynb"  # papermill saves after every cell
        partial.parent.mkdir(exist_ok=True)
        try:
            try:
                papermill.execute_notebook(str(notebook_dir() / f"{name}.ipynb"), str(partial), parameters=params,
                                           kernel_name="python3", cwd=str(run_dir), progress_bar=False,
                                           kernel_manager_class=kernel_manager(run_dir / "kernels.log"))
            finally:
                kept = publish_notebook(partial, target)
        except papermill.PapermillExecutionError as err:
            timings[name] = time.perf_counter() - t0
            print(f"      FAILED after {timings[name]:.0f} s: {err.ename}: {err.evalue}\n"
                  f"      {'executed notebook with the error: ' + str(target) if kept else kept.reason}",
                  file=sys.stderr)
            return f"failed in {name}: {err.ename}: {err.evalue}"
        except OSError as err:  # e.g. the run folder became read-only, the disk full
            timings[name] = time.perf_counter() - t0
            print(f"      FAILED: {type(err).__name__}: {err}" + ("" if kept else f"\n      {kept.reason}"),
                  file=sys.stderr)
            return f"failed in {name}: {type(err).__name__}: {err}"
        timings[name] = time.perf_counter() - t0
        completed.append(name)
        try:
            after_each()
        except OSError as err:  # the next notebook (or the final run.json) reports the folder's state
            print(f"      warning: run.json not updated: {err}", file=sys.stderr)
        print(f"      done in {timings[name]:.0f} s", flush=True)
    return "ok"


if __name__ == "__main__":
    sys.exit(main())
