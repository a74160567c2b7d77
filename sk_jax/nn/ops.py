"""Pure array math of StyleKernel: no Flax state, NHWC throughout.

Each function maps to an equation of the paper; see docs/method.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_EPS = 1e-5


def channel_shuffle(x, groups: int):
  """ShuffleNet channel shuffle of the last axis: (.., g, C/g) -> (.., C/g, g)."""
  c = x.shape[-1]
  if groups <= 1:
    return x
  if c % groups:
    raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
  x = x.reshape(*x.shape[:-1], groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*x.shape[:-2], c)


def mean_std(x, eps: float = _EPS):
  """Per-sample, per-channel spatial mean and std of (B, H, W, C); eps inside the sqrt."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  var = jnp.var(x, axis=(1, 2), keepdims=True)
  return mean, jnp.sqrt(var + eps)


def instance_norm(x, eps: float = _EPS):
  """(x - mu) / sigma over the spatial axes of (B, H, W, C) (the normalisation of Eq. 6)."""
  mean, std = mean_std(x, eps)
  return (x - mean) / std


def _shifted_copies(x, k: int, axis: int):
  """k copies of x shifted by t - k//2 along `axis`, reflection at the edges; stacked last."""
  r = k // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, mode="reflect")
  n = x.shape[axis]
  return jnp.stack([jax.lax.slice_in_dim(xp, t, t + n, axis=axis) for t in range(k)], axis=-1)


def separable_pixel_conv(x, f_v, f_h, bias):
  """Per-position, per-channel separable convolution (Eq. 6 without the normalisation).

  Args:
    x: (B, H, W, C) feature.
    f_v: (B, H, W, C, k) vertical (k x 1) filter at every position and channel.
    f_h: (B, H, W, C, k) horizontal (1 x k) filter.
    bias: (B, H, W, C).

  Returns:
    (B, H, W, C): y[b,i,j,c] = sum_t f_v[b,i,j,c,t] x[b,i+t-k//2,j,c], then
    z[b,i,j,c] = sum_t f_h[b,i,j,c,t] y[b,i,j+t-k//2,c], then z + bias; rows and
    columns outside the image are read with reflection (numpy's 'reflect').
  """
  k = f_v.shape[-1]
  if f_h.shape[-1] != k or k % 2 == 0:
    raise ValueError(
      f"separable_pixel_conv: filters must share one odd size, got {f_v.shape} {f_h.shape}"
    )
  y = jnp.einsum("bhwck,bhwck->bhwc", _shifted_copies(x, k, axis=1), f_v)
  z = jnp.einsum("bhwck,bhwck->bhwc", _shifted_copies(y, k, axis=2), f_h)
  return z + bias


def conv3x3_reflect(x, kernel):
  """A 3 x 3 convolution of (B, H, W, Cin) over its reflection-padded self (numpy's 'reflect'),
  kernel (3, 3, Cin, Cout) -> (B, H, W, Cout); H, W >= 2.

  Equal to `conv(pad(x, 1, "reflect"), kernel, "VALID")`, computed as XLA's zero-padded
  ("SAME") convolution, whose interior never reads the padding, with the border rows and
  columns recomputed from thin reflected strips. XLA's CPU backend runs a VALID convolution
  of a padded input several times slower than the SAME one (docs/method.md, decoder).
  """
  conv = lambda a, padding: jax.lax.conv_general_dilated(
    a, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  h, w = x.shape[1:3]
  if not (isinstance(h, int) and isinstance(w, int)):
    # Symbolic sizes (jax.export, ONNX): the plain form, which converters follow.
    return conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), "VALID")
  reflect = lambda a, axis: jnp.concatenate(
    [
      jax.lax.slice_in_dim(a, 1, 2, axis=axis),
      a,
      jax.lax.slice_in_dim(a, a.shape[axis] - 2, a.shape[axis] - 1, axis=axis),
    ],
    axis=axis,
  )
  out = conv(x, "SAME")
  top = conv(reflect(reflect(x[:, :2], 1)[:, :3], 2), "VALID")  # (B, 1, W, Cout)
  bottom = conv(reflect(reflect(x[:, h - 2 :], 1)[:, 1:], 2), "VALID")
  left = conv(reflect(reflect(x[:, :, :2], 2)[:, :, :3], 1), "VALID")[
    :, 1:-1
  ]  # (B, H - 2, 1, Cout)
  right = conv(reflect(reflect(x[:, :, w - 2 :], 2)[:, :, 1:], 1), "VALID")[:, 1:-1]
  middle = jnp.concatenate([left, out[:, 1:-1, 1:-1], right], axis=2)
  return jnp.concatenate([top, middle, bottom], axis=1)


