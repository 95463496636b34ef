"""A saved model for an inspection station: ONNX (dynamic batch axis) or TorchScript, checked against
the PyTorch model on real images, with the preprocessing it expects written beside it.

The exported graph takes float pixels on the 0-255 scale, ``N x C x S x S`` (C = 1 for gray, 3 for
colour; S = the model's input size), already center-cropped and resized as the kit does; it divides
by 255, makes three channels and normalises as the backbone's weights expect, so a station cannot
feed it the wrong normalisation. ``<FILE>.preprocessing.json`` says the crop, the size, the resize,
the classes, the target class and the operating point.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io import atomic_write, atomic_write_json
from .bundle import SavedModel

FORMATS = ("onnx", "torchscript")


class Exportable(nn.Module):
    """Pixels (0-255, already cropped and resized) -> logits, the backbone's normalisation folded in."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], channels: int):
        super().__init__()
        self.net = net
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels / 255.0
        if self.channels == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net((x - self.mean) / self.std)


def station_pixels(model: SavedModel, images: np.ndarray) -> np.ndarray:
    """What the exported graph takes for uint8 images: the kit's crop and resize, on the 0-255 scale,
    ``N x C x S x S`` float32."""
    from .. import models

    pre = model.meta["preprocessing"]
    x = models.unit_images(torch.as_tensor(np.asarray(images)))
    frac = pre["crop_fraction"]
    if frac < 1.0:
        h, w = x.shape[-2:]
        ch, cw = round(h * frac), round(w * frac)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top:top + ch, left:left + cw]
    size = pre["input_size"]
    if x.shape[-2:] != (size, size):
        u8 = (x * 255).round().to(torch.uint8)
        x = torch.nn.functional.interpolate(u8, size=(size, size), mode="bilinear", align_corners=False,
                                            antialias=True).float() / 255
    return (x * 255).numpy().astype(np.float32)


def export(model: SavedModel, fmt: str, out: str | os.PathLike, check_images: np.ndarray) -> dict:
    """Write ``model`` as ``fmt`` to a new file ``out`` and check it on ``check_images`` (uint8, as the
    model was trained on) against the PyTorch model: the largest absolute logit difference and whether
    every decision is the same. Returns that check; the preprocessing goes to ``<out>.preprocessing.json``."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new file (nothing is overwritten)")
    pre = model.meta["preprocessing"]
    channels = 1 if np.asarray(check_images).ndim == 3 else 3
    graph = Exportable(model.net.cpu().eval(), pre["mean"], pre["std"], channels).eval()
    pixels = station_pixels(model, check_images)
    example = torch.from_numpy(pixels[:2])
    if fmt == "onnx":
        def write(tmp: Path) -> None:
            torch.onnx.export(graph, (example,), str(tmp), input_names=["pixels"], output_names=["logits"],
                              dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                              dynamo=False)
    else:
        def write(tmp: Path) -> None:
            with torch.no_grad():
                torch.jit.trace(graph, example).save(str(tmp))
    with warnings.catch_warnings():  # the exporters' own notes on tracing, not about this model
        warnings.simplefilter("ignore")
        atomic_write(out, write)
    exported = run_exported(out, fmt, pixels)
    with torch.inference_mode():
        reference = model.net(model.preprocess(check_images)).double().numpy()
    check = {"images": len(pixels), "max_abs_logit_difference": float(np.abs(exported - reference).max()),
             "same_decisions": bool((exported.argmax(1) == reference.argmax(1)).all())}
    atomic_write_json(Path(f"{out}.preprocessing.json"), {
        "format": fmt, "input": {"name": "pixels", "dtype": "float32", "shape": ["N", channels, pre["input_size"],
                                                                                   pre["input_size"]],
                                 "scale": "0-255 gray levels (or RGB), as stored; the graph normalises"},
        "steps": [f"read the image as {'8-bit gray' if channels == 1 else '8-bit RGB'}, resized to "
                  f"{pre['image_size']} x {pre['image_size']} (bilinear), as the training images were",
                  f"center crop of {pre['crop_fraction']:g} of each side",
                  f"resize to {pre['input_size']} x {pre['input_size']} (bilinear, antialiased)"],
        "class_names": model.class_names, "target_class": model.target_class,
        "operating_point": model.meta.get("operating_point"), "check": check})
    return check


def run_exported(path: Path, fmt: str, pixels: np.ndarray) -> np.ndarray:
    """Logits of an exported file on ``pixels``: onnxruntime for ONNX, torch.jit for TorchScript."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(["logits"], {"pixels": pixels})[0], np.float64)
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return loaded(torch.from_numpy(pixels)).double().numpy()


def check_to_text(check: dict) -> str:
    same = "all equal" if check["same_decisions"] else "DIFFER"
    return (f"checked on {check['images']} images against the PyTorch model: largest logit difference "
            f"{check['max_abs_logit_difference']:.2e}, decisions {same}")


