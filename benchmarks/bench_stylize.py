"""Inference speed of the generator (Table 1's T256 and T512) against this machine's matmul peak.

  python benchmarks/bench_stylize.py --out benchmarks/results/stylize_cpu.json

Batch 1, content and style of the same size, median of --repeats runs after a
warm-up; compile time is reported separately. FLOPs come from XLA's cost
analysis of the compiled program; the peak is a float32 matmul timed here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import sk_jax
from sk_jax.stylizer import Stylizer


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """float32 FLOP/s of an n x n matmul on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  return 2 * n**3 / _median_seconds(lambda: f(a, a), repeats)


def bench_size(stylizer: Stylizer, size: int, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  content = jnp.asarray(rng.random((1, size, size, 3), np.float32))
  style = jnp.asarray(rng.random((1, size, size, 3), np.float32))
  alpha = jnp.float32(1.0)
  t = time.perf_counter()
  compiled = stylizer.lower(content, style, alpha).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan")))
  run = lambda: compiled(stylizer.params, stylizer.vgg_params, content, style, alpha)
  jax.block_until_ready(run())  # warm-up
  seconds = _median_seconds(run, repeats)
  return {"size": size, "batch": 1, "median_s": seconds, "compile_s": compile_s, "repeats": repeats,
          "gflops": flops / 1e9, "achieved_gflops_per_s": flops / seconds / 1e9}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--kernel-size", type=int, default=3)
  parser.add_argument("--out", default="benchmarks/results/stylize.json")
  args = parser.parse_args()

  config = sk_jax.ModelConfig(dtype=args.dtype, kernel_size=args.kernel_size)
  stylizer = Stylizer(sk_jax.init_params(config, jax.random.key(0)), config)
  peak = matmul_peak()
  results = []
  for size in args.sizes:
    r = bench_size(stylizer, size, args.repeats)
    r["fraction_of_matmul_peak"] = r["achieved_gflops_per_s"] * 1e9 / peak
    results.append(r)
    print(f"T{size}: {r['median_s'] * 1e3:.1f} ms (compile {r['compile_s']:.1f} s), "
          f"{r['gflops']:.1f} GFLOP, {r['achieved_gflops_per_s']:.1f} GFLOP/s = "
          f"{100 * r['fraction_of_matmul_peak']:.0f}% of the float32 matmul peak")
  report = {
      "benchmark": "stylize", "device": str(jax.devices()[0].device_kind), "platform": jax.default_backend(),
      "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}",
      "jax": jax.__version__, "dtype": args.dtype, "kernel_size": args.kernel_size,
      "matmul_peak_gflops_per_s": peak / 1e9, "results": results}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"peak float32 matmul: {peak / 1e9:.1f} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
  main()
