"""Exported stylizers against JAX: onnxruntime CPU time at 512, parity, and the bfloat16 checkpoint.

  python benchmarks/bench_export.py --out benchmarks/results/export_cpu.json

The default-size generator (random init, seed 0; `sk-jax init`), batch 1, content and
style 512 x 512 (the astronaut and the coffee picture). Runs of JAX (jit of the live
forward pass), the deserialized StableHLO artifact and onnxruntime are interleaved,
so that load from other processes hits all three alike; medians of --repeats.
Also: each artifact's relative error and gate flips against JAX, and the size and
output difference of a bfloat16 generator checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import jax
import numpy as np

import sk_jax
from sk_jax.export import function as export_fn
from sk_jax.export import onnx as onnx_export
from sk_jax.export import stablehlo
from sk_jax.interop import parity, port
from sk_jax.io import artifacts, images
from sk_jax.nn.generator import stylize_images


def _dir_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def _image(name: str, size: int) -> np.ndarray:
  from skimage import data

  return parity.prepare_image(getattr(data, name)().astype(np.float32) / 255.0, size)[None]


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results/export.json")
  args = parser.parse_args()

  config = sk_jax.ModelConfig()
  params = sk_jax.init_params(config, jax.random.key(0))
  vgg_params = sk_jax.load_vgg16()
  content, style = _image("astronaut", args.size), _image("coffee", args.size)
  content, style = content[:, : args.size, : args.size], style[:, : args.size, : args.size]
  work = tempfile.mkdtemp(prefix="bench_export_")

  live = jax.jit(lambda p, v, c, s: stylize_images(p, v, config, c, s)[0])
  t = time.perf_counter()
  hlo_path = stablehlo.save_stablehlo(
    os.path.join(work, "model.stablehlo"), stablehlo.export_stablehlo(params, vgg_params, config)
  )
  hlo_export_s = time.perf_counter() - t
  exported = stablehlo.load_stablehlo(hlo_path)
  t = time.perf_counter()
  onnx_model = onnx_export.export_onnx(params, vgg_params, config, gate_output=True)
  onnx_export_s = time.perf_counter() - t
  onnx_path = onnx_export.save_onnx(os.path.join(work, "model.onnx"), onnx_model)
  session = onnx_export.onnx_session(onnx_path)
  feeds = {"content": content, "style": style}

  runners = {
    "jax": lambda: jax.block_until_ready(live(params, vgg_params, content, style)),
    "stablehlo": lambda: jax.block_until_ready(exported.call(content, style)),
    # The gate mask is an intermediate either way; fetching only "stylized" skips its copy.
    "onnxruntime": lambda: session.run(["stylized"], feeds),
  }
  first = {"onnxruntime_with_gate": session.run(None, feeds)}
  for name, run in runners.items():  # warm-up (compilation, ORT's first-run allocation)
    t = time.perf_counter()
    first[name] = run()
    print(f"{name}: first call {time.perf_counter() - t:.1f} s")
  times = {name: [] for name in runners}
  for _ in range(args.repeats):
    for name, run in runners.items():
      t = time.perf_counter()
      run()
      times[name].append(time.perf_counter() - t)

  ref = np.asarray(first["jax"])
  ort_image, ort_mask = first["onnxruntime_with_gate"]
  jax_mask, gap = export_fn.reference_gate(params, vgg_params, config, content, style)
  flipped = ort_mask != jax_mask
  parity_rows = {
    "stablehlo_max_rel_err": port.relative_error(np.asarray(first["stablehlo"]), ref)[1],
    "onnx_max_rel_err": port.relative_error(ort_image, ref)[1],
    "onnx_max_abs_err": float(np.abs(ort_image - ref).max()),
    "gate_decisions": int(jax_mask.size),
    "gate_kept_fraction": float(jax_mask.mean()),
    "onnx_gate_flips": int(flipped.sum()),
    "onnx_gate_flip_max_gap": float(gap[flipped].max()) if flipped.any() else 0.0,
    "gate_band": parity.GATE_BAND["float32"],
  }

  f32 = artifacts.save_generator(os.path.join(work, "gen_f32"), params, config)
  bf16 = artifacts.save_generator(os.path.join(work, "gen_bf16"), params, config, dtype="bfloat16")
  params16, _ = artifacts.load_generator(bf16)
  image16 = np.asarray(live(params16, vgg_params, content, style))
  diff = np.abs(image16 - ref) * 255.0
  u8_diff = np.abs(images.to_uint8(image16[0]).astype(int) - images.to_uint8(ref[0]).astype(int))
  bf16_rows = {
    "float32_bytes": _dir_size(f32),
    "bfloat16_bytes": _dir_size(bf16),
    "size_ratio": _dir_size(bf16) / _dir_size(f32),
    "mean_abs_diff_255": float(diff.mean()),
    "max_abs_diff_255": float(diff.max()),
    "uint8_pixels_changed_fraction": float((u8_diff > 0).mean()),
  }

  medians = {name: statistics.median(ts) for name, ts in times.items()}
  report = {
    "benchmark": "export",
    "platform": jax.default_backend(),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.processor() or platform.platform()}",
    "jax": jax.__version__,
    "onnxruntime": __import__("onnxruntime").__version__,
    "jax2onnx": __import__("importlib.metadata").metadata.version("jax2onnx"),
    "model": "default ModelConfig, random init (seed 0)",
    "size": args.size,
    "batch": 1,
    "repeats": args.repeats,
    "median_s": medians,
    "all_s": times,
    "export_s": {"stablehlo": hlo_export_s, "onnx": onnx_export_s},
    "artifact_bytes": {"stablehlo": os.path.getsize(hlo_path), "onnx": os.path.getsize(onnx_path)},
    "parity": parity_rows,
    "bfloat16_checkpoint": bf16_rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(
    json.dumps(
      {
        k: report[k]
        for k in ("median_s", "export_s", "artifact_bytes", "parity", "bfloat16_checkpoint")
      },
      indent=2,
    )
  )
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
