"""Training logs: a tqdm bar, TensorBoard event files, metrics.jsonl and sample grids."""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from sk_jax.io import images

METRICS_FILE = "metrics.jsonl"


def sample_grid(content, style, stylized, gap: int = 2) -> np.ndarray:
  """Rows of content | style | stylized, (n * (H + gap) - gap, 3 * (W + gap) - gap, 3) in [0, 1]."""
  n, h, w, _ = content.shape
  grid = np.ones((n * (h + gap) - gap, 3 * (w + gap) - gap, 3), np.float32)
  for i in range(n):
    for j, img in enumerate((content, style, stylized)):
      grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = img[i]
  return grid


def _truncate_after(path: str, start: int) -> dict:
  """Cuts metrics.jsonl after the last line of a step <= `start` (the checkpoint resumed from), in place.

  Lines of later steps and a torn last line (power loss, full disk) are dropped; earlier lines
  are kept byte for byte (an unparseable one in the middle too). Returns the last kept record.
  """
  keep_end, last, offset = 0, {}, 0
  with open(path, "rb") as f:
    for line in f:
      offset += len(line)
      try:
        record = json.loads(line)
      except ValueError:
        if not line.endswith(b"\n"):
          break  # torn final line
        continue
      if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float)):
        continue
      if record.get("step", 0) > start:
        break
      keep_end, last = offset, record
  with open(path, "r+b") as f:
    f.truncate(keep_end)
    if keep_end and (f.seek(keep_end - 1), f.read(1))[1] != b"\n":
      f.write(b"\n")  # a complete record whose newline was lost
  return last


class MetricLogger:
  """tqdm bar, TensorBoard event files and a JSON-lines file; only process 0 writes."""

  def __init__(self, workdir: str, start: int, total: int, enabled: bool):
    self.enabled, self.workdir = enabled, workdir
    self.bar = self.writer = self.file = None
    self.last_record = {}  # the last line kept from an earlier run (a resume), else {}
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    path = os.path.join(workdir, METRICS_FILE)
    self.last_record = _truncate_after(path, start) if os.path.exists(path) else {}
    self.file = open(path, "a")
    self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.bar = tqdm(
      total=total,
      initial=start,
      unit="step",
      dynamic_ncols=True,
      desc="train",
      file=sys.stderr,
      mininterval=1.0,
    )

  def scalars(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    for k, v in metrics.items():
      if isinstance(v, (int, float)):  # not throughput/mfu's "unknown"
        self.writer.add_scalar(k, v, step)
    self.file.write(json.dumps({"step": step, **metrics}) + "\n")
    self.file.flush()
    self.bar.set_postfix(
      {
        k.split("/")[-1]: f"{metrics[k]:.3g}"
        for k in ("loss/total", "loss/content", "loss/style", "loss/remd", "loss/d")
        if k in metrics
      },
      refresh=False,
    )

  def grid(self, step: int, grid: np.ndarray, name: str = "samples") -> str | None:
    """samples/step_<step>.png and the TensorBoard image `name` ("eval/samples": eval_<step>.png)."""
    if not self.enabled:
      return None
    prefix = "step" if name == "samples" else name.split("/")[0]
    path = os.path.join(self.workdir, "samples", f"{prefix}_{step:07d}.png")
    images.save_image(grid, path)
    self.writer.add_image(name, grid, step, dataformats="HWC")
    return path

  def advance(self, n: int = 1) -> None:
    if self.enabled:
      self.bar.update(n)

  def close(self) -> None:
    if self.enabled:
      self.bar.close()
      self.writer.close()
      self.file.close()
