"""Image decoding: every image becomes a ``uint8 (H, W, 3)`` RGB array.

Pixel conventions: row ``r``, column ``c`` of the array is the pixel covering the continuous
square ``[c, c+1) x [r, r+1)`` of the image file *as stored*. EXIF orientation is ignored unless
``exif=True`` is asked for, because annotations of every supported dataset refer to the stored
pixel grid (see ``docs/architecture.md``).

Mode handling (Pillow modes):

* ``RGB``: as is.  ``L`` / ``1`` (grayscale, bilevel): replicated to three channels.
* ``P`` (palette): expanded through the palette; a transparent palette entry composites on black.
* ``RGBA`` / ``LA`` / ``PA`` / ``La`` / ``RGBa``: alpha dropped after compositing on black,
  i.e. ``rgb * alpha / 255`` (rounded).
* ``I;16*`` (16-bit grayscale) and ``I`` (32-bit integer; 16-bit PNGs may load like this): scaled
  to 8 bits by the format's bit depth, ``round(v / 257)`` for 16-bit data (the exact inverse of
  the usual 8 -> 16 bit expansion ``v * 257``); an ``I`` image whose values exceed 65535 is
  scaled by ``2**32 - 1`` instead.  ``F`` (float): clipped to ``[0, 255]`` and rounded.
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's conversion to RGB.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autoscale.errors import DataError

__all__ = ["read_image", "image_size", "to_rgb_array"]

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transposes / 90-degree rotations swap width and height


def _open(path: Path) -> Image.Image:
    """Open lazily (header only), translating every failure into :class:`DataError`."""
    if not path.exists():
        raise DataError(path, "image file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file (expected an image)")
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        raise DataError(path, "cannot decode image: not a recognised image format") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises SyntaxError for some headers
        raise DataError(path, f"cannot decode image: {exc}") from None


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:4].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("L", "1"):
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        if has_alpha:
            return _composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        if mode in ("La", "RGBa"):  # premultiplied alpha: colour channels are already composited
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
        return _composite_on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I":
        v = np.asarray(img).astype(np.int64)
        v = np.clip(v, 0, None)
        if mode == "I" and v.size and int(v.max()) > 0xFFFF:
            gray = np.rint(v / ((2**32 - 1) / 255.0))
        else:
            gray = (v + 128) // 257  # round(v / 257) for integers
        gray = np.clip(gray, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    # CMYK, YCbCr, LAB, HSV and anything else Pillow can convert.
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | PathLike[str], *, exif: bool = False) -> np.ndarray:
    """Decode an image file to a ``uint8 (H, W, 3)`` RGB array (see the module docstring).

    Args:
        path: image file (any format Pillow reads: JPEG, PNG, BMP, TIFF, ...).
        exif: apply the EXIF orientation tag (``ImageOps.exif_transpose``). Off by default: dataset
            annotations refer to the stored pixel grid.

    Raises:
        DataError: missing file, unrecognised format, truncated or corrupt data.
    """
    p = Path(path)
    img = _open(p)
    try:
        with img:
            img.load()  # full decode: raises on truncated / corrupt data
            if exif:
                img = ImageOps.exif_transpose(img)
            arr = to_rgb_array(img)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(p, f"cannot decode image: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(p, f"cannot decode image: unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def image_size(path: str | PathLike[str], *, exif: bool = False) -> tuple[int, int]:
    """``(width, height)`` in pixels, read from the file header only (no pixel decoding).

    With ``exif=True`` the size after applying the EXIF orientation is returned (width and height
    swap for orientations 5-8). Truncated pixel data is *not* detected here; :func:`read_image` is.

    Raises:
        DataError: missing file or unrecognised / corrupt header.
    """
    p = Path(path)
    img = _open(p)
    with img:
        width, height = img.size
        if exif:
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
            except (OSError, ValueError, SyntaxError, EOFError):
                orientation = 1
            if orientation in _SWAPPING_ORIENTATIONS:
                width, height = height, width
    if width <= 0 or height <= 0:
        raise DataError(p, f"cannot decode image: invalid size {width}x{height}")
    return int(width), int(height)
