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

Decoding straight to a smaller size (``read_image(path, size=(w, h))``, for callers that downscale
anyway, e.g. the large-image rule of :mod:`autoscale.predict`): the result is exactly ``w x h``,
the exact area average (``cv2.INTER_AREA``'s) of the image, with the geometry of
:class:`autoscale.data.preprocess.ResizeRule`: output pixel ``(r, c)`` covers the input rectangle
``[c W/w, (c+1) W/w) x [r H/h, (r+1) H/h)``, so a point maps as ``x' = x w / W``, ``y' = y h / H``
(``W x H``: the image's size as returned without ``size``, after the EXIF orientation when
``exif=True``). Unless ``draft=False``, a JPEG at least ``2 x`` the target per axis
(:data:`DRAFT_GAP`) is decoded by the decoder itself at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling
through Pillow's ``draft``: the largest factor ``s`` with ``W_stored // s >= 2 w_stored`` and
``H_stored // s >= 2 h_stored``), so its full-resolution pixels never exist in memory: a 12000 x
8000 JPEG decoded for the 2048-pixel cap peaks at ~0.2 GB instead of ~0.9 GB, and takes half the
time. The reduced decode covers the stored image's ``[0, W/s) x [0, H/s)`` (its last row / column
may stand for a partial block of ``s`` pixels); exactly that box is area-averaged to the target
(``cv2.INTER_AREA`` when ``s`` divides both sides, else :func:`_area_resize`) before the EXIF
orientation is applied, so the geometry above holds exactly. Only the pixel values differ from a
full decode + area resize, because DCT-domain scaling is not an exact block average: ~1 grey level
on average on ShanghaiTech photos (up to ~3 for targets below 1/8 of a very textured image); a
trained Lite0 (ShanghaiTech A) then counts 1.2 % differently per image on average (+0.4 % in
total), where a Lanczos resize instead of the area average moves its counts by 6.4 %. Every other
case (other formats, smaller reductions) decodes fully and resizes with ``cv2.INTER_AREA``:
bit-identical to ``read_image(path)`` followed by the large-image rule's resize.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from autoscale.errors import ConfigError, DataError

__all__ = ["read_image", "image_size", "to_rgb_array", "max_pixels", "check_pixels", "DEFAULT_MAX_PIXELS",
           "MAX_PIXELS_ENV", "DRAFT_GAP"]

#: Largest image (width x height, as its header declares) decoded by default: 250 million pixels,
#: well above any camera photo (200 MP phones) and far below a decompression bomb's billions.
DEFAULT_MAX_PIXELS = 250_000_000
#: Environment variable overriding :data:`DEFAULT_MAX_PIXELS` (pixels, or ``none`` = no limit).
MAX_PIXELS_ENV = "AUTOSCALE_MAX_PIXELS"
# Guards Pillow's module-global limit while we swap it (module docstring).
_PILLOW_LOCK = threading.Lock()

#: A JPEG is reduced by the decoder only while the reduced image keeps at least this many pixels
#: per target pixel along each axis (Pillow's ``thumbnail`` default): the final area average then
#: spans >= 2 decoded pixels, which keeps the result within ~1 grey level of a full decode.
DRAFT_GAP = 2

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transposes / 90-degree rotations swap width and height
#: EXIF orientation -> the array transform that shows the stored pixels upright (what
#: ``PIL.ImageOps.exif_transpose`` does: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
#: clockwise, 7 transverse, 8 rotate 90 counter-clockwise). Views; the caller copies once.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


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
    """A loaded Pillow image as ``uint8 (H, W, 3)`` RGB, by the mode rules of the module docstring."""
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


def _cv2() -> Any:
    """OpenCV, imported on first use (importing this module stays light)."""
    import cv2

    return cv2


def _area_rows(a: np.ndarray, extent: float, n: int, chunk: int = 128) -> np.ndarray:
    """Exact area average along axis 1 of ``a`` ``(R, L, C)``: output ``[:, i]`` is the mean of the
    piecewise constant signal (sample ``j`` on ``[j, j+1)``) over ``[i e/n, (i+1) e/n)``,
    ``e = extent <= L``. Prefix sums in float64, ``chunk`` rows at a time; ``(R, n, C)`` float32."""
    length = a.shape[1]
    step = extent / n
    edges = np.arange(n + 1) * step
    k = np.minimum(np.floor(edges).astype(np.intp), length - 1)
    frac = (edges - k)[:, None]
    out = np.empty((a.shape[0], n, a.shape[2]), dtype=np.float32)
    cs = np.empty((min(chunk, a.shape[0]), length + 1, a.shape[2]), dtype=np.float64)
    cs[:, 0] = 0.0
    for r0 in range(0, a.shape[0], chunk):
        sub = np.ascontiguousarray(a[r0:r0 + chunk])
        c = cs[:len(sub)]
        np.cumsum(sub, axis=1, dtype=np.float64, out=c[:, 1:])
        integral = c[:, k] + frac * sub[:, k]  # the signal's integral from 0 to each edge
        out[r0:r0 + len(sub)] = (integral[:, 1:] - integral[:, :-1]) / step
    return out


