"""`sk-jax serve`: a local web page to try styles by hand, on one warm `Stylizer`.

A plain HTML page (`page.html`, no build step, no external assets) on a small ASGI app
(Starlette, served by uvicorn; the `serve` extra). Routes:
  GET  /                  the page, with the packaged examples and the server's limits inlined
  GET  /examples/NAME.jpg a thumbnail of a packaged `skimage:` image
  GET  /api/status        {"ready", "busy", "done", ...}: answers while a stylization runs
  POST /api/stylize       multipart: content, style (repeated: an upload or "skimage:NAME"),
                          weight (one per style), alpha, preserve_color, size -> image/png,
                          or {"error": one line} with status 400/411/413/500

Every stylization runs off the event loop (a worker thread), one at a time on the one
`Stylizer` (`Engine.lock`), so the page and /api/status stay responsive while it runs. Uploads go
through the CLI's own reader (`images.prepare`: not an image, truncated, too small, too many
pixels before decoding, i.e. decompression bombs), so a bad upload gets the CLI's message,
naming the uploaded file.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
from importlib import resources

import numpy as np
from PIL import Image

from sk_jax.errors import ArgumentError, InputError
from sk_jax.inference import controls
from sk_jax.io import images

log = logging.getLogger("sk_jax.serve")

CONTENT_EXAMPLES = images.PACKAGED_SETS["photos"] + images.PACKAGED_SETS["eval_photos"]
STYLE_EXAMPLES = images.PACKAGED_SETS["styles"] + images.PACKAGED_SETS["eval_styles"]
MAX_STYLES = 8
DEFAULT_MAX_SIZE = 1024
DEFAULT_MAX_UPLOAD_MB = 50.0
THUMBNAIL_SIDE = 96


@dataclasses.dataclass(frozen=True)
class Upload:
  """An uploaded file: the name the browser gave it and its bytes."""

  name: str
  data: bytes


@dataclasses.dataclass(frozen=True)
class Job:
  """One press of the button. content/styles: an Upload or a packaged name ("skimage:NAME")."""

  content: Upload | str
  styles: tuple[Upload | str, ...]
  weights: tuple[float, ...] | None = None
  alpha: float = 1.0
  preserve_color: bool = False
  size: int | None = None


@dataclasses.dataclass(frozen=True)
class Result:
  png: bytes
  width: int
  height: int
  seconds: float
  # The whole process's CPU time meanwhile (all threads): what the machine's load does not change.
  cpu_seconds: float
  kept: float
  filename: str


def _display_name(source: Upload | str) -> str:
  return source.name if isinstance(source, Upload) else source


def _stem(source: Upload | str) -> str:
  name = _display_name(source).split(":", 1)[-1] if isinstance(source, str) else source.name
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(os.path.basename(name))[0]) or "upload"


def _safe_name(name: str) -> str:
  """The upload's own file name, reduced to something safe to create in a temporary directory."""
  base = os.path.basename(name.replace("\\", "/")).strip()
  return re.sub(r"[^\w.+-]+", "_", base)[:120].lstrip(".") or "upload"


def _encode_png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  # Level 3 rather than Pillow's 6: for the 512 x 512 astronaut photo on the 2-core dev CPU,
  # 0.12 s instead of 0.27 s, for a file 8 % larger.
  Image.fromarray(images.to_uint8(image)).save(buf, format="PNG", compress_level=3)
  return buf.getvalue()


def check_settings(size: int, max_size: int, max_pixels: int) -> None:
  """The server's --size, --max-size and --max-pixels (InputError naming the bad one)."""
  images.check_size_args(max_size, max_pixels, param="max_size")
  if not max_size:
    raise InputError(f"--max-size must be at least {images.MIN_SIDE}, got {max_size}")
  if not images.MIN_SIDE <= size <= max_size:
    raise InputError(
      f"--size must be between {images.MIN_SIDE} and --max-size ({max_size}), got {size}"
    )


