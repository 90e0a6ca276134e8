"""``aligngemini serve``: the REST API and the web page on uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import sys
from collections.abc import Iterator
from typing import Any

from aligngemini.cli import add_compile, add_dtype, add_provenance, read_trust_anchors
from aligngemini.serve.limits import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
)

TOKEN_ENV = "ALIGNGEMINI_SERVE_TOKEN"

SERVE_EPILOG = f"""\
endpoints:
  /                 the web page: drop images, read verdicts, ask for explanations
  POST /v1/detect   images as multipart files (field 'files') or one raw image body
  POST /v1/explain  one image: the semantic branch's rationale (501 when it cannot explain)
  GET  /v1/info     the bundle: branches, sources, thresholds, uncertain band, model card
  GET  /healthz     process up      GET /readyz  models loaded      GET /metrics  Prometheus
  GET  /openapi.json the API's OpenAPI document

security:
  The server binds 127.0.0.1 by default. Binding any other address needs a bearer token
  (--token, or the {TOKEN_ENV} environment variable, which keeps it out of 'ps'):
  clients then send 'Authorization: Bearer TOKEN' to /v1/* and /metrics.
  No endpoint reads server files or fetches URLs; uploads stay in memory.

examples:
  aligngemini serve                                    http://127.0.0.1:8000 with the starter bundle
  aligngemini serve --bundle my-bundle/ --port 9000
  {TOKEN_ENV}=s3cret aligngemini serve --host 0.0.0.0
  curl -F files=@photo.jpg http://127.0.0.1:8000/v1/detect
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the detector: REST API, web page, Prometheus metrics",
        description="Serve a detector bundle over HTTP (FastAPI on uvicorn). Concurrent requests are "
        "scored together in batches by one model worker; a bounded queue refuses excess load with 503.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", "-b", default="starter",
                   help="bundle name, folder, archive or hub id (default: starter)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                   help=f"bearer token clients must send (default: ${TOKEN_ENV}); required off loopback")  # fmt: skip
    p.add_argument("--max-batch", type=int, default=16, help="images per model batch (default: 16)")
    p.add_argument("--max-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more images after its first arrived (default: 10)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=256,
                   help="images waiting for the model at most; beyond it requests get 503 (default: 256)")  # fmt: skip
    p.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES,
                   help=f"largest accepted file (default: {DEFAULT_MAX_FILE_BYTES})")  # fmt: skip
    p.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help=f"largest request body (default: {DEFAULT_MAX_REQUEST_BYTES})")  # fmt: skip
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"largest decoded image, width x height (default: {DEFAULT_MAX_PIXELS})")  # fmt: skip
    p.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help=f"images per request (default: {DEFAULT_MAX_IMAGES})")  # fmt: skip
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    add_dtype(p)
    p.add_argument("--threads", type=int, default=None,
                   help="PyTorch threads for the model worker (default: PyTorch's choice; on a small shared "
                   "machine 1 can be many times faster)")  # fmt: skip
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default: info)")  # fmt: skip
    add_provenance(p)
    add_compile(p)
    p.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(host: str, token: str | None) -> str | None:
    """The refusal message when binding ``host`` without a token would expose the API; None when fine."""
    if is_loopback(host) or (token and token.strip()):
        return None
    return (f"refusing to serve on {host!r} without a token: anyone who can reach that address could use the "
            f"API. Pass --token TOKEN (or set {TOKEN_ENV}), or bind 127.0.0.1.")  # fmt: skip


def run_serve(args: argparse.Namespace) -> int:
    refusal = check_exposure(args.host, args.token)
    if refusal:
        print(f"aligngemini serve: {refusal}", file=sys.stderr)
        return 2
    import uvicorn

    from aligngemini.serve.app import ServeSettings, create_app

    try:
        settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                                 max_file_bytes=args.max_file_bytes, max_request_bytes=args.max_request_bytes,
                                 max_pixels=args.max_pixels, max_images=args.max_images,
                                 token=args.token or None)  # fmt: skip
        anchors = read_trust_anchors(args.trust_anchors)
    except ValueError as exc:
        print(f"aligngemini serve: {exc}", file=sys.stderr)
        return 2

    from aligngemini.bundle import BundleError, load_bundle
    from aligngemini.detector import Detector
    from aligngemini.resolve import ResolveError

    try:  # fail fast on a missing or broken bundle; the models themselves load after the port opens
        bundle = load_bundle(args.bundle)
    except (BundleError, ResolveError, ValueError) as exc:
        print(f"aligngemini serve: cannot load bundle {args.bundle!r}: {exc}", file=sys.stderr)
        return 2

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    def load() -> Detector:
        return Detector.load(bundle, device=args.device, dtype=args.dtype, max_pixels=args.max_pixels,
                             provenance=args.provenance, trust_anchors=anchors,
                             compile_mode=args.compile_mode)  # fmt: skip

    app = create_app(load, settings)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"aligngemini serve: bundle {bundle.name!r} on http://{shown}:{args.port}/ "
          f"(models load in the background; /readyz says when)", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                server_header=False, limit_concurrency=max(64, settings.max_queue * 2))  # fmt: skip
    return 0


@contextlib.contextmanager
def background_server(app: Any, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 30.0,
                      log_level: str = "warning") -> Iterator[str]:  # fmt: skip
    """Run ``app`` under a real uvicorn server in a background thread (tests, benchmarks, screenshots);
    yields its base URL, e.g. ``http://127.0.0.1:41234``, and stops it on exit."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the server on {host}:{bound} did not start within {timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{bound}" if ":" not in host else f"http://[{host}]:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
