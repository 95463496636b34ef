"""Where a model looks: Grad-CAM heat maps of any saved model, overlaid on the cell.

Grad-CAM (Selvaraju et al. 2017) weights the last convolution's feature maps by the gradient of the
target class's logit and keeps the positive part: a coarse map of the regions that raised the
score. The kit uses Captum's ``LayerGradCam`` (PyTorch's own interpretability library: pure PyTorch,
no OpenCV, one call for every architecture the kit trains) on the end-to-end network of
:mod:`fsfsl_utils.deploy.bundle`, so fine-tuned, top-block, probe and packed-member models get maps
the same way. Maps are upsampled (bilinear) to the image, inside the center crop the model saw.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .bundle import SavedModel

BATCH = 4  # images per Grad-CAM pass: gradients through the whole network cost memory


def cam_layer(net: nn.Module) -> nn.Module:
    """The last convolution of a network (its final feature maps): EfficientNet's 1x1 head
    convolution, a ResNet's last bottleneck convolution."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the network has no convolution to take a Grad-CAM map from")
    return convs[-1]


def heat_maps(model: SavedModel, images: np.ndarray, target: int | None = None) -> np.ndarray:
    """Grad-CAM maps of ``images`` (uint8, ``N x H x W`` or ``N x H x W x 3``) for class index ``target``
    (default: the model's target class), each scaled to [0, 1], ``N x H x W`` float32."""
    from captum.attr import LayerGradCam

    images = np.asarray(images)
    target = model.class_names.index(model.target_class) if target is None else target
    cam = LayerGradCam(model.net, cam_layer(model.net))
    pre = model.meta["preprocessing"]
    h, w = images.shape[1:3]
    ch, cw = round(h * pre["crop_fraction"]), round(w * pre["crop_fraction"])
    top, left = (h - ch) // 2, (w - cw) // 2
    out = np.zeros((len(images), h, w), np.float32)
    for start in range(0, len(images), BATCH):
        x = model.preprocess(images[start:start + BATCH]).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            attr = cam.attribute(x, target=target, relu_attributions=True).detach()
        maps = F.interpolate(attr.float(), size=(ch, cw), mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
        peak = maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1)
        scaled = np.where(peak > 0, maps / np.maximum(peak, 1e-12), 0)
        out[start:start + len(maps), top:top + ch, left:left + cw] = scaled
    return out


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the cell in gray with the heat map (matplotlib's ``inferno``) blended over it."""
    from matplotlib import colormaps

    gray = image if image.ndim == 2 else image.mean(-1)
    base = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, -1)
    heat = colormaps["inferno"](np.clip(cam, 0, 1))[..., :3]
    weight = alpha * np.clip(cam, 0, 1)[..., None]
    return np.clip(255 * ((1 - weight) * base + weight * heat), 0, 255).astype(np.uint8)
