"""Style Alignment Encoding with the Content-based Gating Modulation (Sec. 3.1)."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from sk_jax.nn import ops, spatial

# How E_f's first output becomes lambda (docs/method.md, "Why the gate opens").
GATE_LAMBDAS = ("linear", "softplus")
_SOFTPLUS_ONE = math.log(math.e - 1.0)  # softplus(_SOFTPLUS_ONE) = 1


class GateNet(nn.Module):
  """E_f: content feature -> (lambda, beta), one value each per content position.

  lambda_form "linear" is the raw output (as printed); "softplus" keeps lambda
  positive. beta is returned in units of the uniform attention weight 1/Ns.
  center: each image's lambda is shifted to mean 1 and its beta to mean 0 over its content
  positions, so E_f sets each position's threshold relative to the image's and cannot move
  the level (docs/method.md, "The gate's equilibrium").
  """

  hidden: int
  dtype: jnp.dtype = jnp.float32
  lambda_form: str = "linear"
  center: bool = False

  @nn.compact
  def __call__(self, z_c, hw=None):
    h = nn.relu(nn.Conv(self.hidden, (3, 3), dtype=self.dtype, name="conv1")(z_c))
    if hw is not None:
      # conv2's zero padding at the true border (z_c is 0 outside it already)
      h = spatial.zero_outside(h, hw)
    # Small weights and a bias that makes lambda 1 and beta 0: the first threshold
    # is the attention-weighted mean of A_r; the small weights still pass
    # gradient to conv1 from the first step.
    lam0 = _SOFTPLUS_ONE if self.lambda_form == "softplus" else 1.0
    out = nn.Conv(
      2,
      (3, 3),
      dtype=self.dtype,
      name="conv2",
      kernel_init=nn.initializers.normal(1e-3),
      bias_init=lambda *_: jnp.array([lam0, 0.0], jnp.float32),
    )(h)
    out = out.astype(jnp.float32)
    # lax.index_in_dim rather than out[..., 0]: under symbolic shapes (jax.export, ONNX)
    # basic indexing becomes a gather, which converters handle poorly.
    lam = jax.lax.index_in_dim(out, 0, axis=-1, keepdims=False)
    if self.lambda_form == "softplus":
      lam = jax.nn.softplus(lam)
    beta = jax.lax.index_in_dim(out, 1, axis=-1, keepdims=False)
    if self.center:
      lam = lam - _image_mean(lam, hw) + 1.0
      beta = beta - _image_mean(beta, hw)
    return lam, beta


def _image_mean(x_BxHxW, hw=None):
  """Each image's mean over its content positions (those inside hw), (B, 1, 1)."""
  if hw is None:
    return jnp.mean(x_BxHxW, axis=(1, 2), keepdims=True)
  valid = spatial.valid_positions(x_BxHxW.shape[1:3], hw)
  total = jnp.sum(jnp.where(valid, x_BxHxW, 0.0), axis=(1, 2), keepdims=True)
  return total / jnp.sum(valid)


class StyleAlignment(nn.Module):
  """Z_c, Z_s -> Z_cs (Eqs. 1-5, or Fig. 3's full / topK aggregation); aux holds the attention statistics."""

  sharpness: float
  learn_sharpness: bool
  attention: str  # "full", "topk", "cgm", "quantile" (ops.ATTENTIONS)
  renormalize: bool
  temperature: float
  gate_hidden: int
  dtype: jnp.dtype = jnp.float32
  topk: int = 16
  gate_lambda: str = "linear"
  # of the attention's einsums (ops.PRECISIONS)
  precision: str = "highest"
  # content positions per chunk (None: all at once)
  query_chunk: int | None = None
  # k* of "quantile"; with gate_offset, the kept fraction the controller holds "cgm" at
  gate_target: float | None = None
  # a "beta_offset" parameter (units of 1/Ns) added to E_f's beta, moved by the trainer's
  # controller only (sk_jax.train.step.control_gate_offset); gradients never reach it
  gate_offset: bool = False
  # the straight-through backward of "cgm" (ops.SURROGATES)
  gate_surrogate: str = "sigmoid"
  # E_f's outputs centred per image (GateNet.center)
  gate_center: bool = False

  @nn.compact
  def __call__(self, z_c, z_s, content_hw=None, style_hw=None):
    """content_hw, style_hw: true sizes of features padded to a size bucket (see
    ops.aligned_style_features); the gate and its statistics see only those positions."""
    if self.learn_sharpness:
      log_alpha = self.param(
        "log_sharpness", lambda *_: jnp.array(math.log(self.sharpness), jnp.float32)
      )
      sharpness = jnp.exp(log_alpha)
    else:
      sharpness = self.sharpness
    ns = z_s.shape[1] * z_s.shape[2]
    if style_hw is not None:
      ns = (style_hw[0] * style_hw[1]).astype(jnp.float32)
    if content_hw is not None:
      z_c = spatial.zero_outside(z_c, content_hw)
    attention = self.attention
    if attention == "cgm":
      lam, beta_ns = GateNet(
        self.gate_hidden, self.dtype, self.gate_lambda, self.gate_center, name="gate"
      )(z_c, content_hw)
      if self.gate_offset:
        offset = self.param("beta_offset", nn.initializers.zeros_init(), (), jnp.float32)
        beta_ns = beta_ns + jax.lax.stop_gradient(offset)
      # beta is predicted in units of the uniform attention weight 1/Ns, so one
      # network serves every style resolution (docs/method.md).
      beta = beta_ns / ns
    else:
      lam = beta = beta_ns = jnp.zeros(z_c.shape[:3], jnp.float32)
    z_cs, aux = ops.aligned_style_features(
      z_c,
      z_s,
      lam,
      beta,
      sharpness,
      attention=attention,
      topk=self.topk,
      fraction=self.gate_target,
      temperature=self.temperature,
      surrogate=self.gate_surrogate,
      renormalize=self.renormalize,
      return_aux=True,
      query_chunk=self.query_chunk,
      precision=self.precision,
      content_hw=content_hw,
      style_hw=style_hw,
    )
    # Per-image gate statistics for the logs (docs/method.md, "Why the gate opens").
    b = z_c.shape[0]
    mean = lambda x: _image_mean(x.reshape(z_c.shape[:3]), content_hw).reshape(b)
    aux.update(
      gate_lambda=jax.lax.stop_gradient(mean(lam)),
      gate_beta_ns=jax.lax.stop_gradient(mean(beta_ns)),
      gate_threshold_ns=mean(aux["threshold"]) * ns,
    )
    return z_cs, aux
