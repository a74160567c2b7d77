"""model.dtype=bfloat16 trains: bf16 convolutions (encoder, generator, decoder, discriminator),
float32 parameters, Adam moments, losses, attention and statistics; 20 steps track float32."""

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.train import sharding
from sk_jax.train import step as train_lib

STEPS = 20
# bf16 rounds every convolution's inputs to 8 mantissa bits (3.9e-3 relative); through VGG,
# the generator, the decoder and VGG again that compounds. Measured over these 20 steps on
# the 2-core CPU: the total loss within 2.0 % of float32's at every step (content 4.2 %,
# style 4.7 %, which are smaller terms of it); 5 % on the total leaves room for other
# backends' summation orders while a wrong cast (a loss or statistic in bf16) exceeds it.
TOLERANCE = 0.05


def _run(dtype, vgg_params, batches, tiny_train_config):
  cfg = tiny_train_config(model__dtype=dtype, data__batch_size=2, train__d_every=2)
  mesh = sharding.make_mesh(cfg.mesh)
  setup = train_lib.make_setup(cfg, mesh)
  state = setup.init(0)
  vgg_dev = jax.device_put(vgg_params, sharding.replicated(mesh))
  losses = []
  for b in batches:
    state, m = setup.step_fn(state, vgg_dev, sharding.global_batch(mesh, b))
    losses.append({k: float(v) for k, v in jax.device_get(m).items() if k.startswith("loss/")})
  return state, losses


def test_bf16_tracks_float32_for_20_steps(vgg_params, random_batches, tiny_train_config):
  batches = [{k: v[:2] for k, v in b.items()} for b in random_batches(STEPS)]
  _, f32 = _run("float32", vgg_params, batches, tiny_train_config)
  state, bf16 = _run("bfloat16", vgg_params, batches, tiny_train_config)
  for leaf in jax.tree.leaves(
    (state.g.params, state.g.opt_state, state.d.params, state.d.opt_state)
  ):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  total32 = np.array([m["loss/total"] for m in f32])
  total16 = np.array([m["loss/total"] for m in bf16])
  assert np.isfinite(total16).all()
  rel = np.abs(total16 - total32) / np.abs(total32)
  assert rel.max() < TOLERANCE, rel
  # Training moves the losses, and bf16 moves them the same way.
  assert (total32[-5:].mean() < total32[:5].mean()) == (total16[-5:].mean() < total16[:5].mean())
