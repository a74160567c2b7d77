"""Pure array math of the attention: Eqs. 1-5 (the Style Alignment Encoding's cosine attention,
the CGM gate with its straight-through Sign), topK and the fixed quantile, chunked aggregation.
No Flax state, NHWC throughout; each function maps to an equation of docs/method.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sk_jax.nn.spatial import valid_positions

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


def _softmax_rows(q_BxUxC, k_BxNsxC, sharpness, precision: str, key_valid_Ns=None):
  """Eq. 1 for a block of unit query rows against all unit keys: (B, U, Ns) float32; keys
  where key_valid is False (a bucket's padding) get weight 0."""
  logits_BxUxNs = sharpness * jnp.einsum(
    "bud,bvd->buv", q_BxUxC, k_BxNsxC, precision=_precision(precision)
  )
  if key_valid_Ns is not None:
    logits_BxUxNs = jnp.where(key_valid_Ns, logits_BxUxNs, -jnp.inf)
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
  key_valid_Ns=None,
  ns=None,
):
  """Eq. 5: A_bar = A * Sign(A - T). Returns (A_bar, mask, T (B, Nc)).

  key_valid, ns: the style positions that exist and their number (a bucket's padding is
  never kept); default all of the last axis."""
  thresh_BxNc = gate_threshold(attn_BxNcxNs, lam_BxNc, beta_BxNc, a_r_BxNs, precision)
  # The surrogate's temperature is in units of the uniform weight 1/Ns, so it
  # does not depend on the style resolution.
  ns = attn_BxNcxNs.shape[-1] if ns is None else ns
  diff = (attn_BxNcxNs - thresh_BxNc[..., None]) * ns
  mask = hard_gate(diff, temperature, surrogate)
  if key_valid_Ns is not None:
    mask = mask * key_valid_Ns
  gated = attn_BxNcxNs * mask
  if renormalize:
    gated = renormalize_rows(gated)
  return gated, mask, thresh_BxNc


def renormalize_rows(attn_BxNcxNs):
  """Divides each row by its sum, so the kept weights again sum to one."""
  total = jnp.sum(attn_BxNcxNs, axis=-1, keepdims=True)
  # A row that the threshold emptied stays empty, and its gradient finite (not 1 / 1e-12).
  return attn_BxNcxNs / jnp.where(total > 0, total, 1.0)