class Engine:
  """One Stylizer, one stylization at a time, for the page's requests (thread-safe)."""

  def __init__(
    self,
    stylizer,
    size: int = 512,
    max_size: int = DEFAULT_MAX_SIZE,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
  ):
    check_settings(size, max_size, max_pixels)
    self.stylizer, self.size, self.max_size, self.max_pixels = stylizer, size, max_size, max_pixels
    self.lock = threading.Lock()
    self.ready = threading.Event()
    self.busy = False
    self.done = 0

  def start_warm_up(self) -> threading.Thread:
    """Compiles the page's default pair at the default size on a thread, so that the first press
    is quick; `ready` is set when it is done."""
    names = (CONTENT_EXAMPLES[0], STYLE_EXAMPLES[0])
    # Read here, not on the thread: importing skimage.data parses a stub with `ast`, which
    # failed while uvicorn imported on the main thread (SystemError "AST constructor recursion
    # depth mismatch", CPython 3.11.7 here; python/cpython gh-106905).
    for name in names:
      images.packaged_image(name)
    content, style = (images.PACKAGED_PREFIX + n for n in names)
    job = Job(content, (style,))

    def warm_up():
      try:
        self.run(job, count=False)
      except Exception:
        log.exception("warm-up failed; the first press will compile")
      finally:
        self.ready.set()

    thread = threading.Thread(target=warm_up, name="warm-up", daemon=True)
    thread.start()
    return thread

  def _load(self, source: Upload | str, size: int, tmpdir: str, index: int) -> np.ndarray:
    if isinstance(source, str):
      if not images.is_packaged(source):
        raise InputError(
          f"{source}: not a packaged example (expected {images.PACKAGED_PREFIX}NAME)"
        )
      return images.prepare(source, size, self.max_pixels)
    name = _safe_name(source.name)
    # One directory per upload: two uploads may have the same name.
    path = os.path.join(tmpdir, str(index), name)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
      f.write(source.data)
    try:
      return images.prepare(path, size, self.max_pixels)
    except InputError as e:
      raise InputError(str(e).replace(path, source.name or name)) from None

  def check(self, job: Job) -> int:
    """The job's size after the checks that need no image (InputError naming the bad value)."""
    size = self.size if job.size is None else job.size
    if not images.MIN_SIDE <= size <= self.max_size:
      raise InputError(
        f"size must be between {images.MIN_SIDE} and {self.max_size} (this server's --max-size), got {size}"
      )
    if not job.styles:
      raise InputError("choose at least one style")
    if len(job.styles) > MAX_STYLES:
      raise InputError(f"at most {MAX_STYLES} styles at once, got {len(job.styles)}")
    try:
      controls.check_alphas(job.alpha)
      if job.weights is not None:
        controls.style_weights(list(job.weights), len(job.styles))
    except ArgumentError as e:
      # The controls' own checks, named as the page names them ("style weights", "alpha").
      raise InputError(e.param.replace("_", " ") + e.detail) from None
    return size

  def run(self, job: Job, count: bool = True) -> Result:
    """Reads, checks and stylizes one job (waiting for any other to finish first)."""
    size = self.check(job)
    with self.lock:
      self.busy = True
      start, cpu = time.perf_counter(), time.process_time()
      try:
        with tempfile.TemporaryDirectory(prefix="sk-jax-serve-") as tmpdir:
          content = self._load(job.content, size, tmpdir, 0)
          styles = [self._load(s, size, tmpdir, i + 1) for i, s in enumerate(job.styles)]
        weights = list(job.weights) if job.weights is not None and len(styles) > 1 else None
        out, kept = self.stylizer.stylize(
          content,
          styles if len(styles) > 1 else styles[0],
          size=None,
          alpha=float(job.alpha),
          style_weights=weights,
          preserve_color=job.preserve_color,
          return_kept=True,
        )
        png = _encode_png(out)
      finally:
        self.busy = False
      if count:
        self.done += 1
      seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    names = "+".join(_stem(s) for s in job.styles)
    filename = f"{_stem(job.content)}_stylized_{names}.png"
    log.info(
      "%s%s with %s: %dx%d in %.2f s (%.1f CPU-s)",
      "" if count else "warm-up: ",
      _display_name(job.content),
      ", ".join(map(_display_name, job.styles)),
      out.shape[1],
      out.shape[0],
      seconds,
      cpu,
    )
    return Result(png, out.shape[1], out.shape[0], seconds, cpu, kept, filename)

  def status(self) -> dict:
    return {"ready": self.ready.is_set(), "busy": self.busy, "done": self.done}


@functools.cache
def thumbnail(name: str) -> bytes:
  """A packaged image as a small JPEG for the page's pickers."""
  if name not in images.PACKAGED:
    raise KeyError(name)
  small = images.resize_short_side(images.packaged_image(name), THUMBNAIL_SIDE)
  buf = io.BytesIO()
  Image.fromarray(images.to_uint8(small)).save(buf, format="JPEG", quality=85)
  return buf.getvalue()


