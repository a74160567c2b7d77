"""Measuring one method: per-pair quality (Table 2), temporal LPIPS (Table 3's clips), Table 1's timing
and the kernel-size sweep (Table 3)."""

from __future__ import annotations

import dataclasses
import statistics

import jax
import numpy as np
from tqdm import tqdm

from sk_jax.eval import metrics
from sk_jax.eval.inputs import square
from sk_jax.eval.methods import SkJax
from sk_jax.inference.stylizer import Stylizer
from sk_jax.nn.generator import init_params

QUALITY = ("style_loss_meanstd", "style_loss_gram", "content_loss", "ssim", "cfsd")


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def quality(method, contents, styles, clips, vgg_params, lpips_nets, progress=True):
  """Per-pair metrics and per-clip temporal LPIPS of one method; returns (result, outputs)."""
  bar = tqdm(
    total=len(contents) * len(styles) + sum(len(c.frames) for c in clips),
    desc=method.name,
    unit="img",
    disable=not progress,
  )
  style_stats = [metrics.style_statistics(vgg_params, s[None]) for _, s in styles]
  pairs, outputs = [], {}
  for ci, (cpath, c) in enumerate(contents):
    for si, (spath, s) in enumerate(styles):
      out, kept = method.stylize(c, s)
      m = metrics.pair_metrics(vgg_params, out[None], c[None], None, style_stats=style_stats[si])
      m["cfsd"] = np.asarray(metrics.cfsd(vgg_params, out[None], c[None]))
      pairs.append(
        {
          "content": cpath,
          "style": spath,
          **{k: float(m[k][0]) for k in QUALITY},
          "kept_fraction": kept,
        }
      )
      outputs[ci, si] = out
      bar.update()
  clip_rows = []
  for i, clip in enumerate(clips):
    spath, s = styles[i % len(styles)]
    frames = method.stylize_clip(clip.frames, s)
    row = {"clip": clip.name, "style": spath, "frames": len(frames)}
    for net in lpips_nets:
      row[f"lpips_{net}"] = float(
        np.mean(metrics.temporal_lpips(frames.astype(np.float32) / 255.0, net))
      )
    clip_rows.append(row)
    bar.update(len(clip.frames))
  bar.close()
  kept = [p["kept_fraction"] for p in pairs if p["kept_fraction"] is not None]
  summary = {k: _mean(p[k] for p in pairs) for k in QUALITY}
  summary.update(
    {f"lpips_{net}": _mean(r[f"lpips_{net}"] for r in clip_rows) for net in lpips_nets}
  )
  summary["kept_fraction"] = _mean(kept)
  summary["kept_fraction_min"] = min(kept) if kept else None
  summary["kept_fraction_max"] = max(kept) if kept else None
  return {"summary": summary, "pairs": pairs, "clips": clip_rows}, outputs


def input_clip_lpips(clips, lpips_nets) -> dict:
  """LPIPS of the unstylized clips: the motion itself, a floor to read the others against."""
  return {
    f"lpips_{net}": _mean(
      float(np.mean(metrics.temporal_lpips(c.frames.astype(np.float32) / 255.0, net)))
      for c in clips
    )
    for net in lpips_nets
  }


def timing(method, content, style, sizes, warmup: int, repeats: int) -> dict:
  """Table 1: T<size> = median seconds over `repeats` runs after `warmup`, batch 1, n x n inputs."""
  out = {}
  for n in sizes:
    t = method.time_inference(square(content, n), square(style, n), warmup, repeats)
    out[f"T{n}"] = {
      "median_s": statistics.median(t["runs_s"]),
      "min_s": min(t["runs_s"]),
      "warmup": warmup,
      "repeats": repeats,
      **t,
    }
  return out


def kernel_sweep(
  evaluated: SkJax,
  result,
  sweep_checkpoints,
  contents,
  styles,
  clips,
  vgg_params,
  settings,
  timing_input,
):
  """Table 3: rows for k in settings.kernel_sweep; a given checkpoint of that k, the evaluated one
  (`evaluated`, whose measurements are `result`), or random init. sweep_checkpoints:
  [(path, params, config)] already loaded; settings: the run's sk_jax.eval.run.Settings."""
  given = {config.kernel_size: (path, params, config) for path, params, config in sweep_checkpoints}
  encoder = evaluated.stylizer.vgg_params
  time_it = lambda method: timing(
    method, *timing_input, settings.timing_sizes, settings.timing_warmup, settings.timing_repeats
  )
  rows = []
  for k in sorted(set(settings.kernel_sweep) | set(given)):
    if k in given:
      path, params, config = given[k]
      method = SkJax(Stylizer(params, config, encoder), settings.alpha, path)
      result, _ = quality(
        method, contents, styles, clips, vgg_params, settings.lpips_nets, settings.progress
      )
      row = {
        "k": k,
        "source": f"checkpoint {path}",
        "summary": result["summary"],
        "timing": time_it(method),
      }
    elif evaluated.config.kernel_size == k:
      row = {
        "k": k,
        "source": f"the evaluated checkpoint {evaluated.source}",
        "summary": result["summary"],
        "timing": result["timing"],
      }
    else:
      config = dataclasses.replace(evaluated.config, kernel_size=k)
      params = init_params(config, jax.random.key(settings.seed))
      method = SkJax(Stylizer(params, config, encoder), settings.alpha)
      # Random weights time the same graph; their image quality would mean nothing.
      row = {
        "k": k,
        "source": f"random init (seed {settings.seed}); timing only",
        "summary": None,
        "timing": time_it(method),
      }
    rows.append(row)
  return rows
