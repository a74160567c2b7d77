"""Style Alignment Encoding with the Content-based Gating Modulation (Sec. 3.1)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sk_jax import ops


class GateNet(nn.Module):
  """E_f: content feature -> (lambda, beta), one value each per content position."""
  hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_c):
    h = nn.relu(nn.Conv(self.hidden, (3, 3), dtype=self.dtype, name="conv1")(z_c))
    # Small weights and bias (1, 0): lambda starts near 1 and beta near 0, so the
    # first threshold is the attention-weighted mean of A_r; the small weights
    # still pass gradient to conv1 from the first step.
    out = nn.Conv(2, (3, 3), dtype=self.dtype, name="conv2",
                  kernel_init=nn.initializers.normal(1e-3),
                  bias_init=lambda *_: jnp.array([1.0, 0.0], jnp.float32))(h)
    out = out.astype(jnp.float32)
    # lax.index_in_dim rather than out[..., 0]: under symbolic shapes (jax.export, ONNX)
    # basic indexing becomes a gather, which converters handle poorly.
    return (jax.lax.index_in_dim(out, 0, axis=-1, keepdims=False),
            jax.lax.index_in_dim(out, 1, axis=-1, keepdims=False))


class StyleAlignment(nn.Module):
  """Z_c, Z_s -> Z_cs (Eqs. 1-5); aux holds the attention statistics."""
  sharpness: float
  learn_sharpness: bool
  gate: bool
  renormalize: bool
  temperature: float
  gate_hidden: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_c, z_s):
    if self.learn_sharpness:
      log_alpha = self.param("log_sharpness", lambda *_: jnp.array(math.log(self.sharpness), jnp.float32))
      sharpness = jnp.exp(log_alpha)
    else:
      sharpness = self.sharpness
    if self.gate:
      lam, beta = GateNet(self.gate_hidden, self.dtype, name="gate")(z_c)
      # beta is predicted in units of the uniform attention weight 1/Ns, so one
      # network serves every style resolution (docs/method.md).
      beta = beta / (z_s.shape[1] * z_s.shape[2])
    else:
      lam = beta = jnp.zeros(z_c.shape[:3], jnp.float32)
    return ops.aligned_style_features(
        z_c, z_s, lam, beta, sharpness, self.gate,
        temperature=self.temperature, renormalize=self.renormalize, return_aux=True)
