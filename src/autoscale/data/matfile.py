"""Reading MATLAB ``.mat`` annotation files safely.

:func:`load_mat` is ``scipy.io.loadmat`` behind a structural check. SciPy's MAT v5 reader is
compiled code that trusts the file: a data element whose type code is not a numeric type (e.g.
``0xa594``, or a matrix tag where numbers belong) indexes past a C table and kills the process
with a segmentation fault, cells nested thousands deep overflow the C stack, and a header that
declares a 65536 x 65536 cell array makes it allocate tens of gigabytes before reading anything.
A corrupt annotation file must be one :class:`~autoscale.errors.DataError` line, so before SciPy
sees a level-5 file, :func:`check_mat5` walks it exactly the way SciPy's reader consumes it (same
element order, small-data-element rules, 8-byte padding, compressed variables) and refuses:

* a data element whose type has no numeric meaning where SciPy reads numbers or characters;
* an array class other than cell, struct, object, char, sparse and numeric (function handles and
  opaque objects, e.g. MATLAB class instances, never occur in annotations);
* negative dimensions, and more cells / struct entries than the remaining bytes could hold;
* nesting deeper than :data:`MAX_DEPTH` and compressed variables larger than
  :data:`MAX_DECOMPRESSED` bytes once inflated.

Everything else (truncated data, wrong shapes, bad zlib streams, v4 and v7.3 files) is left to
SciPy, whose Python-level exceptions :func:`load_mat` turns into :class:`DataError` too.
"""
from __future__ import annotations

import io
import struct
import zlib
from os import PathLike
from pathlib import Path
from typing import Any

from autoscale.errors import DataError

__all__ = ["load_mat", "check_mat5", "MAX_DEPTH", "MAX_DECOMPRESSED"]

#: Deepest nesting of cells / structs accepted (annotation files use 2-3 levels).
MAX_DEPTH = 64
#: Largest inflated size of one compressed variable (annotation files are kilobytes).
MAX_DECOMPRESSED = 256 * 1024 * 1024

# MAT v5 data types SciPy holds a numpy dtype for (miINT8 .. miUINT64, miUTF8/16/32).
_NUMERIC_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 16, 17, 18})
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 1, 5, 6, 14, 15, 16
# array classes
_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE = 1, 2, 3, 4, 5
_NUMERIC_CLASSES = frozenset(range(6, 16))
_KNOWN_CLASSES = frozenset({_CELL, _STRUCT, _OBJECT, _CHAR, _SPARSE}) | _NUMERIC_CLASSES


class _Bad(Exception):
    """A structural problem; :func:`check_mat5` turns it into a DataError."""


class _Walker:
    """Consumes a MAT v5 byte stream in the order and with the rules of SciPy's ``VarReader5``."""

    def __init__(self, data: bytes, pos: int, little: bool):
        self.data, self.pos = data, pos
        self.u4 = struct.Struct("<2I" if little else ">2I")
        self.i4 = "<i" if little else ">i"
        self.little = little

    def remaining(self) -> int:
        return max(0, len(self.data) - self.pos)

    def read(self, n: int) -> bytes:
        if n > self.remaining():
            raise _Bad("truncated data element")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u4s(self) -> tuple[int, int]:
        return self.u4.unpack(self.read(8))

    def tag(self) -> tuple[int, int, bytes | None]:
        """``(type, byte count, small-element payload or None)``."""
        first, second = self.u4s()
        if first >> 16:  # small data element: count and type packed in the first 4 bytes
            count, mdtype = first >> 16, first & 0xFFFF
            if count > 4:
                raise _Bad("malformed small data element")
            raw = second.to_bytes(4, "little" if self.little else "big")
            return mdtype, count, raw[:count]
        return first, second, None

    def element(self) -> tuple[int, bytes]:
        mdtype, count, small = self.tag()
        if small is not None:
            return mdtype, small
        payload = self.read(count)
        self.pos += (8 - count % 8) % 8  # padding to the next 8-byte boundary
        return mdtype, payload

    def numbers(self) -> int:
        mdtype, _ = self.element()
        if mdtype not in _NUMERIC_TYPES:
            raise _Bad(f"data element of type {mdtype} where numbers belong")
        return mdtype

    def int32s(self, max_bytes: int) -> list[int]:
        mdtype, count, small = self.tag()
        if small is None:
            if count > max_bytes:
                raise _Bad("too many dimensions")
            payload = self.read(count)
            self.pos += (8 - count % 8) % 8
        else:
            payload = small
        if mdtype not in (_MI_INT32, _MI_UINT32):
            raise _Bad(f"dimensions stored as type {mdtype}, expected int32")
        return [struct.unpack(self.i4, payload[i:i + 4])[0] for i in range(0, len(payload) - 3, 4)]

    def int8_string(self) -> bytes:
        mdtype, payload = self.element()
        if mdtype not in (_MI_INT8, _MI_UTF8):
            raise _Bad(f"name stored as type {mdtype}, expected int8")
        return payload

    def matrix(self, depth: int) -> None:
        """A nested array: miMATRIX tag, then header and contents (SciPy's ``read_mi_matrix``)."""
        mdtype, count = self.u4s()
        if mdtype != _MI_MATRIX:
            raise _Bad(f"data element of type {mdtype} where an array belongs")
        if count:
            self.array(depth)

    def array(self, depth: int) -> None:
        """Header (flags, dimensions, name) and contents of one array."""
        if depth > MAX_DEPTH:
            raise _Bad(f"arrays nested more than {MAX_DEPTH} deep")
        self.u4s()  # the flags element's tag
        flags, _ = self.u4s()
        mclass, is_complex = flags & 0xFF, bool(flags >> 11 & 1)
        if mclass not in _KNOWN_CLASSES:
            raise _Bad(f"unsupported array class {mclass} (function handles and objects are not annotations)")
        dims = self.int32s(128)
        self.int8_string()  # name
        if any(d < 0 for d in dims):
            raise _Bad(f"negative dimension in {dims}")
        n = 1
        for d in dims:
            n *= d
        if mclass in _NUMERIC_CLASSES:
            self.numbers()
            if is_complex:
                self.numbers()
        elif mclass == _SPARSE:
            for _ in range(4 if is_complex else 3):
                self.numbers()
        elif mclass == _CHAR:
            mdtype, payload = self.element()
            if not payload:
                if n > 1 << 20:
                    raise _Bad(f"empty character array declaring {n} characters")
            elif mdtype not in _NUMERIC_TYPES:
                raise _Bad(f"character data of type {mdtype}")
        elif mclass == _CELL:
            if n * 8 > self.remaining():
                raise _Bad(f"cell array of {n} cells in {self.remaining()} bytes")
            for _ in range(n):
                self.matrix(depth + 1)
        else:  # struct or object
            if mclass == _OBJECT:
                self.int8_string()  # class name
            lengths = self.int32s(4)
            if len(lengths) != 1 or lengths[0] <= 0:
                raise _Bad("malformed struct field-name length")
            n_fields = len(self.int8_string()) // lengths[0]
            if n * max(n_fields, 1) * 8 > self.remaining():
                raise _Bad(f"struct array of {n} x {n_fields} fields in {self.remaining()} bytes")
            for _ in range(n * n_fields):
                self.matrix(depth + 1)


