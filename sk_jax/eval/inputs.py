"""The evaluated inputs: image lists, images at the evaluated size, clips."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
from PIL import Image, ImageOps

from sk_jax.errors import InputError
from sk_jax.eval import metrics
from sk_jax.io import files, images, video


@dataclasses.dataclass
class Clip:
  name: str
  frames: np.ndarray  # (T, H, W, 3) uint8
  source: str  # "synthesised pan & zoom of PATH (seed N)" or the clip's path


def list_inputs(path: str) -> list[str]:
  """A directory, one image, a .txt file list (one path a line, relative to the list), or
  scikit-image's packaged images as `skimage:astronaut,chelsea`."""
  if path.endswith(".txt") and os.path.isfile(path):
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
      lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
      raise InputError(f"{path}: an empty file list")
    return [
      ln if os.path.isabs(ln) or images.is_packaged(ln) else os.path.join(base, ln) for ln in lines
    ]
  return images.list_images(path)


def fingerprint(path: str, image: np.ndarray) -> str:
  """First 16 hex digits of the SHA-256 of the file, or of the decoded pixels for a packaged image."""
  if images.is_packaged(path):
    return hashlib.sha256(images.to_uint8(image).tobytes()).hexdigest()[:16]
  return files.sha256_file(path)[:16]


def load_inputs(paths, size) -> list[tuple[str, np.ndarray]]:
  """(path, (H, W, 3) float32 RGB in [0, 1] with short side `size`) for every path."""
  return [(p, images.prepare(p, size)) for p in paths]


def make_clips(
  clip_paths, contents, num_clips: int, num_frames: int, size, seed: int
) -> list[Clip]:
  """Clips from frames directories / video files, or synthesised from the content images."""
  if clip_paths:
    clips = []
    for path in clip_paths:
      frames, _ = video.read_frames(path, size, num_frames or None)
      clips.append(Clip(os.path.basename(os.path.normpath(path)), frames, path))
  else:
    clips = [
      Clip(
        f"panzoom_{i}_{os.path.splitext(os.path.basename(p))[0]}",
        video.pan_zoom_clip(img, num_frames, seed + i),
        f"synthesised pan & zoom of {p} (seed {seed + i})",
      )
      for i, (p, img) in enumerate(contents[:num_clips])
    ]
  for clip in clips:
    if min(clip.frames.shape[1:3]) < metrics.LPIPS_MIN_SIDE:
      raise InputError(
        f"{clip.source}: frames of {clip.frames.shape[2]}x{clip.frames.shape[1]} are "
        f"smaller than LPIPS's {metrics.LPIPS_MIN_SIDE} pixels"
      )
  return clips


def square(image, n: int) -> np.ndarray:
  """Centre square crop resized to n x n: Table 1's input."""
  pil = ImageOps.fit(Image.fromarray(images.to_uint8(image)), (n, n), Image.Resampling.BICUBIC)
  return np.asarray(pil, np.float32) / 255.0
