"""Which loss term pushes the CGM open: d(term)/d(lambda) and d(term)/d(beta) at initialisation.

  python benchmarks/gate_gradients.py --out benchmarks/results/gate_gradients_cpu64.json   (about 2 min, 2 cores)

For each reading (the printed one and the renormalised one) and a few batches of the
embedded images at 64 px, differentiates every term of Eq. 7 with respect to the bias
of E_f's output layer, i.e. a uniform shift of lambda (or of beta, in units of 1/Ns)
at every content position, through the straight-through surrogate of Eq. 5. A positive
derivative means that raising the threshold raises that term, so gradient descent
lowers the threshold: the gate opens. Terms are weighted as in configs/default.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TERMS = ("content", "style", "remd", "rec", "adv_g")


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--batches", type=int, default=4)
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np

  from sk_jax.config import load_config, validate_config
  from sk_jax.io.weights import load_vgg16
  from sk_jax.train import data
  from sk_jax.train import step as train

  vgg_params = load_vgg16()
  out = {"size": args.size, "batch": args.batch, "batches": args.batches, "readings": {}}
  for name, renorm in (("printed", False), ("renormalised", True)):
    cfg = load_config(os.path.join(ROOT, "configs", "default.py"))
    cfg.model.update(
      attention="cgm", gate_lambda="linear", gate_renormalize=renorm, gate_temperature=1.0
    )
    cfg.data.update(
      content="embedded:photos",
      style="embedded:styles",
      resize=int(args.size * 1.5),
      crop=args.size,
      batch_size=args.batch,
      num_workers=0,
      num_threads=2,
    )
    cfg.disc.features = 16
    model, disc = validate_config(cfg)
    g_loss = train.make_generator_loss(cfg, model, disc)
    state = jax.jit(
      train.make_setup(
        cfg, jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1])
      ).create_state
    )(jax.random.key(0))
    weights = jnp.array([cfg.loss[k if k != "adv_g" else "adv"] for k in TERMS])

    @jax.jit
    def jac(g_params, d_params, content, style, key):
      def terms_of(bias):
        p = jax.tree.map(lambda x: x, g_params)
        p["alignment"]["gate"]["conv2"]["bias"] = bias
        _, (terms, _) = g_loss(p, d_params, vgg_params, content, style, key)
        return jnp.stack([terms[k] for k in TERMS])

      return jax.jacfwd(terms_of)(g_params["alignment"]["gate"]["conv2"]["bias"])  # (terms, 2)

    streams = [iter(s) for s in data.build_streams(cfg.data, data.open_sources(cfg.data), 0)]
    js = []
    for i in range(args.batches):
      c, s = (next(it)["image"].astype(np.float32) / 255.0 for it in streams)
      js.append(np.asarray(jac(state.g.params, state.d.params, c, s, jax.random.key(i))))
    for it in streams:
      it.close()
    j = np.mean(js, axis=0) * np.asarray(weights)[:, None]
    out["readings"][name] = {
      "d_dlambda": {k: float(j[i, 0]) for i, k in enumerate(TERMS)},
      "d_dbeta_ns": {k: float(j[i, 1]) for i, k in enumerate(TERMS)},
      "d_dlambda_total": float(j[:, 0].sum()),
      "d_dbeta_ns_total": float(j[:, 1].sum()),
      "per_batch_total_dlambda": [
        float((np.asarray(x) * np.asarray(weights)[:, None])[:, 0].sum()) for x in js
      ],
    }
    print(name, json.dumps(out["readings"][name], indent=1), flush=True)
  with open(args.out, "w") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main()
