"""``autoscale data synth``: write the built-in synthetic crowd dataset in the generic format."""
from __future__ import annotations

import argparse

from autoscale.data.synth import DEFAULT_SPLITS, generate_dataset, parse_size, parse_splits


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add ``synth`` to the ``data`` group's subparsers."""
    p = subparsers.add_parser(
        "synth",
        help=summary,
        description="Generate procedural crowd scenes (perspective ground plane, long-tailed "
                    "cluster densities, head-like distractors) and write OUT/images/*.png, "
                    "OUT/annotations/*.json, OUT/<split>.txt and OUT/dataset.json.",
    )
    p.add_argument("--out", required=True, help="output directory (empty, new, or a previous synth output)")
    p.add_argument("--n", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--size", default="384x512", help="image size HxW in pixels (default 384x512)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0); image i is the same for any --n")
    default_splits = ",".join(f"{k}={v}" for k, v in DEFAULT_SPLITS.items())
    p.add_argument("--splits", default=default_splits,
                   help=f"split fractions in image order (default {default_splits})")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow writing into a non-empty directory that is not a previous synth output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    summary = generate_dataset(
        args.out, n=args.n, size=parse_size(args.size), seed=args.seed,
        splits=parse_splits(args.splits), workers=max(1, args.workers), overwrite=args.overwrite,
    )
    st = summary["count_stats"]
    splits = ", ".join(f"{k} {v}" for k, v in summary["split_counts"].items())
    print(f"wrote {summary['n']} images {summary['size'][0]}x{summary['size'][1]} to {args.out} "
          f"in {summary['seconds']:.1f} s ({splits}); heads per image: mean {st['mean']}, "
          f"median {st['median']}, min {st['min']}, max {st['max']}")
    return 0
