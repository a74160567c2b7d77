"""The 3 x 3 convolutions of the T256 stylization one at a time: XLA against PyTorch (oneDNN),
and a Winograd F(2x2, 3x3) form written in JAX, to see where T256 loses (README, "Inference
speed").

  python benchmarks/conv_layers.py --out benchmarks/results/conv_layers_cpu.json
  XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/conv_layers.py --out /tmp/onednn.json

Batch 1, float32, zero padding 1, median of 15 runs after two warm-ups, the shapes of VGG-16 up to
relu4_1 at 256 px and the decoder's widest layers; torch with its 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import bench_stylize
import jax
import jax.numpy as jnp
import numpy as np

# (name, spatial side, input channels, output channels)
LAYERS = (
  ("conv1_1", 256, 3, 64),
  ("conv1_2", 256, 64, 64),
  ("conv2_1", 128, 64, 128),
  ("conv2_2", 128, 128, 128),
  ("conv3_1", 64, 128, 256),
  ("conv3_2", 64, 256, 256),
  ("conv4_1", 32, 256, 512),
  ("dec4_1", 32, 512, 256),
  ("dec1_1", 256, 64, 64),
  ("dec1_2 (to RGB)", 256, 64, 3),
)
# Winograd F(2x2, 3x3) (Lavin & Gray, 2016): Y = A^T [(G g G^T) * (B^T d B)] A per 4 x 4 tile.
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


def _ms(fn, repeats: int = 15) -> float:
  fn()
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3


def direct(x, w):
  dn = ("NHWC", "HWIO", "NHWC")
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)


def winograd(x, w):
  """3 x 3, stride 1, zero padding 1: 16 matmuls of (tiles, Cin) x (Cin, Cout) per 2 x 2 outputs."""
  b, h, wd, c = x.shape
  th, tw = (h + 1) // 2, (wd + 1) // 2
  xp = jnp.pad(x, ((0, 0), (1, 1 + h % 2), (1, 1 + wd % 2), (0, 0)))
  d = [[xp[:, i : i + 2 * th : 2, j : j + 2 * tw : 2] for j in range(4)] for i in range(4)]
  bt = lambda r: [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]]  # B^T along one axis
  rows = [bt([d[i][j] for i in range(4)]) for j in range(4)]  # rows[j][a]
  v = jnp.stack([jnp.stack(bt([rows[j][a] for j in range(4)])) for a in range(4)])
  u = jnp.einsum("ai,ijco,bj->abco", G, w, G).reshape(16, c, -1)
  m = jnp.einsum("knc,kco->kno", v.reshape(16, -1, c), u).reshape(4, 4, b, th, tw, -1)
  at = lambda r: [r[0] + r[1] + r[2], r[1] - r[2] - r[3]]  # A^T along one axis
  y = [at(list(row)) for row in at(list(m))]  # y[p][q]: output (2i + p, 2j + q)
  y = jnp.stack([jnp.stack(y[p], 3) for p in range(2)], 2)  # (b, th, 2, tw, 2, o)
  return y.reshape(b, 2 * th, 2 * tw, -1)[:, :h, :wd]


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--out", default="benchmarks/results/conv_layers.json")
  args = parser.parse_args()
  import torch

  torch.set_num_threads(2)
  rng = np.random.default_rng(0)
  rows = []
  for name, side, cin, cout in LAYERS:
    x = rng.random((1, side, side, cin), np.float32)
    w = rng.random((3, 3, cin, cout), np.float32) - 0.5
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    f, g = jax.jit(direct), jax.jit(winograd)
    ref = np.asarray(f(xj, wj))
    err = float(np.abs(np.asarray(g(xj, wj)) - ref).max() / np.abs(ref).max())
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    wt = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
    with torch.no_grad():
      torch_ms = _ms(lambda: torch.nn.functional.conv2d(xt, wt, padding=1))
    row = {
      "layer": name,
      "shape": [side, side, cin, cout],
      "gflop": 2 * side * side * cin * cout * 9 / 1e9,
      "xla_ms": _ms(lambda: f(xj, wj).block_until_ready()),
      "torch_ms": torch_ms,
      "winograd_ms": _ms(lambda: g(xj, wj).block_until_ready()),
      "winograd_max_rel_error": err,
    }
    row["xla_gflop_per_s"] = row["gflop"] / row["xla_ms"] * 1e3
    rows.append(row)
    print(
      f"{name:16s} xla {row['xla_ms']:6.2f} ms  torch {torch_ms:6.2f} ms  "
      f"winograd {row['winograd_ms']:6.2f} ms (error {err:.1e})",
      flush=True,
    )
  peak = bench_stylize.matmul_peak(jnp.float32) / 1e9
  out = {
    "benchmark": "conv_layers",
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "jax": jax.__version__,
    "torch": torch.__version__,
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    "matmul_peak_gflop_per_s": peak,
    "layers": rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"matmul peak {peak:.0f} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
  main()
