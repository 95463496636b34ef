"""Checkpoints: written atomically on a background thread with a SHA-256, loaded as tensors only."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from ..io import atomic_write
from .common import TrainingError


def resume(ckpt: Path | None, model: nn.Module, opt: torch.optim.Optimizer, dev: torch.device, notes: list[str],
            run_config: dict, extra: dict[str, nn.Module] | None = None) -> tuple[int, float, dict | None, list[dict]]:
    """Load ``ckpt/last.pt`` (and ``best.pt``) into the model and optimiser when a checkpoint of this
    config is there: ``(start epoch, best accuracy, best weights, history)``; a fresh start otherwise.
    ``extra``: more modules the checkpoint holds by name (e.g. ``ema``, the average of the weights)."""
    state = load_checkpoint(ckpt / "last.pt", dev, notes, LAST_KEYS) if ckpt and (ckpt / "last.pt").exists() \
        else None
    best_saved = load_checkpoint(ckpt / "best.pt", "cpu", notes, ()) if state is not None else None
    if state is not None and best_saved is None:
        notes.append(f"warning: {ckpt / 'best.pt'} is missing or damaged: training {ckpt.name} again from epoch 0")
        state = None
    if state is None:
        return 0, -1.0, None, []
    if state["config"] != run_config:
        diff = sorted(k for k in set(run_config) | set(state["config"]) if run_config.get(k) != state["config"].get(k))
        raise TrainingError(f"checkpoint {ckpt / 'last.pt'} was made with another config (differs in {diff}); "
                            "use a new results folder or delete the checkpoint")
    model.load_state_dict(state["model"])
    for key, module in (extra or {}).items():
        module.load_state_dict(state[key])
    load_optimizer_state(opt, state["optimizer"])
    notes.append(f"resumed from {ckpt / 'last.pt'} at epoch {state['epoch']}")
    return state["epoch"], state["best_acc"], best_saved, state["history"]


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict) -> None:
    """``opt.load_state_dict(state)``, keeping the learning-rate object (loading replaces it; a captured
    graph reads the one it was captured with)."""
    lr = opt.param_groups[0]["lr"]
    opt.load_state_dict(state)
    for group in opt.param_groups:
        group["lr"] = lr


LAST_KEYS = ("model", "optimizer", "epoch", "best_acc", "history", "config")  # what last.pt holds


CHECKSUM_KEY = "_fsfsl_sha256"  # every checkpoint the kit writes carries the SHA-256 of its contents


def content_digest(obj: object) -> str:
    """SHA-256 of a checkpoint's contents (tensors by dtype, shape and bytes; plain data by value; dict
    keys sorted): a flipped bit anywhere, in the weights or the optimiser's moments, changes it."""
    import hashlib

    h = hashlib.sha256()

    def feed(x: object) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())

    feed(obj)
    return h.hexdigest()


def load_checkpoint(path: Path, device: torch.device | str, notes: list[str],
                    keys: Sequence[str] = LAST_KEYS) -> dict | None:
    """A checkpoint as tensors and plain data only (``weights_only=True``: loading runs no code),
    checked against the SHA-256 the kit stored in it when it wrote it.

    A file that asks to build other objects (a crafted pickle) is refused with TrainingError, and so is
    a loadable file that is not a checkpoint (a list, a tensor, a dict without ``keys``: it may be the
    user's, so it is not overwritten); a missing, empty, truncated or garbled one, or one whose
    contents no longer match their checksum (a flipped bit), gives None and a warning in ``notes``
    (the training then starts again), the way the feature cache repairs itself."""
    import pickle
    import warnings

    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # torch names the global it blocked
            raise TrainingError(f"checkpoint {path} asks to build Python objects, not just tensors and plain data: "
                                "refused (loading it could run code). Delete it if you trust nothing in it, and "
                                "the training starts again") from None
        reason = f"{type(err).__name__}"
    except (EOFError, RuntimeError, OSError, ValueError, KeyError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'empty file'}"
    else:
        missing = [k for k in keys if k not in obj] if isinstance(obj, dict) else None
        if missing is None or missing or (not keys and not all(isinstance(v, torch.Tensor) for k, v in obj.items()
                                                                if k != CHECKSUM_KEY)):
            what = f"a dict without {', '.join(missing)}" if missing else \
                f"a {type(obj).__name__}" if not isinstance(obj, dict) else "a dict of more than tensors"
            raise TrainingError(f"{path} is not a checkpoint of this kit (it holds {what}); move it away or delete "
                                "it, and the training starts again")
        stored = obj.pop(CHECKSUM_KEY, None)
        if stored is None or stored == content_digest(obj):
            if stored is None:
                notes.append(f"note: checkpoint {path} has no checksum (written by an earlier kit): used unchecked")
            return obj
        reason = "its contents do not match the checksum written with them (a changed bit)"
    message = f"warning: checkpoint {path} is damaged ({reason}): not used"
    warnings.warn(message, stacklevel=2)
    notes.append(message)
    return None


def cpu_copy(obj: object) -> object:
    """A copy of a (nested) state dict whose tensors are on the CPU and no longer change with training."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on one background thread, in order, each atomically: training goes on
    while the disk works (on a GPU an epoch can take less time than writing its checkpoint).
    ``save`` copies the state to the CPU first; ``close`` waits for every write and raises the
    first error of any."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsfsl-checkpoint")
        self.pending: list[Future] = []

    def save(self, obj: object, path: Path) -> None:
        snapshot = cpu_copy(obj)
        for done in [f for f in self.pending if f.done()]:
            self.pending.remove(done)
            done.result()  # a failed write stops training here, not 50 epochs later
        self.pending.append(self.pool.submit(_atomic_save, snapshot, path))

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending = []
            self.pool.shutdown(wait=True)


def _atomic_save(obj: object, path: Path) -> None:
    """``obj`` (a dict) with its :func:`content_digest` beside it, written atomically."""
    atomic_write(path, lambda tmp: torch.save({**obj, CHECKSUM_KEY: content_digest(obj)}, tmp))
