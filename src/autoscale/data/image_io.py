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

Decoding limit: an image whose header declares more than :func:`max_pixels` pixels (width x
height; default :data:`DEFAULT_MAX_PIXELS` = 250 million, e.g. 20000 x 12500) is refused with a
:class:`DataError` naming the file and the declared size, before any pixel is decoded (a
"decompression bomb" declares billions of pixels in a few bytes). Set the environment variable
``AUTOSCALE_MAX_PIXELS`` (a number of pixels, or ``none`` for no limit; the CLI's ``--max-pixels``
sets it) to change it. Below the limit Pillow's own ``DecompressionBombWarning`` / ``Error`` (89 /
179 million pixels by default) never fire: this limit replaces Pillow's while we decode. (Pillow's
limit is a module global: headers are parsed with it off, under a short lock; an image larger than
Pillow's limit is decoded under that lock with Pillow's limit set to ours; every other image
decodes without the lock, in parallel with other threads.) The same limit applies to video frames
(:mod:`autoscale.predict`).
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from autoscale.errors import ConfigError, DataError

__all__ = ["read_image", "image_size", "to_rgb_array", "max_pixels", "check_pixels", "DEFAULT_MAX_PIXELS",
           "MAX_PIXELS_ENV"]

#: Largest image (width x height, as its header declares) decoded by default: 250 million pixels,
#: well above any camera photo (200 MP phones) and far below a decompression bomb's billions.
DEFAULT_MAX_PIXELS = 250_000_000
#: Environment variable overriding :data:`DEFAULT_MAX_PIXELS` (pixels, or ``none`` = no limit).
MAX_PIXELS_ENV = "AUTOSCALE_MAX_PIXELS"
# Guards Pillow's module-global limit while we swap it (module docstring).
_PILLOW_LOCK = threading.Lock()

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transposes / 90-degree rotations swap width and height


def max_pixels() -> int | None:
    """The decoding limit in pixels: ``$AUTOSCALE_MAX_PIXELS`` when set (``none``/``0`` = no
    limit), else :data:`DEFAULT_MAX_PIXELS`. A malformed value is a :class:`ConfigError`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if raw.lower() in ("none", "off", "0"):
        return None
    try:
        value = float(raw.replace("_", ""))
    except ValueError:
        value = float("nan")
    if not (value >= 1 and value == int(value)):
        raise ConfigError(f"environment variable {MAX_PIXELS_ENV}={raw!r}: expected a positive whole number "
                          f"of pixels (e.g. 400000000) or 'none'")
    return int(value)


def check_pixels(path: str | PathLike[str], width: int, height: int, limit: int | None = -1) -> None:
    """Refuse an image (or video frame) of ``width x height`` above ``limit`` (default
    :func:`max_pixels`; None = no limit) with a one-line :class:`DataError`."""
    if limit == -1:
        limit = max_pixels()
    if limit is not None and int(width) * int(height) > limit:
        raise DataError(path, f"image declares {width}x{height} = {int(width) * int(height):,} pixels, above the "
                              f"decoding limit of {limit:,} (possible decompression bomb; raise the limit with "
                              f"{MAX_PIXELS_ENV}=N or --max-pixels N)")


def _open(path: Path) -> Image.Image:
    """Open lazily (header only), translating every failure into :class:`DataError`, and refuse a
    declared size above :func:`max_pixels`. Pillow's own check is off meanwhile: ours names the
    file and the size, and a large legitimate image gets no warning."""
    limit = max_pixels()
    try:
        exists, regular = path.exists(), path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise DataError(path, f"cannot open image: {exc.strerror or exc}") from None
    if not exists:
        raise DataError(path, "image file not found")
    if not regular:
        raise DataError(path, "not a regular file (expected an image)")
    with _PILLOW_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            img = Image.open(path)
        except UnidentifiedImageError:
            raise DataError(path, "cannot decode image: not a recognised image format") from None
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises SyntaxError for some headers
            raise DataError(path, f"cannot decode image: {exc}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_pixels(path, *img.size, limit=limit)
    except DataError:
        img.close()
        raise
    return img


@contextlib.contextmanager
def _decoding(path: Path, size: tuple[int, int]) -> Iterator[None]:
    """Around the pixel decode of an image of ``size`` (checked against our limit by
    :func:`_open`). Pillow re-checks sizes while decoding (a TIFF's tiles, a GIF's frames): when
    the image is larger than Pillow's own limit, its limit is set to ours for the decode, under the
    lock, and its warning raised as an error; otherwise nothing global is touched. A part declared
    above the limit becomes a :class:`DataError`."""
    pixels = max(1, size[0]) * max(1, size[1])
    with _PILLOW_LOCK:  # our other writers only ever lift the limit: an unlocked decode never sees it lower
        pillow = Image.MAX_IMAGE_PIXELS
    if pillow is None or pixels <= pillow:
        try:
            yield
        except Image.DecompressionBombError as exc:  # a part far larger than the image itself
            raise DataError(path, f"cannot decode image: {exc}") from None
        return
    with _PILLOW_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = max_pixels()
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(path, f"cannot decode image: {exc} (raise the limit with {MAX_PIXELS_ENV}=N "
                                  f"or --max-pixels N)") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pillow


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
        DataError: missing file, unrecognised format, truncated or corrupt data, or a declared size
            above :func:`max_pixels`.
    """
    p = Path(path)
    img = _open(p)
    try:
        with img, _decoding(p, img.size):
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
        DataError: missing file, unrecognised / corrupt header, or a declared size above
            :func:`max_pixels`.
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
