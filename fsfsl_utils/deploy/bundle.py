"""A trained model as one self-describing folder that cannot run code when it is loaded.

    <folder>/model.safetensors   every weight (safetensors: tensors only, nothing to unpickle)
    <folder>/model.json          what it is: format and versions, training mode and config, the
                                 preprocessing (backbone, input size, crop, normalisation, image size
                                 and mode), class names, target and reference class, the operating
                                 point chosen for it, the training data's fingerprint, the run
                                 record it came from, the weights' SHA-256

Every training mode the kit has is saved as the same end-to-end network (:class:`EndToEnd`:
preprocessed image -> logits): a fine-tuned classifier; the frozen lower blocks and the trained top
blocks of ``top``; the frozen backbone and the probe's head. Loading builds that network without
pretrained weights and fills it from the file, after checking the format, the kit version and the
weights' checksum; anything else is refused with :class:`ModelError` naming the file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import models
from ..config import TrainConfig
from ..io import atomic_write, atomic_write_json

FORMAT = "fsfsl-model/1"
WEIGHTS, META = "model.safetensors", "model.json"


class ModelError(ValueError):
    """A saved model that cannot be trusted or used: the message names the file and why."""


def kit_version() -> str:
    try:
        return metadata.version("fsfsl")
    except metadata.PackageNotFoundError:  # pragma: no cover - the kit run from a source tree
        return "0+unknown"


class EndToEnd(nn.Module):
    """A preprocessed image batch (:func:`fsfsl_utils.models.preprocess`) -> logits, whatever the mode:
    ``body`` is the classifier (finetune), the lower blocks then the trained top (top), or the frozen
    backbone then the probe's head (probe)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build(mode: str, cfg: TrainConfig, n_classes: int, trained: nn.Module | None = None) -> EndToEnd:
    """The end-to-end network of a training ``mode``: around ``trained`` (a FitResult's model) with the
    backbone's pretrained frozen parts, or, without it, an empty copy to load weights into."""
    weights = None if trained is None else cfg.weights
    if mode == "finetune":
        body = trained if trained is not None else models.build_classifier(cfg.backbone, n_classes, None)
    elif mode == "top":
        from ..train.top import TopClassifier

        backbone = models.build_backbone(cfg.backbone, weights)
        lower, upper = models.split_backbone(backbone, cfg.backbone, cfg.trained_blocks)
        top = trained if trained is not None else TopClassifier(upper, models.get_spec(cfg.backbone).feature_dim,
                                                                n_classes)
        body = nn.Sequential(lower, top)
    elif mode == "probe":
        from ..train import ProbeHead

        dim = models.get_spec(cfg.backbone).feature_dim
        head = trained if trained is not None else ProbeHead(np.zeros(dim), np.ones(dim), n_classes)
        body = nn.Sequential(models.build_backbone(cfg.backbone, weights), head)
    else:
        raise ModelError(f"unknown training mode {mode!r}: the kit saves finetune, top and probe models")
    return EndToEnd(body).eval()


