"""Reading and writing images: every bad file is an InputError naming it; writes are atomic."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sk_jax.errors import ArgumentError, InputError
from sk_jax.io import files

MIN_SIDE = 16
DEFAULT_MAX_PIXELS = 40_000_000
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# We check the size ourselves (naming --max-pixels) before decoding.
Image.MAX_IMAGE_PIXELS = None


# scikit-image's images that ship inside its wheel (nothing is downloaded), named
# "skimage:NAME[,NAME...]" wherever a file is accepted ("embedded:" is an alias). Two sets
# serve as the default training data: photographs for content, textures and colourful
# images for style.
PACKAGED_PREFIX = "skimage:"
PACKAGED_ALIAS = "embedded:"
PACKAGED_SETS = {
  "photos": (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "coins",
    "moon",
  ),
  "styles": (
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "colorwheel",
    "retina",
    "logo",
  ),
  # Held out from the two training sets: the fixed pairs of evaluation while training.
  "eval_photos": ("clock", "page"),
  "eval_styles": ("checkerboard", "microaneurysms"),
}
PACKAGED = sum(PACKAGED_SETS.values(), ())


def is_packaged(spec: str) -> bool:
  return spec.startswith((PACKAGED_PREFIX, PACKAGED_ALIAS))


def packaged_names(spec: str) -> list[str]:
  """ "skimage:astronaut,brick" or a set, "skimage:photos" -> the image names; unknown names are refused."""
  body = spec.split(":", 1)[1]
  names = []
  for name in (n.strip() for n in body.split(",") if n.strip()):
    names += PACKAGED_SETS.get(name, (name,))
  unknown = [n for n in names if n not in PACKAGED]
  if unknown or not names:
    raise InputError(
      f"{spec}: {unknown[0] if unknown else 'no name'!r} is not a packaged scikit-image "
      f"image; choose from {', '.join(PACKAGED)} or the sets {', '.join(PACKAGED_SETS)} "
      f"(e.g. {PACKAGED_PREFIX}photos)"
    )
  return names


@functools.cache
def _packaged_array(name: str) -> np.ndarray:
  from skimage import data

  if name == "motorcycle_left":
    return data.stereo_motorcycle()[0]
  return getattr(data, name)()


def packaged_image(name: str) -> np.ndarray:
  """One of PACKAGED as (H, W, 3) float32 RGB in [0, 1]."""
  return decode(array_to_pil(_packaged_array(name)))


def array_to_pil(a) -> Image.Image:
  """(H, W), (H, W, 1|3|4) arrays of bool, integers or floats in [0, 1] -> a PIL image."""
  a = np.asarray(a)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.dtype == bool:
    a = a.astype(np.uint8) * 255
  if a.dtype != np.uint8:
    a = (np.clip(a.astype(np.float32) / (255.0 if a.max() > 1 else 1.0), 0, 1) * 255 + 0.5).astype(
      np.uint8
    )
  return Image.fromarray(a)


def decode(img: Image.Image) -> np.ndarray:
  """The one decoder: any PIL mode -> (H, W, 3) float32 RGB in [0, 1].

  Transparency is composited on white; 16-bit modes (I;16*) are scaled from 65535,
  32-bit integer images (I) from 65535 when they exceed 255 else from 255; float (F) is
  read as [0, 1]. Training (sk_jax.data) and inference read images through this.
  """
  if img.mode.startswith("I") or img.mode == "F":
    a = np.asarray(img, np.float32)
    if img.mode != "F":
      a = a / (65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0)
    return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=-1)
  if img.mode == "P" or img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
    rgba = img.convert("RGBA")
    img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
  return np.asarray(img.convert("RGB"), np.float32) / 255.0


def check_file(path: str, expected: str = "an image file") -> None:
  """InputError unless `path` is an existing, non-empty regular file (sk_jax.files.check_input)."""
  files.check_input(path, expected)


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
  """Reads an image file (or a packaged "skimage:NAME") as (H, W, 3) float32 RGB in [0, 1],
  upright per its EXIF tag."""
  if is_packaged(path):
    names = packaged_names(path)
    if len(names) != 1:
      raise InputError(f"{path}: names {len(names)} images where one is expected")
    return packaged_image(names[0])
  check_file(path)
  with decode_errors(path, "an image file", "image"):
    with Image.open(path) as img:
      w, h = img.size
      if max_pixels and w * h > max_pixels:
        raise InputError(f"{path}: {w}x{h} is {w * h} pixels, more than --max-pixels={max_pixels}")
      img.load()
      img = ImageOps.exif_transpose(img)
      rgb = decode(img)
  if min(rgb.shape[:2]) < MIN_SIDE:
    raise InputError(
      f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than {MIN_SIDE} pixels on a side"
    )
  return rgb


def check_size_args(size: int | None, max_pixels: int | None, param: str = "size") -> None:
  """size must be 0 (keep) or at least MIN_SIDE; max_pixels 0 (no limit) or positive.
  ArgumentError names `param` (the CLI its flag)."""
  if size is not None and size != 0 and size < MIN_SIDE:
    raise ArgumentError(param, f" must be 0 (keep the size) or at least {MIN_SIDE}, got {size}")
  if max_pixels is not None and max_pixels < 0:
    raise ArgumentError("max_pixels", f" must be 0 (no limit) or positive, got {max_pixels}")


def _resized(h: int, w: int, size: int) -> tuple[int, int]:
  """(new_w, new_h) for a short side of `size`."""
  scale = size / min(h, w)
  return max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale))


def resize_short_side(image: np.ndarray, size: int | None) -> np.ndarray:
  """Resizes (H, W, 3) float so that its short side is `size` (None or 0: unchanged)."""
  if not size:
    return image
  h, w = image.shape[:2]
  new = _resized(h, w, size)
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
  files.check_image_writer(path)
  fmt = Image.registered_extensions()[os.path.splitext(path)[1].lower()]
  pil = Image.fromarray(to_uint8(image))
  write_atomic(path, lambda tmp: pil.save(tmp, format=fmt))


def prepare(image, size: int | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """A path (or "skimage:NAME") or an (H, W, 3) float array in [0, 1] -> float32 with short side `size`."""
  if isinstance(image, (str, os.PathLike)):
    image = load_image(os.fspath(image), max_pixels)
  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise InputError(f"expected an (H, W, 3) image, got shape {image.shape}")
  check_size_args(size, max_pixels)
  if size and max_pixels:  # checked before the resized copy is allocated
    w, h = _resized(*image.shape[:2], size)
    if w * h > max_pixels:
      raise InputError(
        f"--size {size} makes a {image.shape[1]}x{image.shape[0]} image {w}x{h}, "
        f"{w * h} pixels, more than --max-pixels={max_pixels}"
      )
  return resize_short_side(image, size)


def list_images(path: str) -> list[str]:
  """A file -> [file]; a directory -> its image files (recursively, sorted);
  "skimage:a,b" or "skimage:photos" -> ["skimage:a", "skimage:b"] (packaged images)."""
  if is_packaged(path):
    return [PACKAGED_PREFIX + name for name in packaged_names(path)]
  if files.check_input(path, directory_ok=True) == "file":
    return [path]
  found = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(path)
    for name in names
    if name.lower().endswith(EXTENSIONS) and not name.startswith(".")
  )
  if not found:
    raise InputError(f"{path}: no images found (looked for {', '.join(EXTENSIONS)})")
  return found