# Matmul precision of the attention's einsums (logits, the CGM's threshold, the aggregation):
# "highest" is full float32 on every backend; "default" is the platform's (TF32 on recent
# NVIDIA GPUs, one bfloat16 pass on TPUs), whose rounding the hard gate turns into flipped
# decisions near the threshold (docs/method.md, "Precision").
PRECISIONS = ("highest", "default")


def _precision(precision: str):
  if precision not in PRECISIONS:
    raise ValueError(f"attention precision must be one of {PRECISIONS}, got {precision!r}")
  return jax.lax.Precision.HIGHEST if precision == "highest" else None


def _unit_rows(x_BxNxC):
  x = x_BxNxC.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _softmax_rows(q_BxUxC, k_BxNsxC, sharpness, precision: str):
  """Eq. 1 for a block of unit query rows against all unit keys: (B, U, Ns) float32."""
  logits_BxUxNs = sharpness * jnp.einsum(
    "bud,bvd->buv", q_BxUxC, k_BxNsxC, precision=_precision(precision)
  )
  return jax.nn.softmax(logits_BxUxNs, axis=-1)


def cosine_attention(z_c, z_s, sharpness, precision: str = "highest"):
  """Eq. 1: A = softmax_v(alpha * cos(Z_c(u), Z_s(v))); returns (B, Nc, Ns) in float32."""
  q = _unit_rows(z_c.reshape(z_c.shape[0], -1, z_c.shape[-1]))
  k = _unit_rows(z_s.reshape(z_s.shape[0], -1, z_s.shape[-1]))
  return _softmax_rows(q, k, sharpness, precision)


def gate_threshold(attn_BxNcxNs, lam_BxNc, beta_BxNc, a_r_BxNs=None, precision: str = "highest"):
  """Eqs. 3-4 as read in docs/method.md: T(u) = lam(u) sum_v A(u,v) A_r(v) + beta(u).

  A_r(v) = mean_u A(u, v) over every content position; pass it when `attn` holds only
  some of the rows (the chunked path computes it in a first pass).
  """
  if a_r_BxNs is None:
    a_r_BxNs = jnp.mean(attn_BxNcxNs, axis=1)
  return (
    lam_BxNc * jnp.einsum("buv,bv->bu", attn_BxNcxNs, a_r_BxNs, precision=_precision(precision))
    + beta_BxNc
  )


# The straight-through backward of Eq. 5's Sign: "sigmoid" is the derivative of
# sigmoid(diff / temperature), which vanishes once T is far below every weight (the open gate
# is absorbing); "linear" is that derivative's value at 0, 1 / (4 temperature), everywhere
# (DynaST's SignWithSigmoidGrad on unscaled differences), so it never saturates.
SURROGATES = ("sigmoid", "linear")


def hard_gate(diff, temperature: float | None = None, surrogate: str = "sigmoid"):
  """Eq. 5's Sign: 1 where diff > 0 else 0, with a straight-through gradient.

  The backward pass is the derivative of `surrogate` (SURROGATES) at temperature; with
  temperature None the step has no gradient at all.
  """
  hard = (diff > 0).astype(diff.dtype)
  if temperature is None:
    return hard
  if surrogate == "linear":
    soft = diff / (4.0 * temperature)
  elif surrogate == "sigmoid":
    soft = jax.nn.sigmoid(diff / temperature)
  else:
    raise ValueError(f"hard_gate: surrogate must be one of {SURROGATES}, got {surrogate!r}")
  return soft + jax.lax.stop_gradient(hard - soft)


def gated_attention(
  attn_BxNcxNs,
  lam_BxNc,
  beta_BxNc,
  temperature=None,
  renormalize=False,
  a_r_BxNs=None,
  precision: str = "highest",
  surrogate: str = "sigmoid",
):
  """Eq. 5: A_bar = A * Sign(A - T). Returns (A_bar, mask, T (B, Nc))."""
  thresh_BxNc = gate_threshold(attn_BxNcxNs, lam_BxNc, beta_BxNc, a_r_BxNs, precision)
  # The surrogate's temperature is in units of the uniform weight 1/Ns, so it
  # does not depend on the style resolution.
  ns = attn_BxNcxNs.shape[-1]
  diff = (attn_BxNcxNs - thresh_BxNc[..., None]) * ns
  mask = hard_gate(diff, temperature, surrogate)
  gated = attn_BxNcxNs * mask
  if renormalize:
    gated = renormalize_rows(gated)
  return gated, mask, thresh_BxNc


