"""Inference speed of the stylizer (Table 1's T256 and T512): sk-jax against the same network in
PyTorch, and against this machine's matmul peak.

  python benchmarks/bench_stylize.py --out benchmarks/results/stylize_cpu.json

Batch 1, content and style of the same size, median of --repeats runs after a warm-up;
compile time is reported separately. sk-jax is the public `Stylizer`; PyTorch is
`sk_jax.interop.torch_ref.StyleKernel` with the same weights (eager, torch's default threads),
its runs interleaved with sk-jax's so that machine load hits both alike (--no-torch
skips it). FLOPs are counted analytically from the layer shapes (`sk_jax.train.flops`), so the
fraction of peak means the same on every backend; XLA's own count is printed beside
it where it sees the whole program (on a GPU it misses cuDNN's convolutions). The peak
is a 2048 x 2048 matmul in the run's dtype, timed in the same run.
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
from sk_jax.inference.stylizer import Stylizer
from sk_jax.train import flops


def _seconds(fn) -> float:
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def matmul_peak(dtype, n: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of an n x n matmul in `dtype` on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  return 2 * n**3 / statistics.median(_seconds(lambda: f(a, a)) for _ in range(repeats))


def _torch_runner(stylizer: Stylizer, content, style):
  """A callable that runs torch_ref on the same weights and inputs, or None without torch."""
  try:
    import torch
  except ImportError:
    return None
  from sk_jax.interop import port, torch_ref

  model = torch_ref.StyleKernel(stylizer.config)
  model.load_state_dict(
    {
      **port.vgg16_to_torch(jax.device_get(stylizer.vgg_params), prefix="encoder.features."),
      **{
        f"generator.{k}": v
        for k, v in port.generator_to_torch(jax.device_get(stylizer.params)).items()
      },
    },
    strict=False,
  )
  model.eval()
  to_t = lambda x: torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  c, s = to_t(content), to_t(style)

  def run():
    with torch.no_grad():
      return model(c, s)[0]

  return run


def bench_size(stylizer: Stylizer, size: int, repeats: int, with_torch: bool) -> dict:
  rng = np.random.default_rng(0)
  content = jnp.asarray(rng.random((1, size, size, 3), np.float32))
  style = jnp.asarray(rng.random((1, size, size, 3), np.float32))
  alpha = jnp.float32(1.0)
  t = time.perf_counter()
  compiled = stylizer.lower(content, style, alpha).compile()
  compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  stages = flops.stylize_flops(stylizer.config, (size, size), (size, size))
  total = sum(stages.values())
  run = lambda: compiled(stylizer.params, stylizer.vgg_params, content, style, alpha)
  torch_run = _torch_runner(stylizer, content, style) if with_torch else None
  run()  # warm-up
  if torch_run:
    torch_run()
  jax_s, torch_s = [], []
  for _ in range(repeats):  # interleaved
    jax_s.append(_seconds(run))
    if torch_run:
      t = time.perf_counter()
      torch_run()
      torch_s.append(time.perf_counter() - t)
  seconds = statistics.median(jax_s)
  out = {
    "size": size,
    "batch": 1,
    "median_s": seconds,
    "min_s": min(jax_s),
    "compile_s": compile_s,
    "repeats": repeats,
    "gflops": total / 1e9,
    "gflops_by_stage": {k: v / 1e9 for k, v in stages.items()},
    "xla_gflops": float(cost.get("flops", float("nan"))) / 1e9,
    "achieved_gflops_per_s": total / seconds / 1e9,
  }
  if torch_s:
    out.update(
      torch_median_s=statistics.median(torch_s),
      torch_min_s=min(torch_s),
      ratio_vs_torch=seconds / statistics.median(torch_s),
    )
  return out


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--kernel-size", type=int, default=3)
  parser.add_argument("--no-torch", action="store_true", help="time sk-jax only")
  parser.add_argument("--out", default="benchmarks/results/stylize.json")
  args = parser.parse_args()

  config = sk_jax.ModelConfig(dtype=args.dtype, kernel_size=args.kernel_size)
  stylizer = Stylizer(sk_jax.init_params(config, jax.random.key(0)), config)
  peak = matmul_peak(config.compute_dtype)
  results = []
  for size in args.sizes:
    r = bench_size(stylizer, size, args.repeats, not args.no_torch)
    r["fraction_of_matmul_peak"] = r["achieved_gflops_per_s"] * 1e9 / peak
    results.append(r)
    vs = (
      f"; torch_ref {r['torch_median_s'] * 1e3:.1f} ms, sk-jax / torch = {r['ratio_vs_torch']:.2f}"
      if "ratio_vs_torch" in r
      else ""
    )
    print(
      f"T{size}: {r['median_s'] * 1e3:.1f} ms (compile {r['compile_s']:.1f} s), "
      f"{r['gflops']:.1f} GFLOP (XLA counts {r['xla_gflops']:.1f}), {r['achieved_gflops_per_s']:.1f} "
      f"GFLOP/s = {100 * r['fraction_of_matmul_peak']:.0f}% of the {args.dtype} matmul peak{vs}"
    )
  report = {
    "benchmark": "stylize",
    "device": str(jax.devices()[0].device_kind),
    "platform": jax.default_backend(),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}",
    "jax": jax.__version__,
    "dtype": args.dtype,
    "kernel_size": args.kernel_size,
    "flops": "analytic, sk_jax.train.flops (a multiply-add is 2 FLOPs)",
    "matmul_peak_gflops_per_s": peak / 1e9,
    "results": results,
  }
  try:
    import torch

    report["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
  except ImportError:
    pass
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"peak {args.dtype} matmul: {peak / 1e9:.1f} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
  main()
