"""Argument types shared by the CLI commands (argparse ``type=`` callables; light imports only)."""
from __future__ import annotations

import argparse


def max_side(v: str) -> int | str:
    """``auto`` or a positive number of pixels."""
    return "auto" if v == "auto" else positive_int(v)


def positive_int(v: str) -> int:
    """An integer >= 1."""
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}") from None
    if i < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v!r}")
    return i


def positive_float(v: str) -> float:
    """A number > 0."""
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v!r}")
    return f