def renormalize_rows(attn_BxNcxNs):
  """Divides each row by its sum, so the kept weights again sum to one."""
  total = jnp.sum(attn_BxNcxNs, axis=-1, keepdims=True)
  # A row that the threshold emptied stays empty, and its gradient finite (not 1 / 1e-12).
  return attn_BxNcxNs / jnp.where(total > 0, total, 1.0)


def topk_attention(attn_BxNcxNs, k: int, renormalize=False):
  """Fig. 3's "SANet + topK": keeps the k largest weights of each row. Returns (A_bar, mask, kth).

  The mask is A >= the row's k-th largest weight (a tie at the k-th value keeps
  every tied entry; with float softmax weights ties do not occur in practice). It
  carries no gradient: A reaches the loss through the kept weights only. k >= Ns
  keeps everything (Eq. 2). kth (B, Nc) plays the role of the CGM's threshold.
  """
  ns = attn_BxNcxNs.shape[-1]
  if k < 1:
    raise ValueError(f"topk_attention: k must be >= 1, got {k}")
  kth_BxNc = jax.lax.top_k(attn_BxNcxNs, min(k, ns))[0][..., -1]
  kth_BxNc = jax.lax.stop_gradient(kth_BxNc)
  mask = (attn_BxNcxNs >= kth_BxNc[..., None]).astype(attn_BxNcxNs.dtype)
  gated = attn_BxNcxNs * mask
  if renormalize:
    gated = renormalize_rows(gated)
  return gated, mask, kth_BxNc