@dataclass
class SavedModel:
    """A loaded (or about to be saved) model: its network and what it is (``meta``, as in model.json)."""

    net: EndToEnd
    meta: dict
    path: Path | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.meta["config"])

    @property
    def target_class(self) -> str:
        return self.meta["target_class"]

    @property
    def threshold(self) -> float | None:
        """The operating point's threshold on the target class's probability (None: argmax)."""
        point = self.meta.get("operating_point") or {}
        return point.get("threshold")

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images (``N x H x W`` gray or ``N x H x W x 3``) -> the network's input."""
        pre = self.meta["preprocessing"]
        x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
        return models.preprocess(x.to(self.device), pre["backbone"], pre["input_size"], pre["crop_fraction"])

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def logits(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.net(self.preprocess(images)).double().cpu().numpy()

    def decide(self, logits: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(target-class probability, predicted class index) of each image: the target when its
        probability reaches ``threshold`` (default: the saved operating point), else the most
        probable other class; argmax when there is no threshold."""
        z = np.asarray(logits, float)
        prob = np.exp(z - z.max(1, keepdims=True))
        prob /= prob.sum(1, keepdims=True)
        t = self.class_names.index(self.target_class)
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            return prob[:, t], prob.argmax(1)
        others = prob.copy()
        others[:, t] = -1
        return prob[:, t], np.where(prob[:, t] >= threshold, t, others.argmax(1))


def from_fit(fit: object, cfg: TrainConfig, class_names: list[str], target_class: str, reference_class: str,
             image_mode: str = "L", record: dict | None = None, train_names: list[str] | None = None,
             operating_point: dict | None = None) -> SavedModel:
    """A :class:`SavedModel` of a finished training (``fit``: a :class:`fsfsl_utils.train.FitResult`;
    ``image_mode``: "L" for gray images, "RGB" for colour, as the training images were)."""
    net = build(fit.mode, cfg, len(class_names), fit.model).cpu().eval()
    spec = models.get_spec(cfg.backbone)
    meta = {
        "format": FORMAT, "kit_version": kit_version(), "torch": torch.__version__,
        "python": platform.python_version(), "created": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": fit.mode, "config": cfg.as_dict(), "class_names": list(class_names),
        "target_class": target_class, "reference_class": reference_class,
        "preprocessing": {"backbone": cfg.backbone, "input_size": cfg.input_size, "crop_fraction": cfg.crop_fraction,
                          "mean": list(spec.mean), "std": list(spec.std), "image_size": 300, "image_mode": image_mode,
                          "resize": "bilinear, antialiased, from the stored image to input_size after the crop"},
        "operating_point": operating_point,
        "data_fingerprint": fingerprint(train_names) if train_names else None,
        "record": None if record is None else {k: record.get(k) for k in ("step", "seed", "split_seed", "profile",
                                                                          "created", "_path", "source")}
                                                | {"validation_accuracy": record.get("metrics", {}).get("accuracy")},
    }
    return SavedModel(net, meta)


def fingerprint(names: list[str]) -> str:
    """SHA-256 of the training images' names, sorted: which data a model was trained on."""
    return hashlib.sha256("\n".join(sorted(map(str, names))).encode()).hexdigest()


def save(model: SavedModel, folder: str | os.PathLike) -> Path:
    """Write ``model`` into a new ``folder`` (refused when it exists: nothing is overwritten): weights
    as safetensors, then model.json with their SHA-256, each atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"model folder {folder} exists: choose a new one (a saved model is never overwritten)")
    folder.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    meta = {**model.meta, "weights_sha256": _sha256(folder / WEIGHTS)}
    atomic_write_json(folder / META, meta)
    model.meta, model.path = meta, folder
    return folder


def load(folder: str | os.PathLike, device: str | None = "cpu") -> SavedModel:
    """A saved model, checked: its format, a kit of the same major version, the weights' checksum, and
    weights that fill the network of its mode exactly. ModelError names the file otherwise."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a saved model (a folder with {META} and {WEIGHTS})")
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{folder / META} is missing or unreadable ({type(err).__name__}): "
                         "not a saved model") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{folder / META} has format {meta.get('format') if isinstance(meta, dict) else None!r}; "
                         f"this kit reads {FORMAT!r}")
    saved, mine = str(meta.get("kit_version", "")), kit_version()
    if saved.split(".")[0] != mine.split(".")[0]:
        raise ModelError(f"{folder} was saved by fsfsl {saved or 'of unknown version'}; this is {mine}: "
                         "retrain or load it with that version")
    if _sha256(folder / WEIGHTS) != meta.get("weights_sha256"):
        raise ModelError(f"{folder / WEIGHTS} does not match the checksum in {META}: damaged or replaced")
    try:
        cfg = TrainConfig.from_dict(meta["config"])
        net = build(meta["mode"], cfg, len(meta["class_names"]))
        state = load_file(str(folder / WEIGHTS))
        net.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError, SafetensorError, OSError) as err:
        raise ModelError(f"{folder} cannot be loaded: {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    return SavedModel(net.to(models.pick_device(device)).eval(), meta, folder)


def _sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None
