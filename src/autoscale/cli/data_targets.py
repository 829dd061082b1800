"""``autoscale data targets``: write ground-truth maps (density or distance labels) per image.

    autoscale data targets --format shanghaitech --root data/part_B --split test \\
        --kind density [--sigma 8 | --adaptive] [--resize none] [--limit N] --out gt/part_B_test

Writes ``OUT/<image stem>.npy`` per annotated image: a ``float32`` density map (people per pixel)
or a ``uint8`` distance-label map, at the image's size after the resize rule (the format's preset
unless ``--resize`` is given; ShanghaiTech: none). Points are scaled by ``new / old`` per axis;
image pixels are never decoded. ``OUT/targets.json`` records the settings and per-image counts.
Images without annotations (e.g. NWPU test) are skipped. Files are written atomically.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from autoscale.data.formats import FORMATS, get_format, read_dataset
from autoscale.data.preprocess import RESIZE_RULES, get_resize_rule
from autoscale.errors import ConfigError, DataError
from autoscale.io import atomic_path, atomic_write_text
from autoscale.targets import DISTANCE_EDGES, adaptive_density_map, density_map, distance_label_map


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add ``targets`` to the ``data`` group's subparsers."""
    p = subparsers.add_parser(
        "targets",
        help=summary,
        description="Write one ground-truth map per image: <image stem>.npy in --out.",
    )
    p.add_argument("--format", required=True, choices=sorted(FORMATS), help="dataset format")
    p.add_argument("--root", required=True, help="dataset root folder (ShanghaiTech: the part folder)")
    p.add_argument("--split", required=True, help="split name (e.g. train, val, test)")
    p.add_argument("--kind", default="density", choices=("density", "distance"), help="target kind (default density)")
    p.add_argument(
        "--sigma", type=float, default=None,
        help="fixed Gaussian sigma in px after resizing (default: the format's preset, e.g. 8 for ShanghaiTech B)",
    )
    p.add_argument("--adaptive", action="store_true",
                   help="geometry-adaptive kernels (k=3, beta=0.3) instead of a fixed sigma")
    p.add_argument("--mode", default="reflect", choices=("reflect", "constant"),
                   help="density border rule: reflect keeps the count (default), constant loses mass at borders")
    p.add_argument("--edges", default=None,
                   help="distance-class lower edges in px, comma-separated (default 0,1,2,3,4,5,6,8,12,18,28)")
    p.add_argument("--distance-method", default="precise", choices=("precise", "official"),
                   help="exact Euclidean transform (default) or the authors' 5x5-mask approximation")
    p.add_argument("--resize", default=None, choices=sorted(RESIZE_RULES),
                   help="resize rule (default: the format's preset)")
    p.add_argument("--limit", type=int, default=None, help="process only the first N images")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def _save_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, "target map", sync=False) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _parse_edges(text: str | None) -> tuple[float, ...]:
    if text is None:
        return DISTANCE_EDGES
    try:
        edges = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--edges must be comma-separated numbers, got {text!r}") from None
    if edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])) or len(edges) > 256:
        raise ConfigError(f"--edges must start at 0 and increase strictly (at most 256), got {text!r}")
    return edges


def run(args: argparse.Namespace) -> int:
    fmt = get_format(args.format)
    if args.adaptive and args.sigma is not None:
        raise ConfigError("--sigma and --adaptive exclude each other")
    if args.adaptive and args.kind != "density":
        raise ConfigError("--adaptive applies to --kind density only")
    if args.sigma is not None and not args.sigma > 0:
        raise ConfigError(f"--sigma must be > 0, got {args.sigma}")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    edges = _parse_edges(args.edges)
    sigma = float(args.sigma) if args.sigma is not None else float(fmt.sigma_for(args.root))
    rule = get_resize_rule(args.resize or fmt.resize_rule)

    records = read_dataset(args.format, args.root, args.split)
    skipped = [r.name for r in records if not r.annotated]
    records = [r for r in records if r.annotated][: args.limit]
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})[0]
        raise DataError(args.root, f"two images of split {args.split!r} share the stem {dup!r}; outputs would collide")

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(out, f"cannot create output folder: {exc.strerror or exc}") from None

    per_image = []
    for rec in tqdm(records, desc=f"{args.kind} targets", unit="img", disable=None):
        new_w, new_h = rule.output_size(rec.width, rec.height)
        pts = np.asarray(rec.points, dtype=np.float64).reshape(-1, 2) * [new_w / rec.width, new_h / rec.height]
        if args.kind == "density":
            if args.adaptive:
                target = adaptive_density_map(pts, (new_h, new_w), mode=args.mode)
            else:
                target = density_map(pts, (new_h, new_w), sigma, mode=args.mode)
        else:
            target = distance_label_map(pts, (new_h, new_w), edges, method=args.distance_method)
        try:
            _save_atomic(out / f"{rec.name}.npy", target)
        except OSError as exc:
            raise DataError(out / f"{rec.name}.npy", f"cannot write target: {exc.strerror or exc}") from None
        per_image.append({"name": rec.name, "width": new_w, "height": new_h, "count": rec.count,
                          "source_width": rec.width, "source_height": rec.height})

    manifest = {
        "format": args.format, "root": str(args.root), "split": args.split, "kind": args.kind,
        "sigma": None if (args.adaptive or args.kind != "density") else sigma,
        "adaptive": bool(args.adaptive), "mode": args.mode if args.kind == "density" else None,
        "edges": list(edges) if args.kind == "distance" else None,
        "distance_method": args.distance_method if args.kind == "distance" else None,
        "resize": rule.name, "images": per_image, "skipped_unannotated": skipped,
    }
    atomic_write_text(out / "targets.json", json.dumps(manifest, indent=1) + "\n", "targets manifest")
    what = "density" if args.kind == "density" else "distance-label"
    if args.kind == "distance":
        kernel = f"{len(edges)} classes"
    else:
        kernel = "adaptive sigma" if args.adaptive else f"sigma {sigma:g}"
    print(f"wrote {len(per_image)} {what} maps ({kernel}, resize {rule.name}) to {out}")
    if skipped:
        print(f"skipped {len(skipped)} images without annotations")
    return 0
