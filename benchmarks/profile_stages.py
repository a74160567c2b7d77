"""Per-stage time of one stylization, sk-jax against `sk_jax.interop.torch_ref` on the same weights.

  python benchmarks/profile_stages.py --size 512 --out benchmarks/results/stages_cpu.json

Stages: the encoder (VGG-16 to relu4_1, one image), the alignment (SAE + CGM), the
kernel head, Eq. 6 and the decoder; each jitted on its own (JAX) or run eagerly
(PyTorch), batch 1, median of --repeats after a warm-up, each side in its own phase (see main).
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
import torch

import sk_jax
from sk_jax.interop import port, torch_ref
from sk_jax.nn import vgg
from sk_jax.nn.decoder import Decoder
from sk_jax.nn.generator import FEATURE_CHANNELS, Generator
from sk_jax.nn.kernels import apply_style_kernels


def _time(fn, repeats):
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def stages(config, params, vgg_params, size):
  """{stage: (jax thunk, torch thunk)} on random inputs of the right shapes."""
  rng = np.random.default_rng(0)
  image = rng.random((1, size, size, 3), np.float32)
  f = size // 8
  z = np.abs(rng.normal(size=(1, f, f, FEATURE_CHANNELS))).astype(np.float32)

  t_model = torch_ref.StyleKernel(config)
  t_model.load_state_dict(
    {
      **port.vgg16_to_torch(vgg_params, prefix="encoder.features."),
      **{f"generator.{k}": v for k, v in port.generator_to_torch(params).items()},
    },
    strict=False,
  )
  t_model.eval()
  nchw = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  t_img, t_z = nchw(image), nchw(z)

  # The generator's own stages (Generator.align, .kernels) and its decoder, each jitted alone.
  gen = Generator(config)
  stage = lambda method: jax.jit(lambda p, *a: gen.apply({"params": p}, *a, method=method))
  decoder = Decoder(config.compute_dtype)
  dec = jax.jit(lambda p, x: decoder.apply({"params": p["decoder"]}, x))

  enc = jax.jit(lambda v, x: vgg.vgg16_features(v, x, taps=("relu4_1",))["relu4_1"])
  vgg_dev = jax.device_put(vgg_params)
  params = jax.device_put(params)
  align_both, kern = stage(Generator.align), stage(Generator.kernels)
  align = lambda p, z_c, z_s: align_both(p, z_c, z_s)[0]
  z_cs = align(params, z, z)
  f_v, f_h, b = kern(params, z_cs)
  eq6 = jax.jit(lambda *a: apply_style_kernels(*a, config.shuffle_groups))
  jimg, jz = jnp.asarray(image), jnp.asarray(z)

  with torch.no_grad():
    t_zcs = t_model.generator.alignment(t_z, t_z)[0]
    t_k = t_model.generator.kernel_head(t_zcs)

  def torch_thunk(fn):
    def run():
      with torch.no_grad():
        return fn()

    return run

  return {
    "encoder (one image)": (
      lambda: enc(vgg_dev, jimg),
      torch_thunk(lambda: t_model.encoder(t_img)),
    ),
    "alignment (SAE + CGM)": (
      lambda: align(params, jz, jz),
      torch_thunk(lambda: t_model.generator.alignment(t_z, t_z)),
    ),
    "kernel head": (
      lambda: kern(params, z_cs),
      torch_thunk(lambda: t_model.generator.kernel_head(t_zcs)),
    ),
    "Eq. 6": (
      lambda: eq6(jz, f_v, f_h, b),
      torch_thunk(lambda: torch_ref.apply_style_kernels(t_z, *t_k, config.shuffle_groups)),
    ),
    "decoder": (lambda: dec(params, jz), torch_thunk(lambda: t_model.generator.decoder(t_z))),
  }


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--size", type=int, default=512)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results/stages.json")
  args = parser.parse_args()
  config = sk_jax.ModelConfig()
  params = jax.device_get(sk_jax.init_params(config, jax.random.key(0)))
  vgg_params = sk_jax.load_vgg16()  # host copies for torch; jax.device_put below for JAX
  rows = {}
  for name, (j, t) in stages(config, params, vgg_params, args.size).items():
    # Not interleaved: torch's OpenMP threads spin for a while after each call and slow a
    # JAX call that follows at once (and XLA's threads do the same to torch), which distorts
    # short stages. Each side runs its repeats as one phase, with a pause between.
    jt = _time(j, args.repeats)
    time.sleep(1.0)
    tt = _time(t, args.repeats)
    time.sleep(1.0)
    rows[name] = {
      "jax_s": statistics.median(jt),
      "torch_s": statistics.median(tt),
      "ratio": statistics.median(jt) / statistics.median(tt),
    }
    print(
      f"{name:<24} jax {rows[name]['jax_s'] * 1e3:8.1f} ms  torch {rows[name]['torch_s'] * 1e3:8.1f} ms  "
      f"ratio {rows[name]['ratio']:.2f}"
    )
  report = {
    "benchmark": "stages",
    "size": args.size,
    "jax": jax.__version__,
    "torch": torch.__version__,
    "torch_threads": torch.get_num_threads(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    "stages": rows,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
