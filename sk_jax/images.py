"""Reading and writing images: every bad file is an InputError naming it; writes are atomic."""

from __future__ import annotations

import contextlib
import os
import tempfile

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sk_jax.errors import InputError

MIN_SIDE = 16
DEFAULT_MAX_PIXELS = 40_000_000
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# We check the size ourselves (naming --max-pixels) before decoding.
Image.MAX_IMAGE_PIXELS = None


def _to_rgb(img: Image.Image) -> np.ndarray:
  """Any PIL mode -> (H, W, 3) float32 in [0, 1]; alpha is composited on white."""
  if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    a = np.asarray(img, np.float32)
    a = a / (65535.0 if a.max() > 255 or img.mode.startswith("I;16") else 255.0)
    return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=-1)
  if img.mode == "F":
    a = np.clip(np.asarray(img, np.float32), 0, 1)
    return np.repeat(a[..., None], 3, axis=-1)
  if img.mode == "P":
    img = img.convert("RGBA")
  if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    img = img.convert("RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    img = Image.alpha_composite(white, img)
  return np.asarray(img.convert("RGB"), np.float32) / 255.0


def check_file(path: str, expected: str = "an image file") -> None:
  """InputError unless `path` is an existing, non-empty regular file."""
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, expected {expected}")
  if os.path.getsize(path) == 0:
    raise InputError(f"{path}: empty file")


@contextlib.contextmanager
def decode_errors(path: str, expected: str, kind: str):
  """Turns Pillow's decoding errors into one-line InputErrors naming `path`."""
  try:
    yield
  except InputError:
    raise
  except UnidentifiedImageError:
    raise InputError(f"{path}: not {expected} (unrecognised format)") from None
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f"{path}: corrupt or truncated {kind} ({e})") from None


def load_image(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Reads an image file as (H, W, 3) float32 RGB in [0, 1], upright per its EXIF tag."""
  check_file(path)
  with decode_errors(path, "an image file", "image"):
    with Image.open(path) as img:
      w, h = img.size
      if max_pixels and w * h > max_pixels:
        raise InputError(f"{path}: {w}x{h} is {w * h} pixels, more than --max-pixels={max_pixels}")
      img.load()
      img = ImageOps.exif_transpose(img)
      rgb = _to_rgb(img)
  if min(rgb.shape[:2]) < MIN_SIDE:
    raise InputError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than {MIN_SIDE} pixels on a side")
  return rgb


def resize_short_side(image: np.ndarray, size: int | None) -> np.ndarray:
  """Resizes (H, W, 3) float so that its short side is `size` (None or 0: unchanged)."""
  if not size:
    return image
  h, w = image.shape[:2]
  scale = size / min(h, w)
  new = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
  if new == (w, h):
    return image
  pil = Image.fromarray(to_uint8(image))
  return np.asarray(pil.resize(new, Image.Resampling.BICUBIC), np.float32) / 255.0


def to_uint8(image) -> np.ndarray:
  return (np.clip(np.asarray(image, np.float32), 0, 1) * 255.0 + 0.5).astype(np.uint8)


def write_atomic(path: str, write) -> None:
  """Calls write(tmp) on a temp file beside `path`, then renames it over `path`.

  A crash or an error leaves `path` as it was; the file gets the usual umask permissions.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  os.close(fd)
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def save_image(image, path: str) -> None:
  """Writes (H, W, 3) float in [0, 1] to `path` atomically."""
  fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
  if fmt is None:
    raise InputError(f"{path}: unknown image extension; use .png or .jpg")
  pil = Image.fromarray(to_uint8(image))
  write_atomic(path, lambda tmp: pil.save(tmp, format=fmt))


def list_images(path: str) -> list[str]:
  """A file -> [file]; a directory -> its image files (recursively, sorted)."""
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file or directory")
  if not os.path.isdir(path):
    return [path]
  found = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                 if name.lower().endswith(EXTENSIONS) and not name.startswith("."))
  if not found:
    raise InputError(f"{path}: no images found (looked for {', '.join(EXTENSIONS)})")
  return found