def _inflate(compressed: bytes) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(compressed, MAX_DECOMPRESSED + 1)
    except zlib.error as exc:
        raise _Bad(f"corrupt compressed variable ({exc})") from None
    if len(out) > MAX_DECOMPRESSED:
        raise _Bad(f"compressed variable inflates to more than {MAX_DECOMPRESSED} bytes")
    return out


def _mat_version(data: bytes) -> tuple[int, int] | None:
    """SciPy's ``_get_matfile_version`` without raising: (0, 0) for v4, (1, x) for v5, None if unknown."""
    if len(data) < 4 or data[:4].count(0) == 4:
        return None
    if 0 in data[:4]:
        return (0, 0)
    if len(data) < 128:
        return None
    tst = data[124:128]
    maj_ind = int(tst[2] == ord("I"))
    return tst[maj_ind], tst[1 - maj_ind]


def check_mat5(data: bytes, path: str | PathLike[str] | None = None) -> None:
    """Refuse (:class:`DataError`) the level-5 MAT files SciPy's compiled reader would crash on
    or exhaust memory with (module docstring). Other versions and other problems pass through."""
    version = _mat_version(data)
    if version is None or version[0] != 1:
        return
    little = data[126:128] == b"IM"
    top = _Walker(data, 128, little)
    try:
        while top.remaining():
            mdtype, count = top.u4s()
            if count == 0:
                return  # SciPy stops here with its own error
            start = top.pos
            if mdtype == _MI_COMPRESSED:
                inner = _Walker(_inflate(data[start:start + count]), 0, little)
                if inner.remaining() >= 8:
                    mdtype2, _ = inner.u4s()
                    if mdtype2 == _MI_MATRIX:
                        inner.array(1)
            elif mdtype == _MI_MATRIX:
                top.array(1)
            top.pos = start + count
    except _Bad as exc:
        raise DataError(path, f"cannot read .mat file (corrupt: {exc})") from None
    except (struct.error, IndexError) as exc:  # pragma: no cover - the walker bounds-checks every read
        raise DataError(path, f"cannot read .mat file (corrupt: {type(exc).__name__}: {exc})") from None


def load_mat(path: str | PathLike[str]) -> dict[str, Any]:
    """``scipy.io.loadmat`` of ``path`` after :func:`check_mat5`; every failure is a :class:`DataError`."""
    import scipy.io

    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(p, f"cannot read .mat file ({exc.strerror or exc})") from None
    check_mat5(data, p)
    try:
        return scipy.io.loadmat(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - scipy raises many types (ValueError, MatReadError, OSError, ...)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(p, f"cannot read .mat file ({type(exc).__name__}: {first})") from None
