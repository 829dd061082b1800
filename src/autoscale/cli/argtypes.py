"""Argument types shared by the CLI commands (argparse ``type=`` callables; light imports only)."""
from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", int, float)


def _number(v: str, cast: Callable[[str], T], ok: Callable[[T], bool], expected: str) -> T:
    """``cast(v)`` when it parses and ``ok`` accepts it, else argparse's one-line error."""
    try:
        x = cast(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}") from None
    if not ok(x):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {v!r}")
    return x


def max_side(v: str) -> int | str:
    """``auto`` or a positive number of pixels."""
    return "auto" if v == "auto" else positive_int(v)


def positive_int(v: str) -> int:
    """An integer >= 1."""
    return _number(v, int, lambda i: i >= 1, "a positive integer")


def positive_float(v: str) -> float:
    """A number > 0."""
    return _number(v, float, lambda f: f > 0, "a positive number")


def max_pixels(v: str) -> str:
    """``none`` or a positive number of pixels (``_`` separators allowed), as a string."""
    if v.strip().lower() == "none":
        return "none"
    return str(_number(v.replace("_", ""), int, lambda n: n >= 1, "a positive number of pixels or 'none'"))


def port(v: str) -> int:
    """A TCP port 0-65535 (0: any free port)."""
    return _number(v, int, lambda i: 0 <= i <= 65535, "a port number 0-65535")


def megabytes(v: str) -> float:
    """A size in MiB, 0 < size <= 4096."""
    return _number(v, float, lambda f: 0 < f <= 4096, "a size in MiB between 0 and 4096")
