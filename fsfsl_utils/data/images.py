"""Decoding one image file: headers, EXIF orientation, 16-bit and float images to 8 bits, refusals
that name the file."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dataset import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


NOT_CLASSES = ("__MACOSX",)  # folders archivers add beside the data (macOS zip metadata)


def class_dirs(folder: Path) -> list[Path]:
    """The class folders of ``folder``: hidden folders and archivers' metadata (``__MACOSX``) are skipped."""
    return sorted(d for d in folder.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name not in NOT_CLASSES)


def open_image(path: Path, draft: tuple[str, tuple[int, int]] | None = None) -> Image.Image:
    """A decoded image; ``draft`` = (mode, size) lets a JPEG decode at a reduced scale (1/2, 1/4, 1/8)
    that still covers ``size``. Unreadable files and decompression bombs raise DataError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if draft is not None and im.format == "JPEG":
                    im.draft(*draft)
                rawmode = _rawmode(im)
                im.load()
                _check_high_bit_colour(im, rawmode, path)
                return ImageOps.exif_transpose(im)  # a phone photo as it is shown, not as it is stored
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataError(f"image {path} is too large to decode safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def _rawmode(im: Image.Image) -> str:
    """How the file stores its pixels (e.g. ``RGB;16B``), from the first tile; "" when unknown."""
    try:
        args = im.tile[0][3]
    except (IndexError, TypeError, AttributeError):
        return ""
    return args if isinstance(args, str) else str(args[0]) if args else ""


def _check_high_bit_colour(im: Image.Image, rawmode: str, path: Path) -> None:
    """Pillow reads colour (and gray + alpha) files of 16 bits per channel as 8-bit, keeping the high
    byte: right for data that fill the 16 bits, but 12-bit data (common for cameras) come out as values
    0-15. Such a file is refused, naming it, rather than loaded nearly black."""
    if ";16" not in rawmode or im.mode not in ("RGB", "RGBA", "LA", "RGBX"):
        return
    colour = np.asarray(im)[..., :1 if im.mode == "LA" else 3]
    top = int(colour.max(initial=0))
    if top < 128:
        raise DataError(f"image {path} has 16 bits per colour channel but its values use fewer than 16 of them "
                        f"(the high byte reaches only {top}: 12-bit data?); Pillow reads such files to 8 bits by "
                        "their high byte, which would leave a nearly black image. Convert it to 16-bit gray or to "
                        "8 bits first")


def header_mode(path: Path) -> str:
    """An image file's Pillow mode, read from its header (no pixels decoded)."""
    try:
        with warnings.catch_warnings():  # a bomb is refused when it is decoded (open_image), with the file named
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.mode
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


GRAY_MODES = ("L", "1", "I", "I;16", "I;16B", "I;16L", "F")  # Pillow modes loaded as 8-bit gray


def image_header(path: str | os.PathLike) -> dict:
    """An image file's size and Pillow mode, from its header (nothing decoded); DataError names a bad file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return {"size": im.size, "mode": im.mode}
    except Image.DecompressionBombError as err:
        raise DataError(f"image {path} is too large to decode safely ({err}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def read_image(path: str | os.PathLike, size: int = 300, mode: str = "L") -> Image.Image:
    """One file as training reads it: any bit depth scaled to 8 bits (:func:`to_8bit`), EXIF orientation
    applied, ``mode`` "L" (gray) or "RGB", resized to ``size`` x ``size`` (bilinear). DataError names a
    file that cannot be read."""
    return read_resized(Path(path), size, mode)


def read_resized(path: Path, size: int, mode: str) -> Image.Image:
    """One file as an 8-bit ``mode`` image of ``size`` x ``size`` (bilinear). Large JPEGs decode at a
    reduced scale; a photo is reduced by whole factors before the final bilinear step
    (``reducing_gap``), so a 12 MP photo never exists in memory as more than one decoded image."""
    im = open_image(path, draft=(mode, (size, size)))
    return to_8bit(im).convert(mode).resize((size, size), Image.BILINEAR, reducing_gap=3.0)


def read_gray(path: Path) -> np.ndarray:
    return np.asarray(to_8bit(open_image(path)).convert("L"))


def to_8bit(im: Image.Image) -> Image.Image:
    """An 8-bit image from any Pillow mode, scaled instead of clipped (electroluminescence cameras often
    write 12- or 16-bit files, which a plain ``convert("L")`` clips to almost all white).

    Integer images with more than 8 bits (``I;16``, ``I``) are divided by the largest value of the
    smallest bit depth that holds their maximum (10, 12, 14, 16 or 32 bits), so a 12-bit image in a
    16-bit file keeps its full range and images of one camera keep their relative brightness.
    Float images (``F``) with values in [0, 1] are multiplied by 255; other float ranges are
    stretched from their minimum to their maximum, both taken over the finite values (an ``inf`` pixel
    becomes white, not the whole image black). 8-bit modes pass unchanged."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    x = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        finite = np.isfinite(x)
        lo, hi = (float(x[finite].min()), float(x[finite].max())) if finite.any() else (0.0, 1.0)
        x = np.where(np.isnan(x), lo, np.clip(x, lo, hi))  # +-inf take the finite range's ends, NaN its lowest
        x = x * 255 if lo >= 0 and hi <= 1 else (x - lo) / ((hi - lo) or 1) * 255
    else:
        top = float(x.max(initial=0))
        bits = next((b for b in (8, 10, 12, 14, 16, 32) if top < 2 ** b), 32)
        x = np.clip(x, 0, None) / (2 ** bits - 1) * 255
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(x)), 0, 255).astype(np.uint8), "L")
