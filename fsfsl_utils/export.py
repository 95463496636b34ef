"""Export a saved model for an inspection station: ONNX or TorchScript, checked on real images.

    python -m fsfsl_utils.export MODEL --format onnx|torchscript --out FILE [--check-images FOLDER]

The exported graph takes float pixels (0-255, ``N x C x S x S``, cropped and resized as the kit
does) and folds the backbone's normalisation in; ``FILE.preprocessing.json`` says the rest. Before
it is kept, the export is run (onnxruntime / torch.jit) on real images, the model's own validation
images when it was trained on ELPV (else ``--check-images``), beside the PyTorch model: the largest
logit difference and whether every decision is equal are printed and written into the JSON.
Exit status: 0, 1 when the export's decisions differ, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import data
from .deploy import bundle, exporting

CHECK_IMAGES = 64


def check_images(model: bundle.SavedModel, folder: str | None = None, count: int = CHECK_IMAGES) -> np.ndarray:
    """Real images to check an export on: ``count`` files of ``folder``, or the first ``count`` validation
    images of the ELPV split the model was judged on."""
    pre = model.meta["preprocessing"]
    if folder:
        from .predict import image_files

        files = image_files([folder])[:count]
        if not files:
            raise data.DataError(f"no images in {folder} to check the export on")
        return np.stack([np.asarray(data.read_image(f, pre["image_size"], pre["image_mode"])) for f in files])
    record = model.meta.get("record") or {}
    source = str(record.get("source") or "")
    if source != "elpv":
        raise ValueError("the model was not trained on ELPV: give --check-images FOLDER with images like its own")
    _, val = data.split(data.load_elpv("study"), seed=int(record.get("split_seed") or 0))
    return val.images[:count]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved model folder (model.json + model.safetensors)")
    parser.add_argument("--format", required=True, choices=exporting.FORMATS)
    parser.add_argument("--out", required=True, help="the file to write (.onnx or .pt); must not exist")
    parser.add_argument("--check-images", default="", help="a folder of images to check the export on "
                                                            "(default: the model's ELPV validation images)")
    args = parser.parse_args(argv)
    try:
        model = bundle.load(args.model)
        images = check_images(model, args.check_images or None)
        check = exporting.export(model, args.format, Path(args.out), images)
    except (bundle.ModelError, data.DataError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and {args.out}.preprocessing.json; {exporting.check_to_text(check)}")
    return 0 if check["same_decisions"] else 1


if __name__ == "__main__":
    sys.exit(main())
