"""``autoscale data stats``: per-image sizes and head counts of a dataset split.

    autoscale data stats --format shanghaitech --root data/part_B --split test [--outside drop] [--json]

``--json`` prints ``{"images": [{"name", "width", "height", "count"}, ...], "dropped_points": N}``
(counts after the outside-point policy); otherwise a short summary.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from autoscale.data.formats import FORMATS, read_dataset
from autoscale.data.record import OUTSIDE_POLICIES


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add ``stats`` to the ``data`` group's subparsers."""
    p = subparsers.add_parser(
        "stats",
        help=summary,
        description="Read a dataset split and report image sizes and head counts.",
    )
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="dataset format")
    p.add_argument("--root", required=True, help="dataset root folder (ShanghaiTech: the part folder)")
    p.add_argument("--split", required=True, help="split name (e.g. train, val, test)")
    p.add_argument(
        "--outside",
        default="drop",
        choices=OUTSIDE_POLICIES,
        help="policy for annotated points outside the image (default: drop)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    records = read_dataset(args.format, args.root, args.split, outside=args.outside)
    images = [{"name": r.name, "width": r.width, "height": r.height, "count": r.count} for r in records]
    dropped = int(sum(r.dropped_points for r in records))
    if args.json:
        print(json.dumps({"images": images, "dropped_points": dropped}))
        return 0
    counts = np.array([im["count"] for im in images], dtype=np.int64)
    annotated = sum(r.annotated for r in records)
    print(f"dataset   {args.format}  root={args.root}  split={args.split}  outside={args.outside}")
    print(f"images    {len(records)} ({annotated} annotated)")
    if len(counts):
        print(
            f"heads     total {int(counts.sum())}  mean {counts.mean():.1f}  median {np.median(counts):.1f}"
            f"  min {int(counts.min())}  max {int(counts.max())}"
        )
        sizes = Counter((im["width"], im["height"]) for im in images)
        if len(sizes) <= 3:
            size_txt = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common())
        else:
            ws = [im["width"] for im in images]
            hs = [im["height"] for im in images]
            size_txt = f"{len(sizes)} distinct; width {min(ws)}..{max(ws)}, height {min(hs)}..{max(hs)}"
        print(f"sizes     {size_txt}")
    print(f"dropped   {dropped} points outside their image")
    return 0
