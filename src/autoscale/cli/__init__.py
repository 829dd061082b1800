"""The ``autoscale`` command line: a thin layer over the library.

Each command lives in its own module here with a ``register(subparsers)`` function that adds
its parser and sets ``func``; this module assembles them. Errors we raise on purpose
(:class:`autoscale.errors.AutoScaleError`) end as one line on stderr and exit code 2.
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
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
    return int(rc or 0)
