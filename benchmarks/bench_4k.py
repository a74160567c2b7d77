"""Stylizing 4K content in bounded memory: wall time and peak RSS of `Stylizer` per content size.

  python benchmarks/bench_4k.py --out benchmarks/results/4k_cpu.json

Each size runs in a fresh process (peak RSS is per process): the bundled generator, the
packaged astronaut resized to W x H as content and the packaged immunohistochemistry
image with a 1024-pixel short side as style, the attention chunked to --attention-memory.
The report adds what the whole attention matrix would need unchunked, and a linear fit
of peak RSS against content pixels, extrapolated to the largest content that fits in
--machine-gib (an estimate, labelled as such).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

SIZES = ("1920x1080", "3840x2160")


def run_one(size: str, style_size: int, attention_mb: float) -> dict:
  """In this process: one stylization; returns seconds and peak RSS."""
  import jax
  import numpy as np

  from sk_jax.inference.stylizer import Stylizer
  from sk_jax.io import images

  w, h = (int(v) for v in size.split("x"))
  content = images.packaged_image("astronaut")
  content = np.asarray(images.array_to_pil(content).resize((w, h)), np.float32) / 255.0
  style = images.resize_short_side(images.packaged_image("immunohistochemistry"), style_size)
  st = Stylizer.load(attention_mb=attention_mb)
  t = time.perf_counter()
  out = jax.block_until_ready(st(content, style))
  seconds = time.perf_counter() - t
  assert out.shape == (1, h, w, 3) and bool(np.isfinite(np.asarray(out)).all())
  nc = -(-h // 8) * -(-w // 8)
  ns = -(-style.shape[0] // 8) * -(-style.shape[1] // 8)
  return {
    "content": size,
    "style_hw": list(style.shape[:2]),
    "seconds_incl_compile": seconds,
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    "content_positions": nc,
    "style_positions": ns,
    "query_chunk": st.query_chunk((h, w), style.shape[:2]),
    "attention_matrix_gib_unchunked": nc * ns * 4 / 2**30,
    "attention_temporaries_gib_unchunked": nc * ns * 16 / 2**30,
  }


def main():
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--sizes", nargs="+", default=list(SIZES), help="content sizes W x H")
  p.add_argument("--style-size", type=int, default=1024)
  p.add_argument("--attention-memory", type=float, default=1024, help="MB, as in sk-jax stylize")
  p.add_argument("--machine-gib", type=float, default=24)
  p.add_argument("--out", default="benchmarks/results/4k.json")
  p.add_argument("--one", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.one:
    print(json.dumps(run_one(args.one, args.style_size, args.attention_memory)))
    return
  rows = []
  for size in args.sizes:
    proc = subprocess.run(
      [
        sys.executable,
        __file__,
        "--one",
        size,
        "--style-size",
        str(args.style_size),
        "--attention-memory",
        str(args.attention_memory),
      ],
      capture_output=True,
      text=True,
    )
    if proc.returncode:
      raise SystemExit(f"{size}: failed\n{proc.stderr[-2000:]}")
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    r = rows[-1]
    print(
      f"{size}: {r['seconds_incl_compile']:.1f} s, peak RSS {r['peak_rss_gib']:.2f} GiB "
      f"(chunk {r['query_chunk']} of {r['content_positions']} positions; unchunked, the attention's "
      f"temporaries alone would take {r['attention_temporaries_gib_unchunked']:.1f} GiB)"
    )
  report = {
    "benchmark": "4k",
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    "attention_memory_mb": args.attention_memory,
    "runs": rows,
  }
  if len(rows) >= 2:
    (x0, y0), (x1, y1) = [(r["content_positions"] * 64, r["peak_rss_gib"]) for r in rows[-2:]]
    slope = (y1 - y0) / (x1 - x0)
    pixels = (args.machine_gib - y1) / slope + x1
    report["fit"] = {
      "gib_per_megapixel": slope * 1e6,
      "largest_content_megapixels_estimate": pixels / 1e6,
      "note": f"linear in content pixels through the last two runs, to {args.machine_gib} GiB; "
      "an extrapolation, not a run",
    }
    print(
      f"estimate: about {pixels / 1e6:.0f} megapixels of content fit in {args.machine_gib:g} GiB"
    )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