def quantile_k(fraction: float, ns: int) -> int:
  """The number of weights per row that the fixed-quantile gate keeps: round(fraction Ns), >= 1."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"quantile gate: the kept fraction must be in (0, 1], got {fraction}")
  return max(1, min(ns, round(fraction * ns)))


# "quantile" is the control of docs/method.md ("The gate's equilibrium"): every row keeps
# its largest round(k* Ns) weights, with no E_f: topK with K proportional to Ns.
ATTENTIONS = ("full", "topk", "cgm", "quantile")


def _aggregate(
  attn_BxUxNs,
  lam_BxU,
  beta_BxU,
  values_BxNsxC,
  attention,
  topk,
  temperature,
  renormalize,
  a_r_BxNs,
  precision,
  surrogate,
):
  """One block of query rows: the chosen aggregation, then Eq. 2 -> (Z_cs rows, mask, threshold)."""
  if attention == "cgm":
    attn_bar, mask, thresh = gated_attention(
      attn_BxUxNs, lam_BxU, beta_BxU, temperature, renormalize, a_r_BxNs, precision, surrogate
    )
  elif attention in ("topk", "quantile"):
    attn_bar, mask, thresh = topk_attention(attn_BxUxNs, int(topk), renormalize)
  else:
    attn_bar, mask, thresh = (
      attn_BxUxNs,
      jnp.ones_like(attn_BxUxNs),
      jnp.zeros(attn_BxUxNs.shape[:2]),
    )
  z_BxUxC = jnp.einsum("buv,bvc->buc", attn_bar, values_BxNsxC, precision=_precision(precision))
  return z_BxUxC, mask, thresh


def _chunks(x, n: int, size: int):
  """(B, N, ...) -> (n, B, size, ...), zero-padded at the end of N."""
  pad = n * size - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(x.shape[0], n, size, *x.shape[2:]), 1, 0)


def _unchunk(x_nxBxU, length: int):
  """(n, B, size, ...) -> (B, length, ...)."""
  x = jnp.moveaxis(x_nxBxU, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def aligned_style_features(
  z_c,
  z_s,
  lam,
  beta,
  sharpness,
  gate=True,
  *,
  attention=None,
  topk=None,
  fraction=None,
  temperature=None,
  surrogate: str = "sigmoid",
  renormalize=False,
  return_aux=False,
  query_chunk: int | None = None,
  precision: str = "highest",
):
  """Style Alignment Encoding: Eq. 1, one of the three aggregations, then Eq. 2.

  Args:
    z_c: (B, H, W, C) content feature (queries).
    z_s: (B, Hs, Ws, C) style feature (keys and values).
    lam, beta: (B, H, W) gate scale and bias from E_f (read by "cgm" only).
    sharpness: alpha of Eq. 1.
    gate: the old switch, used when `attention` is None: True is "cgm", False "full".
    attention: "full" (Eq. 2 over every style position, SANet), "topk" (the k
      largest weights of each row, Fig. 3), "cgm" (Eqs. 3-5) or "quantile" (the largest
      `fraction` of each row's weights: topK with k = quantile_k(fraction, Ns)).
    topk: k of "topk".
    fraction: the kept fraction of "quantile".
    temperature: straight-through surrogate temperature of "cgm" (None: forward only).
    surrogate: the straight-through backward of "cgm" (SURROGATES).
    renormalize: divide the kept weights by their sum ("topk", "quantile" and "cgm").
    return_aux: also return a dict with the threshold (B, Nc) ("cgm": T; "topk": the
      k-th largest weight), the kept fraction (B,), its std over content positions
      `kept_std` (B,), `kept_st` (B,): the kept fraction with a straight-through backward of
      slope -1/4 per unit of T Ns at every position ("cgm"; the budget term's, which keeps a
      gradient when the gate is fully open), and, unchunked, the attention and the mask.
    query_chunk: None computes the (B, Nc, Ns) attention at once; an int processes that
      many content positions at a time (memory chunk x Ns instead of Nc x Ns; the CGM's
      A_r is a first pass over the chunks). The results equal the unchunked ones up to
      summation order; gradients flow through both passes (each chunk is rematerialised).
    precision: "highest" (full float32 whatever the platform's default) or "default".

  Returns:
    Z_cs: (B, H, W, C) in z_s's dtype (and the aux dict when asked).
  """
  if attention is None:
    attention = "cgm" if gate else "full"
  if attention not in ATTENTIONS:
    raise ValueError(
      f"aligned_style_features: attention must be one of {ATTENTIONS}, got {attention!r}"
    )
  b, h, w, c = z_c.shape
  nc = h * w
  q = _unit_rows(z_c.reshape(b, nc, c))
  k = _unit_rows(z_s.reshape(b, -1, c))
  ns = k.shape[1]
  if attention == "quantile":
    topk = quantile_k(fraction, ns)
  values = z_s.reshape(b, ns, c).astype(jnp.float32)
  lam, beta = lam.reshape(b, nc).astype(jnp.float32), beta.reshape(b, nc).astype(jnp.float32)
  args = (values, attention, topk, temperature, renormalize)

  if query_chunk is None or query_chunk >= nc:
    attn = _softmax_rows(q, k, sharpness, precision)
    z_cs, mask, thresh = _aggregate(attn, lam, beta, *args, None, precision, surrogate)
    kept_rows = jnp.mean(mask, axis=2)
    aux = {"attention": attn, "mask": mask}
  else:
    n = -(-nc // query_chunk)
    q_n, lam_n, beta_n = (_chunks(x, n, query_chunk) for x in (q, lam, beta))
    valid_n = _chunks(jnp.ones((b, nc), jnp.float32), n, query_chunk)  # 0 on the padding rows
    a_r = None
    if attention == "cgm":
      column_sums = jax.lax.map(
        jax.checkpoint(
          lambda xs: jnp.sum(
            _softmax_rows(xs[0], k, sharpness, precision) * xs[1][..., None], axis=1
          )
        ),
        (q_n, valid_n),
      )
      a_r = jnp.sum(column_sums, axis=0) / nc

    def block(xs):
      q_c, lam_c, beta_c = xs
      z, mask, thresh = _aggregate(
        _softmax_rows(q_c, k, sharpness, precision),
        lam_c,
        beta_c,
        *args,
        a_r,
        precision,
        surrogate,
      )
      return z, thresh, jnp.mean(mask, axis=2)

    z_n, thresh_n, kept_n = jax.lax.map(jax.checkpoint(block), (q_n, lam_n, beta_n))
    z_cs, thresh, kept_rows = (_unchunk(x, nc) for x in (z_n, thresh_n, kept_n))
    aux = {}
  z_cs = z_cs.reshape(b, h, w, c).astype(z_s.dtype)
  if not return_aux:
    return z_cs
  kept_rows = jax.lax.stop_gradient(kept_rows)
  t_ns = thresh * ns
  aux.update(
    kept_fraction=jnp.mean(kept_rows, axis=1),
    kept_std=jnp.std(kept_rows, axis=1),
    kept_st=jnp.mean(kept_rows - 0.25 * (t_ns - jax.lax.stop_gradient(t_ns)), axis=1),
    threshold=jax.lax.stop_gradient(thresh),
  )
  return z_cs, aux


def query_chunk_for(nc: int, ns: int, budget_bytes: int) -> int | None:
  """Content positions per chunk so that the attention's float32 temporaries (logits, weights,
  mask, kept weights: about 4 copies of chunk x Ns) fit in `budget_bytes`; None: all at once."""
  rows = max(8, int(budget_bytes // (16 * ns)))
  return None if rows >= nc else rows
