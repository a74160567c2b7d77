"""Writes the bundled generator (sk_jax/assets/NAME/) from an Orbax generator checkpoint, and
measures how far its bfloat16-stored weights move the stylized output from the float32 original.

  python benchmarks/bundle_generator.py --checkpoint ../shared/models/h200-dev-2500/generator \
      --out benchmarks/results/bundled_bf16.json

The weights are stored in bfloat16 and computed in float32 (they are widened on load), so the
only difference is the rounding of each weight. The comparison stylizes packaged scikit-image
images at --size with both weight sets and reports |out_bf16 - out_f32| in [0, 1] units.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import numpy as np

from sk_jax.inference import bundled
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import artifacts, images

CONTENTS = ("astronaut", "chelsea", "coffee", "rocket")
STYLES = ("hubble_deep_field", "immunohistochemistry", "brick", "colorwheel")


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--checkpoint", required=True, help="the float32 Orbax generator to bundle")
  parser.add_argument("--directory", default=bundled.DIRECTORY, help="where to write the bundle")
  parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--out", default="benchmarks/results/bundled_bf16.json")
  args = parser.parse_args()

  params32, config = artifacts.load_generator(args.checkpoint)
  bundled.write(args.directory, params32, config, args.dtype)
  params16, config16 = bundled.load(args.directory)
  assert config16 == config

  ref, test = Stylizer(params32, config), Stylizer(params16, config, vgg_params=None)
  pairs = []
  for c in CONTENTS:
    for s in STYLES:
      a = ref.stylize(f"skimage:{c}", f"skimage:{s}", size=args.size)
      b = test.stylize(f"skimage:{c}", f"skimage:{s}", size=args.size)
      d = np.abs(a - b)
      d8 = np.abs(images.to_uint8(a).astype(int) - images.to_uint8(b).astype(int))
      pairs.append(
        {
          "content": c,
          "style": s,
          "mean_abs": float(d.mean()),
          "max_abs": float(d.max()),
          "uint8_mean_abs": float(d8.mean()),
          "uint8_max_abs": int(d8.max()),
        }
      )
      print(pairs[-1])
  size = sum(os.path.getsize(os.path.join(args.directory, f)) for f in os.listdir(args.directory))
  report = {
    "checkpoint": os.path.basename(
      os.path.normpath(os.path.dirname(os.path.abspath(args.checkpoint)))
    ),
    "stored_dtype": args.dtype,
    "bundle_bytes": size,
    "size": args.size,
    "mean_abs_over_pairs": float(np.mean([p["mean_abs"] for p in pairs])),
    "worst_pair_mean_abs": float(max(p["mean_abs"] for p in pairs)),
    "max_abs_over_pairs": float(max(p["max_abs"] for p in pairs)),
    "threshold": 1 / 255,
    "pairs": pairs,
    "environment": {
      "device": jax.devices()[0].device_kind,
      "jax": jax.__version__,
      "python": platform.python_version(),
    },
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  print(
    f"{args.out}: mean |bf16 - f32| = {report['mean_abs_over_pairs']:.2e} "
    f"(worst pair {report['worst_pair_mean_abs']:.2e}, 1/255 = {1 / 255:.2e}); bundle {size / 1e6:.1f} MB"
  )


if __name__ == "__main__":
  main()
