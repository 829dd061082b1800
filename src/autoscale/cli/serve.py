"""``autoscale serve``: a web page and an HTTP API that count people with one checkpoint.

Needs the ``[serve]`` extra (``pip install 'autoscale[serve]'``: FastAPI, uvicorn,
python-multipart). Binds 127.0.0.1:8000 by default; any other address needs a token (``--token``,
``--token-file`` or ``$AUTOSCALE_TOKEN``). API and limits: :mod:`autoscale.serve`.
"""
from __future__ import annotations

import argparse
import os

from autoscale.cli.argtypes import max_pixels as _max_pixels
from autoscale.cli.argtypes import max_side as _max_side
from autoscale.cli.argtypes import megabytes as _megabytes
from autoscale.cli.argtypes import port as _port
from autoscale.cli.argtypes import positive_int as _positive_int

TOKEN_ENV = "AUTOSCALE_TOKEN"


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    """Add the ``serve`` command."""
    p = subparsers.add_parser(
        "serve", help=summary,
        description="Serve a web page (/) and an HTTP API (POST /v1/count, GET /v1/model, GET /healthz, "
                    "/openapi.json) that count people with one checkpoint, loaded once. Binds 127.0.0.1; "
                    "another address needs a token. Needs the [serve] extra.")
    p.add_argument("--checkpoint", required=True, help="autoscale checkpoint (.pt); its model card <name>.json "
                                                       "is served at /v1/model when present")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; a non-loopback address requires a token)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--token", default=None,
                   help=f"require 'Authorization: Bearer TOKEN' on /v1/ requests (visible in the process list: "
                        f"prefer --token-file or ${TOKEN_ENV})")
    p.add_argument("--token-file", default=None, metavar="PATH", help="read the token from this file's first line")
    p.add_argument("--max-upload-mb", type=_megabytes, default=20.0, metavar="MB",
                   help="largest request body in MiB (default 20): larger uploads get 413")
    p.add_argument("--max-pixels", type=_max_pixels, default="50000000", metavar="N",
                   help="largest image in pixels (width x height, from its header; default 50000000; 'none' = "
                        "no limit): larger images get 400 before decoding")
    p.add_argument("--queue", type=_positive_int, default=16, metavar="N",
                   help="requests admitted at once, waiting or being counted (default 16); more get 503")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:1 ...")
    p.add_argument("--max-side", type=_max_side, default="auto",
                   help="downscale images whose longer side exceeds this (pixels); default 'auto': the cap the "
                        "model was trained at, else 2048")
    p.add_argument("--single-pass", action="store_true", help="first pass only (FPN baseline)")
    p.add_argument("--points", choices=("auto", "peaks", "none"), default="auto",
                   help="points: 'auto' (localization minima), 'peaks' (also density peaks for regression), 'none'")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N", help="torch CPU threads")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.set_defaults(func=run)


def resolve_token(args: argparse.Namespace) -> str | None:
    """The token from ``--token``, ``--token-file`` or ``$AUTOSCALE_TOKEN`` (at most one), or None."""
    from pathlib import Path

    from autoscale.errors import ConfigError

    sources = [(name, v) for name, v in (("--token", args.token), ("--token-file", args.token_file),
                                         (f"${TOKEN_ENV}", os.environ.get(TOKEN_ENV) or None)) if v is not None]
    if len(sources) > 1:
        raise ConfigError(f"give the token one way, not {' and '.join(n for n, _ in sources)}")
    if not sources:
        return None
    name, value = sources[0]
    if name == "--token-file":
        try:
            lines = Path(value).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{value}: cannot read the token file ({getattr(exc, 'strerror', None) or exc})") from None
        value = lines[0] if lines else ""
    value = value.strip()
    if not value:
        raise ConfigError(f"{name}: the token is empty")
    if any(ord(c) < 33 or ord(c) > 126 for c in value):
        raise ConfigError(f"{name}: the token must be printable ASCII without spaces")
    return value


def run(args: argparse.Namespace) -> int:
    import logging

    from autoscale.errors import AutoScaleError, ConfigError

    try:
        import uvicorn

        from autoscale.serve import app_from_checkpoint, is_loopback
    except ImportError as exc:
        raise AutoScaleError(f"autoscale serve needs the [serve] extra (pip install 'autoscale[serve]'): "
                             f"{exc.name or exc} is missing") from None
    token = resolve_token(args)
    if token is None and not is_loopback(args.host):
        raise ConfigError(f"--host {args.host} is not a loopback address: serving it to other machines needs "
                          f"a token (--token-file PATH, ${TOKEN_ENV} or --token)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("autoscale.serve")
    if token is not None and len(token) < 16:
        log.warning("the token has %d characters; use at least 16 random ones", len(token))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from autoscale.device import bounded_heap

    bounded_heap()  # the network's activations reused from the heap request after request
    limit = None if args.max_pixels == "none" else int(args.max_pixels)
    app = app_from_checkpoint(args.checkpoint, device=args.device, max_side=args.max_side,
                              single_pass=args.single_pass, points=args.points, token=token,
                              max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=limit,
                              queue_size=args.queue)
    card = app.state.card
    log.info("model %s (%s, %s, %s); queue %d; uploads <= %g MiB; images <= %s pixels; auth %s",
             card.get("checkpoint"), card.get("variant"), card.get("backbone"), card.get("method"), args.queue,
             args.max_upload_mb, f"{limit:,}" if limit else "library limit", "on" if token else "off")
    host = f"[{args.host}]" if ":" in args.host else args.host
    log.info("serving on http://%s:%d/ (Ctrl-C stops)", host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level=args.log_level,
                server_header=False, proxy_headers=False)
    return 0