def _float(value, name: str) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise InputError(f"{name}: expected a number, got {value!r}") from None


async def _upload_or_name(value) -> Upload | str | None:
  if isinstance(value, str):
    return value.strip() or None
  data = await value.read()
  if not value.filename and not data:
    # A file input left empty.
    return None
  return Upload(value.filename or "upload", data)


async def job_from_form(form) -> Job:
  """The page's multipart form -> a Job (InputError for a missing or malformed field)."""
  content = await _upload_or_name(form.get("content", ""))
  if content is None:
    raise InputError("choose a content image")
  styles = [s for s in [await _upload_or_name(v) for v in form.getlist("style")] if s is not None]
  weights = [_float(w, "weight") for w in form.getlist("weight")]
  if weights and len(weights) != len(styles):
    raise InputError(f"{len(weights)} style weights for {len(styles)} styles")
  size = form.get("size", "")
  return Job(
    content,
    tuple(styles),
    tuple(weights) if weights else None,
    _float(form.get("alpha", "1"), "alpha"),
    str(form.get("preserve_color", "")).lower() in ("1", "true", "on", "yes"),
    int(_float(size, "size")) if str(size).strip() else None,
  )


def make_app(engine: Engine, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
  """The Starlette app of `sk-jax serve` around `engine` (the examples' thumbnails are made here)."""
  from starlette.applications import Starlette
  from starlette.concurrency import run_in_threadpool
  from starlette.exceptions import HTTPException
  from starlette.responses import HTMLResponse, JSONResponse, Response
  from starlette.routing import Route

  max_bytes = int(max_upload_mb * 2**20)
  # Made here, on the caller's thread, before any worker thread reads packaged images (see
  # Engine.start_warm_up: skimage's lazy import failed on a thread with CPython 3.11.7).
  for name in CONTENT_EXAMPLES + STYLE_EXAMPLES:
    thumbnail(name)
  config = {
    "contents": CONTENT_EXAMPLES,
    "styles": STYLE_EXAMPLES,
    "size": engine.size,
    "max_size": engine.max_size,
    "max_styles": MAX_STYLES,
    "max_upload_mb": max_upload_mb,
  }
  page = resources.files("sk_jax.serve").joinpath("page.html").read_text()
  page = page.replace("/*CONFIG*/null", json.dumps(config))
  error = lambda status, message: JSONResponse({"error": message}, status_code=status)

  async def index(request):
    return HTMLResponse(page)

  async def example(request):
    try:
      data = await run_in_threadpool(thumbnail, request.path_params["name"])
    except KeyError:
      return error(404, f"{request.path_params['name']}: not a packaged example")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

  async def status(request):
    return JSONResponse(engine.status())

  async def stylize(request):
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
      return error(411, "the upload must state its length (Content-Length)")
    if int(length) > max_bytes:
      return error(
        413,
        f"the upload is {int(length) / 2**20:.1f} MB, more than this server's limit of "
        f"{max_upload_mb:g} MB (--max-upload-mb)",
      )
    try:
      async with request.form(
        max_files=MAX_STYLES + 1, max_fields=64, max_part_size=max_bytes
      ) as form:
        job = await job_from_form(form)
      result = await run_in_threadpool(engine.run, job)
    except HTTPException as e:
      return error(400, f"malformed upload: {e.detail}")
    except InputError as e:
      return error(400, " ".join(str(e).split()))
    except Exception as e:
      log.exception("stylization failed")
      return error(
        500, f"internal error ({type(e).__name__}: {e}); the server's log has the details"
      )
    headers = {
      "X-Image-Size": f"{result.width}x{result.height}",
      "X-Seconds": f"{result.seconds:.3f}",
      "X-CPU-Seconds": f"{result.cpu_seconds:.3f}",
      "X-Kept-Fraction": f"{result.kept:.4f}",
      "X-Alpha": f"{job.alpha:g}",
      "Content-Disposition": f'inline; filename="{result.filename}"',
      "Cache-Control": "no-store",
    }
    return Response(result.png, media_type="image/png", headers=headers)

  routes = [
    Route("/", index),
    Route("/examples/{name}.jpg", example),
    Route("/api/status", status),
    Route("/api/stylize", stylize, methods=["POST"]),
  ]
  return Starlette(routes=routes)