def _area_resize(arr: np.ndarray, size: tuple[int, int], extent: tuple[float, float]) -> np.ndarray:
    """The exact area average of ``arr``'s box ``[0, extent_x) x [0, extent_y)`` (pixels as unit
    squares) on a ``size = (width, height)`` grid, rounded to ``uint8``; ``cv2.INTER_AREA``'s
    result (within rounding) when the extent is the whole array."""
    rows = _area_rows(arr, float(extent[0]), int(size[0]))  # (H_r, w, 3)
    cols = _area_rows(rows.transpose(1, 0, 2), float(extent[1]), int(size[1]))  # (w, h, 3)
    return np.ascontiguousarray(np.clip(np.rint(cols), 0, 255).astype(np.uint8).transpose(1, 0, 2))


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8) of an opened image; 1 when absent, unknown or unreadable
    (a corrupt EXIF block does not make the pixels unreadable)."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, KeyError):
        return 1
    return value if type(value) is int and value in _ORIENT else 1


def _target_size(path: Path, size: tuple[int, int], shown: tuple[int, int]) -> tuple[int, int]:
    """``size`` checked: two whole numbers in ``1..W`` and ``1..H`` of the image as returned."""
    try:
        w, h = (int(v) for v in size)
        ok = len(tuple(size)) == 2 and all(int(v) == v for v in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or not (1 <= w <= shown[0] and 1 <= h <= shown[1]):
        raise ConfigError(f"{path}: size must be (width, height) with 1 <= width <= {shown[0]} and "
                          f"1 <= height <= {shown[1]} (decoding only reduces), got {size!r}")
    return w, h


def read_image(path: str | PathLike[str], *, exif: bool = False, size: tuple[int, int] | None = None,
               draft: bool = True) -> np.ndarray:
    """Decode an image file to a ``uint8 (H, W, 3)`` RGB array (see the module docstring).

    Args:
        path: image file (any format Pillow reads: JPEG, PNG, BMP, TIFF, ...).
        exif: apply the EXIF orientation tag (as ``PIL.ImageOps.exif_transpose``). Off by default:
            dataset annotations refer to the stored pixel grid. An unreadable EXIF block counts as
            no orientation.
        size: ``(width, height)`` to decode to, at most the image's own size (after ``exif``):
            area-averaged with exact geometry, a JPEG reduced by the decoder on the way (module
            docstring, "Decoding straight to a smaller size"). None: full resolution.
        draft: with ``size``, let the JPEG decoder reduce (default). False: decode fully, then
            area-average: bit-identical to ``read_image(path)`` + ``cv2.INTER_AREA``, at the cost
            of the full-resolution decode in memory.

    Raises:
        DataError: missing file, unrecognised format, truncated or corrupt data, or a declared size
            above :func:`max_pixels`.
        ConfigError: a ``size`` that is not ``(width, height)`` within the image's size.
    """
    p = Path(path)
    img = _open(p)
    try:
        with img, _decoding(p, img.size):
            orientation = _orientation(img) if exif else 1
            swap = orientation in _SWAPPING_ORIENTATIONS
            box = None
            want = target = None
            if size is not None:
                W, H = img.size
                want = _target_size(p, size, (H, W) if swap else (W, H))
                target = want[::-1] if swap else want  # in the stored orientation
                if draft and target != (W, H):  # JPEG: DCT-domain 1/2, 1/4, 1/8; other formats: None
                    drafted = img.draft(None, (target[0] * DRAFT_GAP, target[1] * DRAFT_GAP))
                    if drafted is not None and img.size != (W, H):
                        box = drafted[1]  # the stored image's extent in reduced pixels: (0, 0, W/s, H/s)
            img.load()  # full (or reduced) decode: raises on truncated / corrupt data
            arr = to_rgb_array(img)
    except (DataError, ConfigError):
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(p, f"cannot decode image: {exc}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(p, f"cannot decode image: unexpected decoded shape {arr.shape}")
    if box is not None:  # reduced by the decoder: area-average exactly the image's box to the target
        if (box[2], box[3]) == arr.shape[1::-1]:  # s divides W and H: the box is the whole array
            arr = _cv2().resize(arr, target, interpolation=_cv2().INTER_AREA)
        else:
            arr = _area_resize(arr, target, (box[2], box[3]))
    if orientation != 1:
        arr = _ORIENT[orientation](arr)
    if want is not None and box is None and arr.shape[1::-1] != want:
        # Full decode: the large-image rule's resize (ResizeRule.apply), after the orientation.
        arr = _cv2().resize(np.ascontiguousarray(arr), want, interpolation=_cv2().INTER_AREA)
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
        if exif and _orientation(img) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
    if width <= 0 or height <= 0:
        raise DataError(p, f"cannot decode image: invalid size {width}x{height}")
    return int(width), int(height)
