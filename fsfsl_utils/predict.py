"""Score new images with a saved model: a CSV of every image and an HTML page of the highest scores.

    python -m fsfsl_utils.predict MODEL IMAGES... --out OUT [--threshold T] [--batch 32] [--page 100]
                                  [--no-heat-maps] [--no-progress]

``MODEL`` is a folder written by :func:`fsfsl_utils.deploy.save` (a notebook's or the main job's
``models/<step>``); ``IMAGES`` are image files or folders (searched recursively; PNG, JPEG, BMP, TIFF,
WebP). Images are read one batch at a time, as training read them (any bit depth, gray or colour,
resized to the model's image size), so memory does not grow with the folder. ``OUT`` is a new
folder: ``predictions.csv`` (file, score = the target class's probability, predicted class,
threshold used) and ``predictions.html`` (the ``--page`` highest-scoring images, with their Grad-CAM
heat maps). A file that cannot be read is named, skipped and counted; images of another size or
colour than the model was trained on are counted in a warning. Exit status: 0, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import csv
import heapq
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from . import data
from .deploy import bundle
from .progress import progress_bar

PAGE = 100


def image_files(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named or found (recursively, sorted) in the folders named; hidden files, macOS
    ``._`` files and ``__MACOSX`` folders skipped. FileNotFoundError names a missing input."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in data.IMAGE_SUFFIXES
                            and not any(part.startswith(".") or part in data.NOT_CLASSES
                                        for part in p.relative_to(item).parts))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"image input {item} does not exist")
    return found


def _batches(files: Sequence[Path], size: int, mode: str, batch: int, skipped: list[str],
             odd: dict[str, int]) -> Iterator[tuple[list[Path], np.ndarray]]:
    """Decoded batches of ``files`` (bad files skipped into ``skipped``, odd sizes and colours counted)."""
    paths, images = [], []
    for path in files:
        try:
            original = data.image_header(path)
            image = np.asarray(data.read_image(path, size, mode))
        except data.DataError as err:
            skipped.append(str(err))
            continue
        if original["size"] != (size, size):
            odd["size"] += 1
        if (original["mode"] in data.GRAY_MODES) != (mode == "L"):
            odd["colour"] += 1
        paths.append(path)
        images.append(image)
        if len(images) == batch:
            yield paths, np.stack(images)
            paths, images = [], []
    if images:
        yield paths, np.stack(images)


def score(model: bundle.SavedModel, inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
          threshold: float | None = None, batch: int = 32, page: int = PAGE, heat_maps: bool = True,
          progress: bool | None = None) -> dict:
    """Score every image of ``inputs`` into a new folder ``out`` (see the module docstring); returns
    counts: ``scored``, ``skipped`` (with the reasons), ``other_size``, ``other_colour`` and the paths."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"output folder {out} exists: choose a new one (nothing is overwritten)")
    if threshold is not None and not 0 < threshold < 1:
        raise ValueError(f"--threshold must lie strictly between 0 and 1, got {threshold}")
    files = image_files(inputs)
    if not files:
        raise data.DataError(f"no images ({', '.join(data.IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    pre = model.meta["preprocessing"]
    size, mode = pre["image_size"], pre["image_mode"]
    used = model.threshold if threshold is None else threshold
    names = model.class_names
    out.mkdir(parents=True)
    skipped: list[str] = []
    odd = {"size": 0, "colour": 0}
    best: list[tuple[float, int, str]] = []  # the page's images: a heap of the highest scores
    scored = 0
    tmp = out / ".predictions.csv.partial"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "score", "predicted", "threshold"])
        chunks = _batches(files, size, mode, batch, skipped, odd)
        for paths, images in progress_bar(chunks, desc="predict", enable=progress,
                                          total=(len(files) + batch - 1) // batch, unit="batch"):
            prob, pred = model.decide(model.logits(images), used)
            for path, p, k in zip(paths, prob, pred):
                writer.writerow([str(path), f"{p:.6f}", names[k], "" if used is None else f"{used:.6f}"])
                item = (float(p), scored, str(path))
                heapq.heappush(best, item) if len(best) < page else heapq.heappushpop(best, item)
                scored += 1
    os.replace(tmp, out / "predictions.csv")
    top = sorted(best, reverse=True)
    _write_page(model, top, out / "predictions.html", size, mode, used, heat_maps)
    if skipped:
        print(f"skipped {len(skipped)} file(s) that could not be read:", file=sys.stderr)
        for reason in skipped[:20]:
            print(f"  {reason}", file=sys.stderr)
    for what, count in odd.items():
        if count:
            kind = f"not {pre['image_size']} x {pre['image_size']}" if what == "size" else \
                ("colour" if mode == "L" else "gray")
            warnings.warn(f"{count} of {scored + len(skipped)} images are {kind}, unlike the images the model was "
                          "trained on: they were converted, and scores of such images are less certain", stacklevel=2)
    return {"scored": scored, "skipped": len(skipped), "skipped_reasons": skipped, "other_size": odd["size"],
            "other_colour": odd["colour"], "csv": out / "predictions.csv", "html": out / "predictions.html"}


def _png(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


PAGE_TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fsfsl predictions</title>
<style>body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} .grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:310px} img{width:150px;height:150px;image-rendering:auto} figcaption{font-size:.8em;
overflow-wrap:anywhere}</style></head><body>
<h1>{{ title }}</h1><p>{{ note }}</p><div class="grid">
{% for item in items %}<figure><img alt="cell" src="data:image/png;base64,{{ item.image }}">
{% if item.cam %}<img alt="heat map" src="data:image/png;base64,{{ item.cam }}">{% endif %}
<figcaption>{{ item.file }}<br>score {{ item.score }} - {{ item.label }}</figcaption></figure>
{% endfor %}</div></body></html>"""


def _write_page(model: bundle.SavedModel, top: list[tuple[float, int, str]], path: Path, size: int, mode: str,
                threshold: float | None, heat_maps: bool) -> None:
    import jinja2

    from .deploy import cam
    from .io import atomic_write

    images = np.stack([np.asarray(data.read_image(Path(f), size, mode)) for _, _, f in top]) if top else None
    maps = cam.heat_maps(model, images) if heat_maps and images is not None else None
    logits = np.concatenate([model.logits(images[s:s + 16]) for s in range(0, len(images), 16)]) \
        if images is not None else None
    prob, pred = model.decide(logits, threshold) if images is not None else ([], [])
    items = [{"file": f, "score": f"{p:.3f}", "label": model.class_names[k],
              "image": _png(np.repeat(images[i][..., None], 3, -1) if images[i].ndim == 2 else images[i]),
              "cam": _png(cam.overlay(images[i], maps[i])) if maps is not None else None}
             for i, ((_, _, f), p, k) in enumerate(zip(top, prob, pred))]
    rule = f"threshold {threshold:.3f} on the {model.target_class} probability" if threshold is not None else "argmax"
    note = (f"The {len(top)} highest-scoring images, highest first (score: the probability of "
            f"{model.target_class}; decisions by {rule}); every image is in predictions.csv.")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string(PAGE_TEMPLATE).render(title="fsfsl predictions", note=note, items=items)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsfsl_utils.predict", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved model folder (model.json + model.safetensors)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", required=True, help="a new folder for predictions.csv and predictions.html")
    parser.add_argument("--threshold", type=float, default=None,
                        help="decision threshold on the target class's probability (default: the model's "
                             "operating point; argmax when it has none)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (memory does not grow beyond it)")
    parser.add_argument("--page", type=int, default=PAGE, help="images on the HTML page (the highest scores)")
    parser.add_argument("--no-heat-maps", action="store_true", help="no Grad-CAM maps on the page")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.batch < 1 or args.page < 0:
            raise ValueError("--batch must be at least 1 and --page at least 0")
        model = bundle.load(args.model)
        result = score(model, args.images, args.out, args.threshold, args.batch, args.page,
                       not args.no_heat_maps, progress=not args.no_progress)
    except (bundle.ModelError, data.DataError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"scored {result['scored']} image(s) ({result['skipped']} skipped) -> {result['csv']}, {result['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
