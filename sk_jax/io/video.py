"""Video: reading and writing clips, stylizing frames with style features computed once, and
synthesised pan-and-zoom clips (`sk-jax stylize-video` is in sk_jax.cli.stylize).

Frames are (T, H, W, 3) uint8 in memory (a long clip at 512 pixels stays small);
the model sees float32 in [0, 1].
"""

from __future__ import annotations

import importlib.util
import math
import os
import re

import numpy as np
from PIL import Image, ImageSequence
from tqdm import tqdm

from sk_jax.errors import ArgumentError, InputError, describe
from sk_jax.io import files, images

DEFAULT_FPS = 10.0
# Multi-frame formats that Pillow reads and writes itself; anything else needs a video plugin.
PIL_VIDEO_EXTENSIONS = (".gif", ".webp", ".png", ".apng")
PLUGIN_VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


# ----------------------------------------------------------------------------- reading and writing


def _natural_key(path: str):
  """frame_2.png before frame_10.png."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def _video_plugin() -> str | None:
  for module in ("av", "imageio_ffmpeg"):
    if importlib.util.find_spec(module) is not None:
      return module
  return None


def _as_float(frame) -> np.ndarray:
  frame = np.asarray(frame)
  return frame.astype(np.float32) / 255.0 if frame.dtype == np.uint8 else frame.astype(np.float32)


def _fit_frames(frames, count: int, size: int | None, source: str) -> np.ndarray:
  """`count` frames (an iterable, read one at a time) -> (T, H, W, 3) uint8.

  Every frame is resized to the size of the first after its short side is resized to `size`.
  """
  if count < 2:
    raise InputError(f"{source}: has {count} frame(s); a clip needs at least 2")
  out = None
  for t, frame in enumerate(frames):
    frame = _as_float(frame)
    if out is None:
      h, w = images.resize_short_side(frame, size).shape[:2]
      if min(h, w) < images.MIN_SIDE:
        raise InputError(
          f"{source}: {w}x{h} frames are smaller than {images.MIN_SIDE} pixels on a side "
          f"(give --size {images.MIN_SIDE} or more to enlarge them)"
        )
      out = np.empty((count, h, w, 3), np.uint8)
    if frame.shape[:2] != (h, w):
      frame = np.asarray(
        Image.fromarray(images.to_uint8(frame)).resize((w, h), Image.Resampling.BICUBIC)
      )
    out[t] = images.to_uint8(frame) if frame.dtype != np.uint8 else frame
  return out


def _read_with_pillow(path: str, max_frames: int | None):
  with Image.open(path) as img:
    if getattr(img, "n_frames", 1) < 2:
      raise InputError(
        f"{path}: a single still image, not a video (give a frames directory or a "
        "multi-frame GIF/WebP/PNG)"
      )
    duration = img.info.get("duration")
    frames = []
    for frame in ImageSequence.Iterator(img):
      frames.append(np.asarray(frame.convert("RGB"), np.uint8))
      if max_frames and len(frames) >= max_frames:
        break
  fps = 1000.0 / duration if duration else DEFAULT_FPS
  return frames, fps


def _read_with_pyav(path: str, max_frames: int | None):
  import av

  with av.open(path) as container:
    if not container.streams.video:
      raise InputError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    frames = []
    for frame in container.decode(stream):
      frames.append(frame.to_ndarray(format="rgb24"))
      if max_frames and len(frames) >= max_frames:
        break
  return frames, float(rate) if rate else DEFAULT_FPS


def _read_with_plugin(path: str, max_frames: int | None):
  plugin = _video_plugin()
  if plugin is None:
    raise InputError(
      f"{path}: reading this video format needs PyAV or imageio-ffmpeg "
      "(pip install 'sk-jax[video]'); or give a directory of frames or a GIF"
    )
  try:
    if plugin == "av":
      return _read_with_pyav(path, max_frames)
    import imageio.v3 as iio

    meta = iio.immeta(path, plugin="FFMPEG")
    frames = []
    for frame in iio.imiter(path, plugin="FFMPEG"):
      frames.append(np.asarray(frame, np.uint8)[..., :3])
      if max_frames and len(frames) >= max_frames:
        break
  except InputError:
    raise
  except Exception as e:  # the plugins raise many types for a damaged file
    raise InputError(f"{path}: unreadable video ({describe(e)})") from None
  return frames, float(meta.get("fps") or DEFAULT_FPS)


def _write_with_pyav(path: str, frames: np.ndarray, fps: float, ext: str) -> None:
  """H.264 (MPEG-4 Part 2 where the FFmpeg build lacks it) in yuv420p, which needs even sides:
  odd frames get their last row or column repeated."""
  from fractions import Fraction

  import av

  h, w = frames.shape[1:3]
  if h % 2 or w % 2:
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
  with av.open(path, "w", format={".m4v": "mp4"}.get(ext)) as container:
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": "18"}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def read_frames(path: str, size: int | None = None, max_frames: int | None = None):
  """A frames directory or a video file -> ((T, H, W, 3) uint8, fps).

  Frames of a directory are taken in natural order (frame_2 before frame_10); every
  frame is resized to the first one's size, after its short side is resized to `size`.
  """
  if max_frames is not None and max_frames < 1:
    raise ArgumentError(
      "max_frames", f" must be at least 1 (leave it out for every frame), got {max_frames}"
    )
  if files.check_input(path, "a video file", directory_ok=True) == "dir":
    paths = sorted(images.list_images(path), key=_natural_key)[:max_frames]
    return _fit_frames((images.load_image(f) for f in paths), len(paths), size, path), DEFAULT_FPS
  ext = os.path.splitext(path)[1].lower()
  if ext in PLUGIN_VIDEO_EXTENSIONS:
    frames, fps = _read_with_plugin(path, max_frames)
  else:
    with images.decode_errors(path, "a video or image file", "video"):
      frames, fps = _read_with_pillow(path, max_frames)
  if not frames:
    raise InputError(f"{path}: no frames")
  return _fit_frames(frames, len(frames), size, path), fps


def check_output(path: str) -> str:
  """'dir' or 'video' for an output path; an unusable one is an InputError before any work."""
  ext = os.path.splitext(path)[1].lower()
  if not ext or os.path.isdir(path):
    if os.path.exists(path) and not os.path.isdir(path):
      raise InputError(f"{path}: exists and is not a directory")
    return "dir"
  if ext in PIL_VIDEO_EXTENSIONS:
    return "video"
  if ext in PLUGIN_VIDEO_EXTENSIONS:
    if _video_plugin() is None:
      raise InputError(
        f"{path}: writing {ext} needs PyAV or imageio-ffmpeg (pip install 'sk-jax[video]'); "
        "write a .gif or a frames directory instead"
      )
    return "video"
  raise InputError(
    f"{path}: unknown video extension {ext!r}; use a directory, "
    f"{', '.join(PIL_VIDEO_EXTENSIONS + PLUGIN_VIDEO_EXTENSIONS)}"
  )


def frame_names(count: int) -> list[str]:
  return [f"frame_{t:05d}.png" for t in range(count)]


def output_plan(path: str, count: int) -> files.Output:
  """What `write_frames` will write for `count` frames, for `sk_jax.io.files.check_outputs`."""
  if check_output(path) == "dir":
    return files.directory(path, frame_names(count))
  return files.video(path)


def write_frames(frames, path: str, fps: float = DEFAULT_FPS, inputs=()) -> list[str]:
  """Writes (T, H, W, 3) frames to a directory (frame_00000.png, ...) or a video file.

  The output is checked first (`sk_jax.io.files.check_outputs`, against `inputs`): a directory must
  be new, empty or one sk-jax wrote, whose earlier frames are replaced; a video file may replace
  an image or video. A video file is written to a temporary name and renamed, so it is never
  half-written. Returns the paths written.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    frames = images.to_uint8(frames)
  plan = output_plan(path, len(frames))
  files.check_outputs([plan], inputs)
  if plan.kind == "dir":
    files.claim_directory(path, plan.names, replace=True)
    out = [os.path.join(path, name) for name in plan.names]
    for frame, name in zip(frames, out):
      images.save_image(frame.astype(np.float32) / 255.0, name)
    return out
  if not (math.isfinite(fps) and fps > 0):
    raise InputError(f"fps must be a positive number, got {fps}")
  ext = os.path.splitext(path)[1].lower()

  def write(tmp):
    if ext in PIL_VIDEO_EXTENSIONS:
      pil = [Image.fromarray(f) for f in frames]
      fmt = {".apng": "PNG"}.get(ext, Image.registered_extensions()[ext])
      pil[0].save(
        tmp,
        format=fmt,
        save_all=True,
        append_images=pil[1:],
        duration=max(1, round(1000.0 / fps)),
        loop=0,
      )
    elif _video_plugin() == "av":
      _write_with_pyav(tmp, frames, fps, ext)
    else:
      import imageio.v3 as iio

      iio.imwrite(tmp, frames, plugin="FFMPEG", fps=fps)

  images.write_atomic(path, write)
  return [path]


