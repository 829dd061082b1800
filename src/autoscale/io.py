"""File-system helpers used everywhere (one copy each): atomic writes, image / video file extensions.

Atomic write: the data goes to a temporary file in the destination folder (``.<name>.<random>.tmp``,
so concurrent writers never share one), is flushed to the disk (``fsync``), and then ``os.replace``
puts it in place. A reader, or a process killed at any instant, sees either the previous complete
file or the new complete file, never a partial one. A failed write (disk full, quota, I/O error)
removes the temporary file, leaves any previous file untouched and raises one
:class:`~autoscale.errors.AutoScaleError` line naming the file, the reason and whether the previous
file is intact.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

from autoscale.errors import AutoScaleError

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "atomic_path", "atomic_write_bytes", "atomic_write_text", "fsync_file"]

#: File extensions (lower case) read as images: folders for ``autoscale predict``, dataset folders.
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")
#: File extensions (lower case) read as videos by ``autoscale predict``.
VIDEO_EXTS = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm")


def fsync_file(path: str | PathLike[str]) -> None:
    """Flush ``path``'s data to the disk. A file system that cannot fsync a read-only descriptor is
    not a failed write; any other error (EIO: the data did not reach the disk) is raised."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | PathLike[str], what: str = "file", *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on a clean exit it replaces ``path``
    (see the module docstring). ``what`` names the file in the error (``"checkpoint"``...).
    ``sync=False`` skips the fsync (for many small files where a crash may lose the newest ones
    but must never leave a torn one: ``os.replace`` alone guarantees that)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(4)}.tmp")
    try:  # O_EXCL: never shared; mode 0o666 minus the umask, as a plain open() would give the file
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise _error(p, what, exc) from None
    try:
        yield tmp
        if sync:
            fsync_file(tmp)
        os.replace(tmp, p)
    except (OSError, RuntimeError) as exc:  # torch's zip writer reports a failed write as RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _error(p, what, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | PathLike[str], data: bytes, what: str = "file", *, sync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path, what, sync=sync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | PathLike[str], text: str, what: str = "file", *, newline: str | None = None,
                      sync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_path(path, what, sync=sync) as tmp:
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
    return Path(path)


def _error(p: Path, what: str, exc: BaseException) -> AutoScaleError:
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    kept = f"the previous {p.name} is intact" if p.is_file() else f"no {p.name} was written"
    return AutoScaleError(f"{p}: cannot write {what} ({reason}); {kept}")
