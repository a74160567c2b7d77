"""Evaluation while training: every `eval.every` steps, the generator on a fixed set of pairs.

The set is every content x every style of `eval.content` and `eval.style` (folders, file
lists or packaged images; the default is scikit-image photos and textures held out from the
default training sets, images.PACKAGED_SETS["eval_photos" / "eval_styles"]), centre-cropped
to `eval.size` squares (0: data.crop). Per evaluation, written under `eval/...` to
metrics.jsonl and TensorBoard (means over the pairs):
  content_loss, style_loss, style_loss_gram, ssim   Table 2's figures (sk_jax.eval.metrics.pair_metrics)
  cfsd                                              sk_jax.eval.metrics.cfsd
  kept_fraction                                     of the CGM's attention weights
  seconds                                           what the evaluation cost (host wall time)
and a sample grid (content | style | stylized, one row per pair) as samples/eval_<step>.png
and the TensorBoard image "eval/samples". The generator runs on the training mesh with its
parameters where they are (sharded or not); the pairs are replicated.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from sk_jax.config import EVAL_METRICS as METRICS  # noqa: F401 (the names it writes)
from sk_jax.errors import InputError
from sk_jax.eval import metrics
from sk_jax.eval.inputs import list_inputs, square
from sk_jax.io import images
from sk_jax.nn.generator import stylize_images
from sk_jax.train import sharding


def load_pairs(eval_cfg, crop: int):
  """(content, style): (P, S, S, 3) float32 arrays of every content x style pair."""
  size = int(eval_cfg.get("size") or crop)
  if size < 8 or size % 8:
    raise InputError(f"config: eval.size must be a multiple of 8 (>= 8), got {size}")
  loaded = []
  for spec in (eval_cfg.content, eval_cfg.style):
    loaded.append([square(images.prepare(p, size), size) for p in list_inputs(spec)])
  contents, styles = loaded
  content = np.stack([c for c in contents for _ in styles])
  style = np.stack([s for _ in contents for s in styles])
  return content, style


class Evaluator:
  """Built once per run; `__call__(step, g_params)` -> the eval/... metrics and the grid."""

  def __init__(self, cfg, model, mesh, g_param_shardings, vgg_params):
    self.every = int(cfg.eval.every)
    if not self.every:
      return
    content, style = load_pairs(cfg.eval, int(cfg.data.crop))
    repl = sharding.replicated(mesh)
    self.content, self.style = jax.device_put((content, style), repl)
    self.vgg = vgg_params

    def run(g_params, vgg_params, content, style):
      stylized, aux = stylize_images(g_params, vgg_params, model, content, style)
      return stylized, aux["kept_fraction"]

    self._run = jax.jit(run, in_shardings=(g_param_shardings, repl, repl, repl), out_shardings=repl)

  def due(self, done: int) -> bool:
    return bool(self.every) and done % self.every == 0

  def __call__(self, g_params):
    t = time.perf_counter()
    stylized, kept = self._run(g_params, self.vgg, self.content, self.style)
    table2 = metrics.pair_metrics(self.vgg, stylized, self.content, self.style)
    out = {
      "eval/content_loss": table2["content_loss"],
      "eval/style_loss": table2["style_loss_meanstd"],
      "eval/style_loss_gram": table2["style_loss_gram"],
      "eval/ssim": table2["ssim"],
      "eval/cfsd": metrics.cfsd(self.vgg, stylized, self.content),
      "eval/kept_fraction": kept,
    }
    out = {k: float(np.mean(jax.device_get(v))) for k, v in out.items()}
    grid = (np.asarray(jax.device_get(x)) for x in (self.content, self.style, stylized))
    out["eval/seconds"] = time.perf_counter() - t
    return out, tuple(grid)
