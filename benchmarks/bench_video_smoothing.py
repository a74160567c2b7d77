"""Temporal LPIPS of stylized clips with and without kernel smoothing (`stylize-video --smooth`).

  python benchmarks/bench_video_smoothing.py --out benchmarks/results/video_smoothing_cpu.json

Clips are synthesised pan-and-zooms (sk_jax.io.video.pan_zoom_clip, as eval.py makes them) of
packaged scikit-image photos, stylized with the bundled generator and packaged styles; the
figure is the mean LPIPS (AlexNet) between consecutive frames (lower is steadier), and the
content loss-free check that smoothing keeps each frame close to its unsmoothed version.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

from sk_jax.eval import metrics
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import images, video

CONTENTS = ("astronaut", "chelsea", "coffee")
STYLES = ("immunohistochemistry", "hubble_deep_field")


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--checkpoint", default="bundled")
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--frames", type=int, default=10)
  parser.add_argument("--smooth", default="0,0.5,0.8")
  parser.add_argument("--net", default="alex")
  parser.add_argument("--out", default="benchmarks/results/video_smoothing_cpu.json")
  args = parser.parse_args()
  smooths = [float(v) for v in args.smooth.split(",")]

  st = Stylizer.load(args.checkpoint)
  lp = metrics.load_lpips(args.net)
  rows, t0 = [], time.time()
  for i, c in enumerate(CONTENTS):
    clip = video.pan_zoom_clip(images.prepare(f"skimage:{c}", args.size), args.frames, seed=i)
    input_lpips = float(metrics.temporal_lpips(clip.astype(np.float32) / 255, args.net, lp).mean())
    for s in STYLES:
      style = images.prepare(f"skimage:{s}", args.size)
      plain = None
      for beta in smooths:
        out, _ = video.stylize_frames(clip, style, st, smooth=beta)
        plain = out if beta == 0 else plain
        rows.append(
          {
            "content": c,
            "style": s,
            "smooth": beta,
            "input_lpips": input_lpips,
            "temporal_lpips": float(
              metrics.temporal_lpips(out.astype(np.float32) / 255, args.net, lp).mean()
            ),
            "mean_abs_vs_unsmoothed": None
            if plain is None
            else float(np.abs(out.astype(float) - plain).mean() / 255),
          }
        )
        print(rows[-1], flush=True)
  summary = {
    str(b): {
      "temporal_lpips": float(np.mean([r["temporal_lpips"] for r in rows if r["smooth"] == b])),
      "mean_abs_vs_unsmoothed": (
        None
        if b == 0
        else float(np.mean([r["mean_abs_vs_unsmoothed"] for r in rows if r["smooth"] == b]))
      ),
    }
    for b in smooths
  }
  report = {
    "checkpoint": args.checkpoint,
    "size": args.size,
    "frames": args.frames,
    "net": args.net,
    "clips": f"pan_zoom_clip of skimage {', '.join(CONTENTS)} (seeds 0..{len(CONTENTS) - 1})",
    "styles": list(STYLES),
    "input_temporal_lpips": float(np.mean([r["input_lpips"] for r in rows])),
    "summary": summary,
    "rows": rows,
    "seconds": time.time() - t0,
    "environment": {
      "device": jax.devices()[0].device_kind,
      "jax": jax.__version__,
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
    },
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
