"""Training throughput, TFLOP/s, MFU and peak memory of the full train step at 256 x 256.

  python benchmarks/bench_train.py --out benchmarks/results/train_cpu.json
  python benchmarks/bench_train.py --batches 16,32 --dtype bfloat16 --out .../train_h200_bf16.json

TFLOP/s per device and MFU are the trainer's `throughput/...` figures: the analytic count of
sk_jax.train.flops.train_step_flops over the step time, MFU against sk_jax.train.hardware's peak table
("unknown" for devices not in it, such as the CPU).

The paper's config (configs/default.py: full generator, pix2pixHD discriminator, all
losses) on one device, synthetic uint8 batches so that only the jitted step is timed
(G and D forward and backward, VGG-16 on 5 x batch images, both Adam updates).
Mean over --steps steps (an even number: half of them also update D) after a compiling
warm-up step; each batch size runs in its own
subprocess so that its peak memory is its own. Peak memory is the device's
peak_bytes_in_use where the backend reports it (GPU, TPU), else the process's peak
resident set size (CPU: parameters, activations, the compiler and the Python runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(batch: int, size: int, steps: int, dtype: str = "float32") -> dict:
  import jax
  import numpy as np

  from sk_jax.config import load_config
  from sk_jax.io import weights
  from sk_jax.train import flops, hardware, sharding
  from sk_jax.train import step as train

  cfg = load_config(os.path.join(ROOT, "configs", "default.py"))
  cfg.data.batch_size, cfg.data.crop, cfg.mesh.data = batch, size, 1
  cfg.model.dtype = dtype
  mesh = sharding.make_mesh(cfg.mesh)
  setup = train.make_setup(cfg, mesh)
  state = setup.init(0)
  vgg_params = jax.device_put(weights.load_vgg16(), sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  batches = [
    sharding.global_batch(
      mesh,
      {
        k: rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        for k in ("content", "style")
      },
    )
    for _ in range(2)
  ]
  t = time.perf_counter()
  state, m = setup.step_fn(state, vgg_params, batches[0])
  jax.block_until_ready(m)
  first = time.perf_counter() - t
  times = []
  for i in range(steps):  # alternating parity: G-only and G+D steps both count
    t = time.perf_counter()
    state, m = setup.step_fn(state, vgg_params, batches[i % 2])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = statistics.mean(times)
  device = jax.local_devices()[0]
  step_flops = sum(flops.train_step_flops(cfg, setup.model, setup.disc).values())
  peak, peak_label = hardware.peak_flops(device, dtype, jax.config.jax_default_matmul_precision)
  tflops = step_flops / step_s / 1e12
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    peak, kind = stats["peak_bytes_in_use"], "device peak_bytes_in_use"
  else:
    peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
  return {
    "batch": batch,
    "size": size,
    "steps_timed": steps,
    "step_s_mean": round(step_s, 4),
    "step_s_all": [round(x, 4) for x in times],
    "dtype": dtype,
    "images_per_s": round(batch / step_s, 4),
    "images_per_s_per_device": round(batch / step_s, 4),
    "train_step_tflop": round(step_flops / 1e12, 4),
    "tflops_per_device": round(tflops, 4),
    "peak": peak_label,
    "mfu": round(tflops * 1e12 / peak, 4) if peak else "unknown",
    "first_step_s_incl_compile": round(first, 2),
    "peak_memory_mib": round(peak / 2**20, 1),
    "peak_memory_kind": kind,
    "loss_total_last": float(m["loss/total"]),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--out", default=os.path.join(ROOT, "benchmarks", "results", "train_cpu.json")
  )
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(measure(args.child, args.size, args.steps, args.dtype)))
    return

  results = []
  for batch in (int(b) for b in args.batches.split(",")):
    proc = subprocess.run(
      [
        sys.executable,
        __file__,
        "--child",
        str(batch),
        "--size",
        str(args.size),
        "--steps",
        str(args.steps),
        "--dtype",
        args.dtype,
      ],
      capture_output=True,
      text=True,
      check=False,
    )
    if proc.returncode:
      sys.exit(f"batch {batch} failed:\n{proc.stderr[-3000:]}")
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps(results[-1]))
  import jax

  device = jax.local_devices()[0]
  report = {
    "benchmark": "train_step",
    "config": "configs/default.py (paper), synthetic uint8 batches, 1 device",
    "machine": {
      "platform": device.platform,
      "device_kind": device.device_kind,
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "jax": jax.__version__,
    },
    "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(args.out)


if __name__ == "__main__":
  main()
