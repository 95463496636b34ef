"""Predictions: logits of images through the eval transform, each epoch's validation, the final logits."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import augment, models
from ..config import TrainConfig
from ..data import Dataset
from .common import memory_format


def final_logits(model: nn.Module, x_val: torch.Tensor, val: Dataset, views: Sequence[str], cfg: TrainConfig,
                 use_amp: bool, inputs: torch.Tensor | None, last: np.ndarray | None, best_state: dict | None,
                 best: np.ndarray | None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """A finished training's ``(validation logits, view logits, last epoch's logits)``: ``last`` (or
    predicted with the model's weights now, the last epoch's), then the best epoch's weights
    (``best_state``) are loaded and give the validation logits (``best``, or predicted) and each test-time
    view's."""
    last = last if last is not None else predict(model, x_val, cfg, use_amp, inputs=inputs)
    if best_state is not None:
        model.load_state_dict(best_state)
    val_logits = best if best is not None else predict(model, x_val, cfg, use_amp, inputs=inputs)
    view_logits = {v: predict(model, torch.from_numpy(augment.view_images(val, v)).to(x_val.device), cfg, use_amp)
                   for v in views}
    return val_logits, view_logits, last


def preprocess_all(images: torch.Tensor, cfg: TrainConfig, batch_size: int = 256) -> torch.Tensor:
    out = torch.cat([models.preprocess(images[s:s + batch_size], cfg.backbone, cfg.input_size,
                                       cfg.crop_fraction)
                     for s in range(0, len(images), batch_size)])
    return out.contiguous(memory_format=memory_format(cfg.channels_last))


def predict(model: nn.Module, images: torch.Tensor, cfg: TrainConfig, use_amp: bool = False,
            batch_size: int = 64, inputs: torch.Tensor | None = None) -> np.ndarray:
    """Logits (float64 numpy) of uint8 images through the eval transform (``inputs``: already
    transformed, as :func:`fit` keeps them on a GPU)."""
    return device_logits(model, images, cfg, use_amp, batch_size, inputs).cpu().numpy().astype(np.float64)


def device_logits(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], cfg: TrainConfig,
                  use_amp: bool = False, batch_size: int = 64, inputs: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`predict`'s logits as a float32 tensor on the images' device (no wait for the device).

    ``images`` may be a list, one per member of a packed network (:mod:`fsfsl_utils.train.packed`): each
    batch is then the members' transformed images side by side on the channel axis."""
    members = list(images) if isinstance(images, (list, tuple)) else [images]
    model.eval()
    outs = []
    if inputs is not None:
        batch_size = max(batch_size, 256)
    with torch.inference_mode(), torch.autocast(members[0].device.type, dtype=torch.bfloat16, enabled=use_amp):
        for s in range(0, len(members[0]), batch_size):
            if inputs is not None:
                x = inputs[s:s + batch_size]
            else:
                parts = [models.preprocess(im[s:s + batch_size], cfg.backbone, cfg.input_size, cfg.crop_fraction)
                         for im in members]
                x = parts[0] if len(parts) == 1 else \
                    torch.cat(parts, 1).contiguous(memory_format=memory_format(cfg.channels_last))
            outs.append(model(x).float())
    return torch.cat(outs)


class Validation:
    """Each epoch's validation, run while the next epoch trains.

    ``start(model)`` copies the weights into a second model and, on CUDA, runs it on a side
    stream: the training step's kernels leave most of the GPU idle. ``finish()`` waits for it and
    returns the accuracy and the copy (the weights that were validated); the next ``start`` must
    come after it. On a CPU the same calls run one after the other.
    """

    def __init__(self, model: nn.Module, x_val: torch.Tensor, y_val: np.ndarray, cfg: TrainConfig, use_amp: bool,
                 inputs: torch.Tensor | None):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.x_val, self.y_val, self.cfg, self.use_amp, self.inputs = x_val, y_val, cfg, use_amp, inputs
        self.stream = torch.cuda.Stream(x_val.device) if x_val.is_cuda else None
        self.pending: torch.Tensor | None = None
        self.logits: np.ndarray | None = None  # of the last finished validation (float64, as predict gives)

    def start(self, model: nn.Module) -> None:
        if self.pending is not None:
            raise RuntimeError("Validation.start before the previous validation finished")
        with torch.no_grad():
            torch._foreach_copy_(list(self.model.state_dict().values()), list(model.state_dict().values()))
        if self.stream is None:
            self.pending = self._logits()
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.x_val.device))  # the weights are copied
        with torch.cuda.stream(self.stream):
            self.pending = self._logits()

    def _logits(self) -> torch.Tensor:
        return device_logits(self.model, self.x_val, self.cfg, self.use_amp, inputs=self.inputs)

    def finish(self) -> float | None:
        """Accuracy of the weights given to the last ``start`` (None if nothing is pending)."""
        if self.pending is None:
            return None
        if self.stream is not None:
            torch.cuda.current_stream(self.x_val.device).wait_stream(self.stream)
        self.logits, self.pending = self.host_logits(self.pending), None
        return self.accuracy()

    def host_logits(self, pending: torch.Tensor) -> np.ndarray:
        """The finished validation's logits on the host (float64, as :func:`predict` gives)."""
        return pending.cpu().numpy().astype(np.float64)

    def accuracy(self) -> float:
        return float((self.logits.argmax(1) == self.y_val).mean())
