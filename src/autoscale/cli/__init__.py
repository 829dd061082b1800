"""The ``autoscale`` command line: a thin layer over the library.

Each command lives in its own module here with a ``register(subparsers)`` function that adds
its parser and sets ``func``; this module assembles them. Errors we raise on purpose
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

# Idle OpenMP threads sleep instead of spinning: on a machine where another job holds a core,
# spinning threads slowed CPU training ~3-40x here. Set before torch starts its thread pool;
# an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from autoscale import __version__
from autoscale.errors import AutoScaleError

# (module, group): group None = top-level command, "data" = ``autoscale data <cmd>``.
COMMAND_MODULES: list[tuple[str, str | None]] = [
    ("autoscale.cli.data_stats", "data"),
    ("autoscale.cli.data_synth", "data"),
    ("autoscale.cli.data_targets", "data"),
    ("autoscale.cli.eval_points", None),
    ("autoscale.cli.convert_official", None),
    ("autoscale.cli.train", None),
    ("autoscale.cli.predict", None),
    ("autoscale.cli.evaluate", None),
    ("autoscale.cli.export", None),
    ("autoscale.cli.demo", None),
]

GROUP_HELP = {"data": "dataset tools: statistics, synthetic crowds, ground-truth targets"}

#: Commands that decode images (or read their headers): they take ``--max-pixels``.
IMAGE_COMMANDS = ("predict", "evaluate", "train", "data stats", "data targets")


def _max_pixels(value: str) -> str:
    if value.strip().lower() == "none":
        return "none"
    try:
        n = int(value.replace("_", ""))
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels or 'none', got {value!r}")
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoscale", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"autoscale {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for module_name, group in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        if group is None:
            module.register(top)
            continue
        if group not in groups:
            gp = top.add_parser(group, help=GROUP_HELP.get(group, ""))
            groups[group] = gp.add_subparsers(dest=f"{group}_command", metavar="COMMAND")
            gp.set_defaults(func=lambda args, _gp=gp: (_gp.print_help(), 2)[1])
        module.register(groups[group])
    leaves = dict(top.choices)
    for group, sub in groups.items():
        leaves.update({f"{group} {name}": p for name, p in sub.choices.items()})
    for name in IMAGE_COMMANDS:
        leaves[name].add_argument(
            "--max-pixels", type=_max_pixels, default=None, metavar="N",
            help="refuse images larger than N pixels (width x height, from the header; default 250000000 "
                 "or $AUTOSCALE_MAX_PIXELS; 'none' = no limit): a guard against decompression bombs")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
