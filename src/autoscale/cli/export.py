"""``autoscale export``: export the single-pass counting network to ONNX (see :mod:`autoscale.export`)."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add the ``export`` command."""
    p = subparsers.add_parser(
        "export",
        help=summary,
        description="Export the FPN counting network (ImageNet-normalised image -> final map) to ONNX with "
                    "dynamic height/width, and check it against PyTorch with onnxruntime. Needs "
                    "`pip install autoscale[onnx]`.",
    )
    p.add_argument("--checkpoint", required=True, help="autoscale checkpoint (.pt)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    p.add_argument("--out", required=True, help="output file, e.g. model.onnx")
    p.add_argument("--height", type=int, default=384, help="example input height for tracing (pixels)")
    p.add_argument("--width", type=int, default=512, help="example input width for tracing (pixels)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--static", action="store_true", help="fixed input size instead of dynamic H/W")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autoscale.export import export_onnx

    info = export_onnx(args.checkpoint, args.out, height=args.height, width=args.width, opset=args.opset,
                       dynamic=not args.static, check=not args.no_check)
    print(json.dumps(info, indent=1))
    return 0
