"""Where a study's trainings run: in this process (``local``, the default) or as Ray tasks (``ray``).

A training is one :class:`~fsfsl_utils.experiment.StepSpec`; :func:`train_one` runs it and writes its
record atomically under the results folder, or returns the record already there (an interrupted
study resumes; a retried task trains nothing twice). Both runners call :func:`train_one`, so the
records are the same wherever they ran; each record says where (``ran_on``).

The Ray runner (optional: ``pip install 'fsfsl[ray]'``) submits one Ray task per training with a
fraction of a GPU (``num_gpus=0.25``: four trainings share one GPU) and ``num_cpus``, and collects
records as they finish. Images and weights never travel through Ray's object store: each task
loads the data from its source (ELPV, a pack or a folder every node can read) and writes its record
to the shared results folder. Ray retries a task whose worker or node died.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import experiment, io, results
from .experiment import DEFAULT_VIEWS, StepSpec
from .progress import progress_bar

BACKENDS = ("local", "ray")


def existing_record(spec: StepSpec, results_dir: str | os.PathLike) -> dict | None:
    """The record of ``spec`` already under ``results_dir/records`` (the same step, seeds, data, profile
    and training config), or None. Unreadable or half-written files do not count."""
    folder = Path(results_dir) / "records"
    tag = results.run_tag(spec.step, spec.seed, spec.split_seed)
    for path in sorted(folder.glob(f"{tag}*.json"), reverse=True):
        if path.stem != tag and not path.stem.startswith(f"{tag}-v"):
            continue
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _same_training(record, spec):
            record["_path"] = str(path)
            return record
    return None


def _same_training(record: dict, spec: StepSpec) -> bool:
    config = spec.config.as_dict()
    return (record.get("step"), record.get("seed"), record.get("split_seed"), record.get("source"),
            record.get("labels"), record.get("limit_per_class"), record.get("profile")) == \
        (spec.step, spec.seed, spec.split_seed, spec.source, spec.labels, spec.limit_per_class, spec.profile) \
        and record.get("target_class_requested") == spec.target_class \
        and record.get("split_kind", "random") == spec.split_kind \
        and record.get("label_fraction", 1.0) == spec.label_fraction \
        and json.loads(json.dumps(record.get("config"))) == json.loads(json.dumps(config))


def where() -> dict:
    """This process's node: host name and GPU (None on a CPU)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"node": platform.node(), "gpu": gpu}


