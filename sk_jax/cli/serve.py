"""`sk-jax serve`: the web page of `sk_jax/serve/app.py` on localhost (needs the `serve` extra)."""

from __future__ import annotations

import logging
import socket
import sys

from sk_jax.errors import InputError
from sk_jax.inference import bundled
from sk_jax.io import images

DEFAULT_PORT = 8000


def _listen(host: str, port: int) -> socket.socket:
  """A listening socket on host:port (port 0: any free one); InputError when that fails."""
  try:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    return socket.create_server((host, port), family=family, backlog=64)
  except OSError as e:
    raise InputError(
      f"{host}:{port}: cannot listen there ({e.strerror or e}); choose another --host or --port"
    ) from None


def run_serve(args) -> None:
  try:
    import starlette  # noqa: F401
    import uvicorn
  except ImportError as e:
    raise InputError(
      f"sk-jax serve needs the serve extra: pip install 'sk-jax[serve]' ({e})"
    ) from None
  from sk_jax.inference.stylizer import Stylizer
  from sk_jax.serve import app as serve

  if not args.max_upload_mb > 0:
    raise InputError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
  if not args.attention_memory > 0:
    raise InputError(f"--attention-memory must be positive (MB), got {args.attention_memory}")
  if not 0 <= args.port <= 65535:
    raise InputError(f"--port must be in 0..65535, got {args.port}")
  serve.check_settings(args.size, args.max_size, args.max_pixels)
  sock = _listen(args.host, args.port)
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("sk-jax serve: %(message)s"))
  serve.log.addHandler(handler)
  serve.log.setLevel(logging.INFO)
  serve.log.propagate = False
  engine = serve.Engine(
    Stylizer.load(args.checkpoint, args.vgg, args.attention_memory),
    args.size,
    args.max_size,
    args.max_pixels,
  )
  config = uvicorn.Config(
    serve.make_app(engine, args.max_upload_mb),
    log_level="warning",
    access_log=False,
    timeout_graceful_shutdown=5,
  )
  # uvicorn's own imports, before the warm-up thread starts tracing.
  config.load()
  if args.no_warmup:
    engine.ready.set()
  else:
    engine.start_warm_up()
  host, port = sock.getsockname()[:2]
  url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
  print(f"sk-jax serve: {url} (Ctrl-C to stop)", flush=True)
  uvicorn.Server(config).run(sockets=[sock])


def add_commands(subparsers) -> None:
  p = subparsers.add_parser(
    "serve",
    help="a local web page to try styles by hand (pip install 'sk-jax[serve]')",
  )
  p.add_argument(
    "--host", default="127.0.0.1", help="address to serve on (default: localhost only)"
  )
  p.add_argument(
    "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)"
  )
  p.add_argument(
    "--checkpoint",
    default=bundled.BUNDLED,
    help=f"generator checkpoint directory; 'bundled' is the generator inside the package ({bundled.NAME})",
  )
  p.add_argument(
    "--vgg", help="VGG-16 weights (an Orbax dir from port-vgg16); default: the checkpoint's"
  )
  p.add_argument(
    "--size", type=int, default=512, help="the page's default short side (default 512)"
  )
  p.add_argument(
    "--max-size",
    type=int,
    default=1024,
    help="the largest short side the page may ask for (default 1024)",
  )
  p.add_argument(
    "--max-pixels",
    type=int,
    default=images.DEFAULT_MAX_PIXELS,
    help=f"refuse uploaded images with more pixels than this (default {images.DEFAULT_MAX_PIXELS})",
  )
  p.add_argument(
    "--max-upload-mb", type=float, default=50.0, help="refuse uploads larger than this (default 50)"
  )
  p.add_argument(
    "--attention-memory",
    type=float,
    default=1024,
    metavar="MB",
    help="memory the attention may take; above it, it runs in chunks (default 1024)",
  )
  p.add_argument(
    "--no-warmup",
    action="store_true",
    help="do not compile for the default size before the first request",
  )
  p.set_defaults(func=run_serve)