def topk_attention(attn_BxNcxNs, k: int, renormalize=False, key_valid_Ns=None, k_valid=None):
  """Fig. 3's "SANet + topK": keeps the k largest weights of each row. Returns (A_bar, mask, kth).

  The mask is A >= the row's k-th largest weight (a tie at the k-th value keeps
  every tied entry; with float softmax weights ties do not occur in practice). It
  carries no gradient: A reaches the loss through the kept weights only. k >= Ns
  keeps everything (Eq. 2). kth (B, Nc) plays the role of the CGM's threshold.
  key_valid: the style positions that exist (a bucket's padding is never kept); k_valid: a
  traced k <= k, min(k, valid positions), to rank by (k is then the static bound).
  """
  ns = attn_BxNcxNs.shape[-1]
  if k < 1:
    raise ValueError(f"topk_attention: k must be >= 1, got {k}")
  ranked = attn_BxNcxNs if key_valid_Ns is None else jnp.where(key_valid_Ns, attn_BxNcxNs, -1.0)
  top_BxNcxK = jax.lax.top_k(ranked, min(k, ns))[0]
  if k_valid is None:
    kth_BxNc = top_BxNcxK[..., -1]
  else:
    kth_BxNc = jax.lax.dynamic_index_in_dim(top_BxNcxK, k_valid - 1, axis=-1, keepdims=False)
  kth_BxNc = jax.lax.stop_gradient(kth_BxNc)
  mask = (ranked >= kth_BxNc[..., None]).astype(attn_BxNcxNs.dtype)
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
  keys=None,
):
  """One block of query rows: the chosen aggregation, then Eq. 2 -> (Z_cs rows, mask, threshold).
  keys: None, or (key_valid (Ns,), their number, the traced k of topK) for a padded style."""
  key_valid, ns, k_valid = (None, None, None) if keys is None else keys
  if attention == "cgm":
    attn_bar, mask, thresh = gated_attention(
      attn_BxUxNs,
      lam_BxU,
      beta_BxU,
      temperature,
      renormalize,
      a_r_BxNs,
      precision,
      surrogate,
      key_valid,
      ns,
    )
  elif attention in ("topk", "quantile"):
    attn_bar, mask, thresh = topk_attention(attn_BxUxNs, int(topk), renormalize, key_valid, k_valid)
  else:
    mask = (
      jnp.ones_like(attn_BxUxNs)
      if key_valid is None
      else jnp.broadcast_to(key_valid.astype(attn_BxUxNs.dtype), attn_BxUxNs.shape)
    )
    attn_bar, thresh = attn_BxUxNs, jnp.zeros(attn_BxUxNs.shape[:2])
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
  *,
  attention: str = "cgm",
  topk=None,
  fraction=None,
  temperature=None,
  surrogate: str = "sigmoid",
  renormalize=False,
  return_aux=False,
  query_chunk: int | None = None,
  precision: str = "highest",
  content_hw=None,
  style_hw=None,
):
  """Style Alignment Encoding: Eq. 1, one of the three aggregations, then Eq. 2.

  Args:
    z_c: (B, H, W, C) content feature (queries).
    z_s: (B, Hs, Ws, C) style feature (keys and values).
    lam, beta: (B, H, W) gate scale and bias from E_f (read by "cgm" only).
    sharpness: alpha of Eq. 1.
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
    content_hw, style_hw: the true sizes (int (2,)) of features padded to a size bucket: the
      padded style positions get no weight, take no part in A_r, the threshold, topK's rank
      or the kept fraction, the padded content positions none in A_r or the statistics, and
      their Z_cs rows are 0. The results equal those of the unpadded features.

  Returns:
    Z_cs: (B, H, W, C) in z_s's dtype (and the aux dict when asked).
  """
  if attention not in ATTENTIONS:
    raise ValueError(
      f"aligned_style_features: attention must be one of {ATTENTIONS}, got {attention!r}"
    )
  b, h, w, c = z_c.shape
  nc = h * w
  q = _unit_rows(z_c.reshape(b, nc, c))
  k = _unit_rows(z_s.reshape(b, -1, c))
  ns = k.shape[1]
  keys, key_valid, row_valid, rows = None, None, None, nc
  if style_hw is not None:
    key_valid = valid_positions(z_s.shape[1:3], style_hw).reshape(ns)
    ns_pad, ns = ns, (style_hw[0] * style_hw[1]).astype(jnp.int32)
  if content_hw is not None:
    row_valid = valid_positions((h, w), content_hw).reshape(nc)
    rows = jnp.sum(row_valid).astype(jnp.float32)
  if attention == "quantile":
    if style_hw is None:
      topk = quantile_k(fraction, ns)
    else:
      # quantile_k of the true count, traced; the bucket's count bounds it.
      k_valid = jnp.clip(jnp.round(fraction * ns.astype(jnp.float32)).astype(jnp.int32), 1, ns)
      topk = quantile_k(fraction, ns_pad)
  elif style_hw is not None:
    k_valid = jnp.minimum(int(topk or 1), ns)
  if style_hw is not None:
    keys = (key_valid, ns.astype(jnp.float32), k_valid)
  values = z_s.reshape(b, -1, c).astype(jnp.float32)
  lam, beta = lam.reshape(b, nc).astype(jnp.float32), beta.reshape(b, nc).astype(jnp.float32)
  args = (values, attention, topk, temperature, renormalize)
  kept_of = lambda mask: jnp.mean(mask, axis=2) if keys is None else jnp.sum(mask, 2) / keys[1]

  if query_chunk is None or query_chunk >= nc:
    attn = _softmax_rows(q, k, sharpness, precision, key_valid)
    a_r = None
    if content_hw is not None and attention == "cgm":
      a_r = jnp.sum(attn * row_valid[:, None], axis=1) / rows
    z_cs, mask, thresh = _aggregate(attn, lam, beta, *args, a_r, precision, surrogate, keys)
    kept_rows = kept_of(mask)
    aux = {"attention": attn, "mask": mask}
  else:
    n = -(-nc // query_chunk)
    q_n, lam_n, beta_n = (_chunks(x, n, query_chunk) for x in (q, lam, beta))
    # 0 on the rows that pad the last chunk and on a bucket's padded content positions
    valid = jnp.ones((b, nc)) if row_valid is None else jnp.broadcast_to(row_valid, (b, nc))
    valid_n = _chunks(valid.astype(jnp.float32), n, query_chunk)
    a_r = None
    if attention == "cgm":
      column_sums = jax.lax.map(
        jax.checkpoint(
          lambda xs: jnp.sum(
            _softmax_rows(xs[0], k, sharpness, precision, key_valid) * xs[1][..., None], axis=1
          )
        ),
        (q_n, valid_n),
      )
      a_r = jnp.sum(column_sums, axis=0) / rows

    def block(xs):
      q_c, lam_c, beta_c = xs
      z, mask, thresh = _aggregate(
        _softmax_rows(q_c, k, sharpness, precision, key_valid),
        lam_c,
        beta_c,
        *args,
        a_r,
        precision,
        surrogate,
        keys,
      )
      return z, thresh, kept_of(mask)

    z_n, thresh_n, kept_n = jax.lax.map(jax.checkpoint(block), (q_n, lam_n, beta_n))
    z_cs, thresh, kept_rows = (_unchunk(x, nc) for x in (z_n, thresh_n, kept_n))
    aux = {}
  if content_hw is not None:
    # 0, as the zero padding of the kernel head's convolution reads outside the true size
    z_cs = jnp.where(row_valid[:, None], z_cs, 0.0)
  z_cs = z_cs.reshape(b, h, w, c).astype(z_s.dtype)
  if not return_aux:
    return z_cs
  kept_rows = jax.lax.stop_gradient(kept_rows)
  t_ns = thresh * (ns if keys is None else keys[1])
  if content_hw is None:
    row_mean, row_std = (lambda x: jnp.mean(x, axis=1)), (lambda x: jnp.std(x, axis=1))
  else:
    row_mean = lambda x: jnp.sum(jnp.where(row_valid, x, 0.0), axis=1) / rows
    row_std = lambda x: jnp.sqrt(row_mean(jnp.square(x - row_mean(x)[:, None])))
  aux.update(
    kept_fraction=row_mean(kept_rows),
    kept_std=row_std(kept_rows),
    kept_st=row_mean(kept_rows - 0.25 * (t_ns - jax.lax.stop_gradient(t_ns))),
    threshold=jax.lax.stop_gradient(thresh),
  )
  return z_cs, aux


def query_chunk_for(nc: int, ns: int, budget_bytes: int) -> int | None:
  """Content positions per chunk so that the attention's float32 temporaries (logits, weights,
  mask, kept weights: about 4 copies of chunk x Ns) fit in `budget_bytes`; None: all at once."""
  rows = max(8, int(budget_bytes // (16 * ns)))
  return None if rows >= nc else rows
