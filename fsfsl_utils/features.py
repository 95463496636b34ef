"""Frozen-backbone features and their on-disk cache.

Features are keyed by the image's content hash plus everything that decides them
(backbone, weights, input size, crop, kit preprocessing version), one ``.npy`` per image,
written atomically. A flipped or augmented copy is a new image and gets its own entry, so
every notebook and seed reuses what any earlier run computed. A corrupt or stale entry
(unreadable, wrong shape, non-finite) is recomputed.

The same cache holds the activations below a backbone's top blocks (:func:`activations`, float16,
one folder per cut point), which the ``top`` training mode fine-tunes over.

Cache folder: ``$FSFSL_CACHE/features`` (default ``~/.cache/fsfsl/features``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from . import models
from .io import atomic_write
from .progress import progress_bar

PREPROCESS_VERSION = 4  # 4: models.preprocess, the one input path (uint8 resize on a CPU)
DEFAULT_BATCH = {"cpu": 8, "cuda": 256}  # a CPU of few cores gains nothing from larger batches


def cache_root() -> Path:
    return Path(os.environ.get("FSFSL_CACHE", Path.home() / ".cache" / "fsfsl")) / "features"


def image_keys(images: np.ndarray) -> list[str]:
    """Content hash of each image (bytes and shape)."""
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes() + str(im.shape).encode(), digest_size=16).hexdigest()
            for im in images]


def cache_dir_for(backbone: str, size: int, crop_fraction: float, weights_path: str | None) -> Path:
    norm = models.get_spec(backbone).normalisation
    tag = f"{backbone}-{size}px-crop{crop_fraction:.4f}-{norm}-{models.weights_id(weights_path)}-v{PREPROCESS_VERSION}"
    return cache_root() / tag


def get_backbone(backbone: str, weights: str | None, device: torch.device) -> torch.nn.Module:
    """A frozen backbone in eval mode, channels_last; the two most recently asked for stay loaded
    (``functools.lru_cache``: building one reads its weights from disk)."""
    return _frozen_backbone(backbone, weights, str(device))


@functools.lru_cache(maxsize=2)
def _frozen_backbone(backbone: str, weights: str | None, device: str) -> torch.nn.Module:
    net = models.build_backbone(backbone, weights).to(torch.device(device)).to(memory_format=torch.channels_last)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def extract(images: np.ndarray, backbone: str = "efficientnet_lite0", size: int = 224, crop_fraction: float = 1.0,
            weights: str | None = "imagenet", batch_size: int | None = None, device: str | None = "auto",
            use_cache: bool = True, progress: bool | None = None, keys: list[str] | None = None) -> np.ndarray:
    """Pooled features (``N x D`` float32) of uint8 images, computing only what the cache lacks.

    ``keys``: the images' :func:`image_keys`, when the caller already has them."""
    dev = models.pick_device(device)
    weights_path = models.resolve_weights(backbone, weights)
    folder = cache_dir_for(backbone, size, crop_fraction, weights_path)
    return _cached(images, folder, (models.get_spec(backbone).feature_dim,), np.float32,
                   lambda: get_backbone(backbone, weights_path, dev), backbone, size, crop_fraction, dev,
                   batch_size, use_cache, progress, keys, f"features[{backbone}@{size}]")


def activations(images: np.ndarray, backbone: str = "efficientnet_lite0", size: int = 224, crop_fraction: float = 1.0,
                weights: str | None = "imagenet", trained_blocks: int = 1, batch_size: int | None = None,
                device: str | None = "auto", use_cache: bool = True, progress: bool | None = None,
                keys: list[str] | None = None) -> np.ndarray:
    """The frozen lower blocks' activations (``N x C x H x W`` float16) of uint8 images: the input of
    the top ``trained_blocks`` blocks (:func:`fsfsl_utils.models.split_backbone`), computed only where
    the cache lacks them. Stored as float16 (half the disk and memory; the top blocks compute in float32)."""
    dev = models.pick_device(device)
    weights_path = models.resolve_weights(backbone, weights)
    models.check_trained_blocks(backbone, trained_blocks)
    cut = models.get_spec(backbone).blocks - trained_blocks
    base = cache_dir_for(backbone, size, crop_fraction, weights_path)
    folder = base.with_name(f"{base.name}-below-block{cut}-fp16")
    lower = lambda: models.split_backbone(get_backbone(backbone, weights_path, dev), backbone, trained_blocks)[0]  # noqa: E731
    with torch.inference_mode():
        probe = lower()(models.preprocess(torch.zeros(1, size, size, dtype=torch.uint8, device=dev), backbone, size))
    return _cached(images, folder, tuple(probe.shape[1:]), np.float16, lower, backbone, size, crop_fraction, dev,
                   batch_size, use_cache, progress, keys, f"activations[{backbone}@{size}, below block {cut}]")


def _cached(images: np.ndarray, folder: Path, shape: tuple[int, ...], dtype: type, get_net, backbone: str, size: int,
            crop_fraction: float, dev: torch.device, batch_size: int | None, use_cache: bool, progress: bool | None,
            keys: list[str] | None, desc: str) -> np.ndarray:
    """``get_net()(preprocessed images)`` per image, read from ``folder`` where an entry of the right
    shape and dtype exists, else computed (in batches, with a progress bar) and written there."""
    out = np.empty((len(images), *shape), dtype)
    keys = image_keys(images) if keys is None else keys
    todo = []
    for i, key in enumerate(keys):
        vec = _read_entry(folder / key[:2] / f"{key}.npy", shape, dtype) if use_cache else None
        if vec is None:
            todo.append(i)
        else:
            out[i] = vec
    if not todo:
        return out
    net = get_net()
    bs = batch_size or DEFAULT_BATCH.get(dev.type, 32)
    starts = range(0, len(todo), bs)
    bar = progress_bar(starts, desc=desc, enable=progress, total=len(starts), unit="batch")
    writable = use_cache
    with torch.inference_mode():
        for s in bar:
            idx = todo[s:s + bs]
            x = models.preprocess(torch.from_numpy(images[idx]).to(dev), backbone, size, crop_fraction)
            values = net(x).float().cpu().numpy().astype(dtype)
            out[idx] = values
            for i, vec in zip(idx, values):
                if not writable:
                    break
                try:
                    _write_entry(folder / keys[i][:2] / f"{keys[i]}.npy", vec)
                except OSError as err:  # read-only, a file where a folder should be, an entry that is a folder
                    writable = False
                    # one text and one place for every call: Python shows it once per process, not per call
                    warnings.warn(f"the feature cache {cache_root()} cannot be written ({err.strerror or err}); "
                                  "going on without it (set FSFSL_CACHE to a writable folder)", stacklevel=1)
    return out


def _read_entry(path: Path, shape: tuple[int, ...], dtype: type) -> np.ndarray | None:
    """An entry, or None when it is missing, unreadable, of another shape or dtype, or not finite."""
    try:
        vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if vec.shape != shape or vec.dtype != dtype or not np.isfinite(vec).all():
        return None
    return vec


def _write_entry(path: Path, vec: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, vec)

    atomic_write(path, write)
