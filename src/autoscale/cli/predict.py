"""``autoscale predict``: count people in images, folders of images and videos.

Writes ``DIR/counts.csv``, ``DIR/counts.json``, ``DIR/maps/<name>.npy``, ``DIR/points/<name>.csv``,
``DIR/overlays/<name>.jpg`` (lossless ``.png`` with ``--overlay-format png``) and, with ``--nwpu``, the NWPU
submission files (layout and coordinate conventions: :mod:`autoscale.predict`, :mod:`autoscale.runner`).
``--resume`` continues a run that was killed or crashed into the same ``--out``: images already
counted (``DIR/progress.jsonl``) are skipped. Exit code 0 when every input was counted, 1 when some
inputs of a folder could not be read (they are listed on stderr and in counts.json "errors"),
2 for bad input (missing INPUT, corrupt checkpoint, unwritable output directory).
"""
from __future__ import annotations

import argparse
import sys

from autoscale.cli.argtypes import max_side as _max_side
from autoscale.cli.argtypes import positive_float as _positive_float
from autoscale.cli.argtypes import positive_int as _positive_int


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add the ``predict`` command."""
    p = subparsers.add_parser(
        "predict",
        help=summary,
        description="Run a trained AutoScale checkpoint on an image file, a folder of images (natural "
                    "order) or a video, and write counts, maps, points and overlays to --out.",
    )
    p.add_argument("input", metavar="INPUT", help="image file, folder of images, or video file")
    p.add_argument("--checkpoint", required=True, help="autoscale checkpoint (.pt)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--variant", choices=("regression", "localization"), default=None,
                   help="require the checkpoint to be of this variant")
    p.add_argument("--single-pass", action="store_true", help="first pass only (FPN baseline, no L2S refinement)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1 ...")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="network precision: 'auto' (default: fp32, channels_last on the CPU), 'fp32', or 'bf16' "
                        "(autocast + channels_last: 2-3x faster on CPUs with native bfloat16, AVX512-BF16 or AMX, "
                        "but counts can move a few percent from fp32)")
    p.add_argument("--bf16", action="store_true", help="same as --precision bf16")
    p.add_argument("--engine", choices=("torch", "onnxruntime"), default="torch",
                   help="run the counter (both passes) in torch (default) or in onnxruntime (fp32, exported once "
                        "at start-up; needs pip install autoscale[onnx])")
    p.add_argument("--max-side", type=_max_side, default="auto",
                   help="downscale images whose longer side exceeds this (pixels); default 'auto': the cap "
                        "the model was trained at (e.g. 512 for the *_lite0 ShanghaiTech B presets), else 2048; "
                        "outputs are mapped back to the input resolution")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--every", type=_positive_int, default=None, metavar="N", help="videos: every N-th frame")
    rate.add_argument("--fps", type=_positive_float, default=None, metavar="F", help="videos: F frames per second")
    p.add_argument("--nwpu", action="store_true", help="also write nwpu_counts.txt / nwpu_loc.txt (numeric image ids)")
    p.add_argument("--no-overlays", action="store_true", help="do not draw overlays")
    p.add_argument("--overlay-format", choices=("jpg", "png"), default="jpg",
                   help="overlay files: 'jpg' (JPEG quality 92, default) or 'png' (lossless; 5-10x slower to "
                        "write and ~6x bigger)")
    p.add_argument("--points", choices=("auto", "peaks", "none"), default="auto",
                   help="points: 'auto' (localization minima), 'peaks' (also density peaks for regression), 'none'")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into the same --out: skip the images it already counted "
                        "(listed in OUT/progress.jsonl); refused when that run used another checkpoint or options")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar on stderr over images and video frames, naming the image being read, "
                        "counted or written: 'auto' (default: when stderr is a terminal), 'on', 'off'")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from autoscale.errors import DataError
    from autoscale.predict import Predictor
    from autoscale.device import bounded_heap
    from autoscale.runner import predict_paths

    if not Path(args.input).exists():
        raise DataError(args.input, "input not found")
    from autoscale.errors import ConfigError

    if args.bf16 and args.precision not in (None, "bf16"):
        raise ConfigError(f"--bf16 contradicts --precision {args.precision}")
    precision = "bf16" if args.bf16 else (args.precision or "auto")
    bounded_heap()  # activations reused from the heap; a long video's peak memory does not creep
    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    predictor = Predictor.from_checkpoint(args.checkpoint, variant=args.variant, device=args.device,
                                          single_pass=args.single_pass, precision=precision, max_side=args.max_side,
                                          points=args.points, engine=args.engine)
    summary = predict_paths(predictor, args.input, args.out, every_n_frames=args.every, fps=args.fps,
                            nwpu=args.nwpu, overlays=not args.no_overlays, overlay_format=args.overlay_format,
                            resume=args.resume,
                            progress=progress)
    n, errs = summary["num_images"], len(summary["errors"])
    print(f"{n} image(s), total count {summary['total_count']:.2f} -> {args.out}/counts.csv"
          + (f"; {errs} problem(s) reported in counts.json" if errs else ""), file=sys.stderr)
    return 1 if errs else 0