def pan_zoom_clip(image, num_frames: int = 10, seed: int = 0, scales=(0.9, 0.75)) -> np.ndarray:
  """A smooth pan and zoom over a still photo, (T, H, W, 3) uint8 at the photo's size.

  The crop window's scale eases from scales[0] to scales[1] of the photo while its
  centre moves on a straight line between two points drawn with `seed` (each inside
  the range where the window fits), both with cosine easing e(t) = (1 - cos(pi t / (T-1))) / 2;
  each window is resampled to the photo's size (bicubic).
  """
  if num_frames < 2:
    raise InputError(f"a synthesised clip needs at least 2 frames, got {num_frames}")
  image = np.asarray(image)
  h, w = image.shape[:2]
  rng = np.random.default_rng(seed)

  def centre(s):
    return np.array([rng.uniform(s * h / 2, h - s * h / 2), rng.uniform(s * w / 2, w - s * w / 2)])

  (s0, s1), (c0, c1) = scales, (centre(scales[0]), centre(scales[1]))
  pil = Image.fromarray(image if image.dtype == np.uint8 else images.to_uint8(image))
  frames = np.empty((num_frames, h, w, 3), np.uint8)
  for t in range(num_frames):
    e = 0.5 - 0.5 * math.cos(math.pi * t / (num_frames - 1))
    s, (cy, cx) = s0 + (s1 - s0) * e, c0 + (c1 - c0) * e
    box = (cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2)
    frames[t] = np.asarray(pil.resize((w, h), Image.Resampling.BICUBIC, box=box))
  return frames


