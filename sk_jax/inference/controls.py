"""The user controls' pure math: colour preservation, style weights, masks and alpha lists.

Everything here is numpy on (H, W, 3) float images in [0, 1]; `sk_jax.inference.stylizer` feeds the
results to the generator. Each check raises InputError naming the bad value (docs/method.md,
"Controls", records why each control works the way it does).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from sk_jax.errors import ArgumentError, InputError
from sk_jax.nn.generator import STRIDE

# NTSC YIQ (FCC): Y is luminance, I and Q carry the colour.
RGB_TO_YIQ = np.array(
  [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ).astype(np.float32)


def rgb_to_yiq(rgb) -> np.ndarray:
  return np.asarray(rgb, np.float32) @ RGB_TO_YIQ.T


def yiq_to_rgb(yiq) -> np.ndarray:
  return np.asarray(yiq, np.float32) @ YIQ_TO_RGB.T


def preserve_color(stylized, content) -> np.ndarray:
  """Luminance-only transfer: the stylized image's Y with the content's I and Q, (..., H, W, 3).

  `stylized` may carry leading axes (an alpha strip); `content` is (H, W, 3) of the same size.
  """
  stylized, content = np.asarray(stylized, np.float32), np.asarray(content, np.float32)
  if stylized.shape[-3:] != content.shape:
    raise InputError(
      f"preserve_color: stylized {stylized.shape[-3:]} and content {content.shape} differ in size"
    )
  yiq = rgb_to_yiq(stylized)
  yiq[..., 1:] = rgb_to_yiq(content)[..., 1:]
  return np.clip(yiq_to_rgb(yiq), 0.0, 1.0)


def parse_floats(text: str, param: str) -> list[float]:
  """ "0.7,0.3" -> [0.7, 0.3]; anything else is an ArgumentError naming `param`."""
  try:
    values = [float(v) for v in str(text).split(",")]
  except ValueError:
    raise ArgumentError(param, f": expected comma-separated numbers, got {text!r}") from None
  if not all(np.isfinite(values)):
    raise ArgumentError(param, f": values must be finite, got {text!r}")
  return values


def check_mix(style_weights, mask) -> None:
  """Style weights and a mask exclude each other: a mask gives each region one style."""
  if style_weights is not None and mask is not None:
    raise ArgumentError("mask", " excludes style weights (a mask gives each region one style)")


def check_alphas(alpha) -> np.ndarray:
  """A float or a sequence of them, each in [0, 1] -> (A,) float32."""
  alphas = np.atleast_1d(np.asarray(alpha, np.float32))
  if alphas.ndim != 1 or alphas.size == 0:
    raise ArgumentError("alpha", f": expected one value or a comma-separated list, got {alpha!r}")
  bad = [float(a) for a in alphas if not 0.0 <= a <= 1.0]
  if bad:
    raise ArgumentError("alpha", f" must be in [0, 1], got {bad[0]:g}")
  return alphas


def style_weights(values: Sequence[float] | None, num_styles: int) -> np.ndarray:
  """Mixing weights for `num_styles` styles, normalised to sum 1, (S,) float32.

  None means equal weights. Negative weights, all zeros or a count other than the
  number of styles are InputErrors.
  """
  if values is None:
    return np.full(num_styles, 1.0 / num_styles, np.float32)
  w = np.asarray(values, np.float64)
  if w.ndim != 1 or len(w) != num_styles:
    raise ArgumentError(
      "style_weights",
      f": {len(np.atleast_1d(w))} weight(s) for {num_styles} style(s); give one weight per style",
    )
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise ArgumentError(
      "style_weights", f" must be non-negative, got {', '.join(f'{v:g}' for v in w)}"
    )
  if w.sum() <= 0:
    raise ArgumentError("style_weights", ": all weights are zero; at least one must be positive")
  return (w / w.sum()).astype(np.float32)


def mask_labels(mask) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
  """An (H, W, 3) mask image in [0, 1] -> (labels (H, W) int32, the label colours).

  Labels are the distinct colours, in ascending (R, G, B) order: for a grey mask,
  darkest first (black = the first style).
  """
  rgb = np.round(np.clip(np.asarray(mask, np.float32), 0, 1) * 255).astype(np.uint8)
  colours, labels = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
  return labels.reshape(rgb.shape[:2]).astype(np.int32), [tuple(int(v) for v in c) for c in colours]


def mask_weights(
  mask, content_hw: tuple[int, int], num_styles: int, source: str = "mask"
) -> np.ndarray:
  """Per-position style weights at the generator's feature resolution, (ceil(H/8), ceil(W/8), S).

  The mask (H', W', 3) must have the content's aspect ratio and exactly `num_styles`
  distinct colours. Its labels are resized to the content's H x W (nearest), one-hot
  encoded, padded to multiples of 8 like the content, and averaged over each 8 x 8 block,
  so a block on a border mixes its styles in proportion.
  """
  mask = np.asarray(mask, np.float32)
  if mask.ndim != 3 or mask.shape[-1] != 3:
    raise InputError(f"{source}: expected an (H, W, 3) image, got shape {mask.shape}")
  labels, colours = mask_labels(mask)
  if len(colours) != num_styles:
    raise InputError(
      f"{source}: has {len(colours)} distinct colour(s) but {num_styles} style(s) were given "
      "(one style per flat colour, darkest first; save masks without antialiasing)"
    )
  h, w = content_hw
  mh, mw = labels.shape
  if abs(mh / mw - h / w) > max(0.02 * h / w, 1.0 / min(h, w, mh, mw)):
    raise InputError(f"{source}: {mw}x{mh} has another aspect ratio than the content ({w}x{h})")
  if (mh, mw) != (h, w):
    labels = np.asarray(
      Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST), np.int32
    )
  one_hot = np.eye(num_styles, dtype=np.float32)[labels]
  ph, pw = -h % STRIDE, -w % STRIDE
  if ph or pw:
    one_hot = np.pad(one_hot, ((0, ph), (0, pw), (0, 0)), mode="edge")
  hf, wf = one_hot.shape[0] // STRIDE, one_hot.shape[1] // STRIDE
  return one_hot.reshape(hf, STRIDE, wf, STRIDE, num_styles).mean(axis=(1, 3))