def train_one(spec: StepSpec, results_dir: str | os.PathLike, backend: str = "local",
              analyse_images: bool = True, views: Sequence[str] = DEFAULT_VIEWS,
              store: experiment.DataStore | None = None, progress: bool | None = False,
              keep: dict | None = None) -> dict:
    """Run one training and write its record (or return the record already there); a top-level
    function, so that a Ray worker can import and call it. ``store``: decoded data to reuse;
    ``keep``: save its model too (:func:`fsfsl_utils.experiment.keep_model`)."""
    found = existing_record(spec, results_dir)
    if found is not None:
        return found
    ran_on = {"backend": backend, **where()}
    if backend == "ray":
        import ray

        ran_on.update(ray=ray.__version__, resources=ray.get_runtime_context().get_assigned_resources(),
                      cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    run = experiment.run_step(spec, results_dir, store=store, progress=progress, analyse_images=analyse_images,
                              views=views, ran_on=ran_on, keep=keep)
    return run.record


class TrainingFailed(RuntimeError):
    """A training raised: the message names its spec and carries the worker's traceback."""


@dataclass
class LocalRunner:
    """Trainings one after another in this process (today's path; never imports Ray), on the images
    of ``store`` (decoded once)."""

    progress: bool | None = None
    store: experiment.DataStore | None = None

    def run(self, specs: Sequence[StepSpec], results_dir: str | os.PathLike, analyse_images: bool = True,
            views: Sequence[str] = DEFAULT_VIEWS, on_record: Callable[[dict], None] | None = None,
            keep: dict | None = None) -> list[dict]:
        out = []
        store = self.store or experiment.DataStore()
        for spec in specs:
            record = train_one(spec, results_dir, "local", analyse_images, views, store, self.progress, keep)
            if on_record:
                on_record(record)
            out.append(record)
        return out


@dataclass
class RayRunner:
    """One Ray task per training: ``num_gpus`` (a fraction shares a GPU) and ``num_cpus`` each, on the
    cluster at ``address`` ("" or None: a local Ray cluster on this machine). Records come back in
    the order of ``specs``; progress is shown per finished training."""

    address: str | None = None
    num_gpus: float = 0.25
    num_cpus: float = 1.0
    max_retries: int = 3
    progress: bool | None = None
    init_timeout_s: float = 30.0

    def run(self, specs: Sequence[StepSpec], results_dir: str | os.PathLike, analyse_images: bool = True,
            views: Sequence[str] = DEFAULT_VIEWS, on_record: Callable[[dict], None] | None = None,
            keep: dict | None = None) -> list[dict]:
        import ray

        connect(self.address, self.init_timeout_s)
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(_ray_train_one).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus if gpus else 0,
                                                  max_retries=self.max_retries, retry_exceptions=False)
        results_dir = str(Path(results_dir).resolve())
        pending = {task.remote(spec, results_dir, analyse_images, tuple(views), keep): i
                   for i, spec in enumerate(specs)}
        out: list[dict | None] = [None] * len(specs)
        bar = progress_bar(range(len(specs)), desc="trainings (ray)", enable=self.progress)
        ticks = iter(bar)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                out[i] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                raise TrainingFailed(f"training {specs[i].step} seed {specs[i].seed} split {specs[i].split_seed} "
                                     f"failed on the Ray cluster:\n{err}") from None
            next(ticks, None)
            if on_record:
                on_record(out[i])
        for record in out:  # a task whose node died mid-write left a temp file; its retry wrote the record
            io.discard_orphan_temps(record["_path"])
        return out  # type: ignore[return-value]


def _ray_train_one(spec: StepSpec, results_dir: str, analyse_images: bool, views: tuple[str, ...],
                   keep: dict | None = None) -> dict:
    os.environ.setdefault("FSFSL_PROGRESS", "0")
    return train_one(spec, results_dir, "ray", analyse_images, views, keep=keep)


def connect(address: str | None = None, timeout_s: float = 30.0) -> None:
    """Join the Ray cluster at ``address``, or start a local one (no address); already connected: nothing.
    An address that does not answer within ``timeout_s`` fails with a message naming it."""
    try:
        import ray
    except ImportError:
        raise ImportError("BACKEND='ray' needs Ray: pip install 'fsfsl[ray]' (or pip install ray)") from None
    if ray.is_initialized():
        return
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # Ray would set it from num_cpus
    if address:
        check_reachable(address, timeout_s)
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail fast, naming the address, when nothing listens there (``ray.init`` would wait minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"RAY_ADDRESS must look like host:port (e.g. 10.0.0.5:6379), got {address!r}")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout_s)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"no Ray cluster answers at RAY_ADDRESS={address!r} ({err}); start one with "
                                      "'ray start --head' there, or leave RAY_ADDRESS empty for a local cluster") \
                    from None
            time.sleep(0.5)


def shutdown() -> None:
    """Leave (and, if this process started it, stop) the Ray cluster: nothing is left running."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()


def check_backend(backend: str) -> None:
    """ValueError naming BACKEND unless it is one of :data:`BACKENDS` (the one check, wherever it is set)."""
    if backend not in BACKENDS:
        raise ValueError(f"BACKEND must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


def make_runner(backend: str = "local", ray_address: str | None = None, progress: bool | None = None,
                num_gpus: float = 0.25, num_cpus: float = 1.0,
                store: experiment.DataStore | None = None) -> LocalRunner | RayRunner:
    """The runner of a backend name (``store``: the local runner's decoded data); ValueError names
    the parameter."""
    check_backend(backend)
    if backend == "local":
        return LocalRunner(progress, store)
    return RayRunner(ray_address or None, num_gpus, num_cpus, progress=progress)