# ----------------------------------------------------------------------------- stylizing


def stylize_frames(
  frames, style, stylizer, alpha: float = 1.0, progress: bool = False, smooth: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
  """Stylizes every frame of a clip with one style, whose features are computed once.

  Args:
    frames: (T, H, W, 3) uint8, or float in [0, 1].
    style: (Hs, Ws, 3) float in [0, 1].
    stylizer: an sk_jax.Stylizer (passed in: video I/O does not import the network).
    smooth: temporal smoothing in [0, 1): frame t uses the style kernels
      K_t = smooth * K_{t-1} + (1 - smooth) * (its own), an exponential moving average
      per position (0: each frame on its own; docs/method.md, "Controls").

  Returns:
    (T, H, W, 3) uint8 frames and the kept fraction per frame (T,).
  """
  if not 0.0 <= smooth < 1.0:
    raise InputError(f"smooth must be in [0, 1), got {smooth}")
  z_s = stylizer.encode_style(_as_float(style))
  out = np.empty((len(frames), *np.shape(frames)[1:3], 3), np.uint8)
  kept = np.empty(len(frames), np.float64)
  kernels = None
  for t in tqdm(range(len(frames)), desc="frames", unit="frame", disable=not progress):
    if smooth:
      image, k, kernels = stylizer.apply_smoothed(_as_float(frames[t]), z_s, alpha, kernels, smooth)
    else:
      image, k = stylizer.apply(_as_float(frames[t]), z_s, alpha)
    out[t], kept[t] = images.to_uint8(image[0]), float(k[0])
  return out, kept
