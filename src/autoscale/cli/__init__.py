"""The ``autoscale`` command line: a thin layer over the library.

Each command lives in its own module here with a ``register(subparsers, summary)`` function that
adds its parser and sets ``func``; this module lists them (:data:`COMMANDS`, with their one-line
summaries) and imports only the module of the command being run. Errors we raise on purpose
(:class:`autoscale.errors.AutoScaleError`) end as one line on stderr and exit code 2.

The commands that read images (:data:`IMAGE_COMMANDS`) take ``--max-pixels N``: the decoding limit
of :mod:`autoscale.data.image_io` (default 250 million pixels; ``none`` = no limit), set as
``AUTOSCALE_MAX_PIXELS`` for the command's duration (data-loader workers inherit it).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

# Idle OpenMP threads sleep instead of spinning: on a machine where another job holds a core,
# spinning threads slowed CPU training ~3-40x here. Set before torch starts its thread pool;
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from autoscale import __version__
from autoscale.cli.argtypes import max_pixels as _max_pixels
from autoscale.errors import AutoScaleError

@dataclass(frozen=True)
class Command:
    """One CLI command: ``name`` under ``group`` (None = top level), defined in ``module`` (which
    has ``register(subparsers, summary)``), with the one-line ``help`` shown in the command list."""

    name: str
    group: str | None
    module: str
    help: str


COMMANDS: list[Command] = [
    Command("stats", "data", "autoscale.cli.data_stats", "image sizes and head counts of a dataset split"),
    Command("synth", "data", "autoscale.cli.data_synth",
            "generate synthetic crowd images with head annotations (generic format)"),
    Command("targets", "data", "autoscale.cli.data_targets",
            "write ground-truth density / distance-label maps (.npy per image)"),
    Command("eval-points", None, "autoscale.cli.eval_points",
            "localization P/R/F1 and counting MAE/RMSE/NAE from NWPU-format point files"),
    Command("convert-official", None, "autoscale.cli.convert_official",
            "convert an authors' AutoScale checkpoint to autoscale's format (or back)"),
    Command("train", None, "autoscale.cli.train", "train a counter (FPN baseline or AutoScale) from a config or preset"),
    Command("predict", None, "autoscale.cli.predict", "count people in an image, a folder of images or a video"),
    Command("evaluate", None, "autoscale.cli.evaluate",
            "evaluate a checkpoint on a dataset split (MAE/RMSE/NAE, P/R/F1, dense regions)"),
    Command("export", None, "autoscale.cli.export", "export the counting network (single pass) to ONNX"),
    Command("serve", None, "autoscale.cli.serve", "serve a web page and an HTTP API that count people (extra [serve])"),
    Command("demo", None, "autoscale.cli.demo",
            "train and compare FPN and AutoScale on built-in synthetic crowds (CPU, minutes)"),
]

GROUP_HELP = {"data": "dataset tools: statistics, synthetic crowds, ground-truth targets"}

#: Commands that decode images (or read their headers): they take ``--max-pixels``.
IMAGE_COMMANDS = ("predict", "evaluate", "train", "data stats", "data targets")


def _invoked(argv: list[str]) -> str | None:
    """The full name of the command ``argv`` invokes ("predict", "data stats"), or None."""
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words:
        return None
    if words[0] in GROUP_HELP:
        return " ".join(words)
    return words[0]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``autoscale`` parser. Only the module of the command ``argv`` invokes is imported (all
    of them when ``argv`` is None); every other command is listed with its help line, so
    ``autoscale --help`` and the light commands start without importing torch or the models."""
    invoked = None if argv is None else _invoked(argv)
    parser = argparse.ArgumentParser(prog="autoscale", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"autoscale {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    leaves: dict[str, argparse.ArgumentParser] = {}
    for cmd in COMMANDS:
        if cmd.group is None:
            sub = top
        else:
            if cmd.group not in groups:
                gp = top.add_parser(cmd.group, help=GROUP_HELP[cmd.group])
                groups[cmd.group] = gp.add_subparsers(dest=f"{cmd.group}_command", metavar="COMMAND")
                gp.set_defaults(func=lambda args, _gp=gp: (_gp.print_help(), 2)[1])
            sub = groups[cmd.group]
        full = cmd.name if cmd.group is None else f"{cmd.group} {cmd.name}"
        if argv is None or full == invoked:
            importlib.import_module(cmd.module).register(sub, cmd.help)
            leaves[full] = sub.choices[cmd.name]
        else:
            sub.add_parser(cmd.name, help=cmd.help, add_help=False)
    for name in IMAGE_COMMANDS:
        if name in leaves:
            leaves[name].add_argument(
                "--max-pixels", type=_max_pixels, default=None, metavar="N",
                help="refuse images larger than N pixels (width x height, from the header; default 250000000 "
                     "or $AUTOSCALE_MAX_PIXELS; 'none' = no limit): a guard against decompression bombs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    max_pixels = getattr(args, "max_pixels", None)
    saved = os.environ.get("AUTOSCALE_MAX_PIXELS")
    if max_pixels is not None:
        os.environ["AUTOSCALE_MAX_PIXELS"] = max_pixels
    try:
        rc = args.func(args)
    except AutoScaleError as exc:
        print("autoscale: error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `autoscale ... --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("autoscale: interrupted", file=sys.stderr)
        return 130
    finally:
        if max_pixels is not None:  # in-process callers (tests, notebooks) get their environment back
            if saved is None:
                os.environ.pop("AUTOSCALE_MAX_PIXELS", None)
            else:
                os.environ["AUTOSCALE_MAX_PIXELS"] = saved
    return int(rc or 0)
