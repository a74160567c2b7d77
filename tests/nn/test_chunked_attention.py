"""Attention in chunks of content positions equals the whole matrix at once (values and gradients),
and the attention's precision policy holds whatever the platform's matmul default is."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sk_jax.interop.parity import GATE_BAND, gate_gap
from sk_jax.nn import ops

B, H, W, HS, WS, C = 2, 5, 6, 4, 5, 16  # Nc = 30, Ns = 20
VARIANTS = [
  dict(attention="full"),
  dict(attention="topk", topk=3),
  dict(attention="topk", topk=4, renormalize=True),
  dict(attention="cgm"),
  dict(attention="cgm", renormalize=True),
]


def _inputs(seed=0, h=H, w=W, hs=HS, ws=WS, c=C):
  rng = np.random.default_rng(seed)
  z_c = jnp.asarray(np.abs(rng.normal(size=(B, h, w, c))), jnp.float32)
  z_s = jnp.asarray(np.abs(rng.normal(size=(B, hs, ws, c))), jnp.float32)
  lam = jnp.asarray(rng.uniform(0.5, 1.5, size=(B, h, w)), jnp.float32)
  beta = jnp.asarray(rng.normal(scale=0.2, size=(B, h, w)) / (hs * ws), jnp.float32)
  return z_c, z_s, lam, beta


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(x) for x in v.values()))
@pytest.mark.parametrize("chunk", [4, 7, 16, 29])
def test_chunks_equal_the_whole_matrix(variant, chunk):
  z_c, z_s, lam, beta = _inputs()
  kw = dict(temperature=1.0, return_aux=True, **variant)
  want, aux = ops.aligned_style_features(z_c, z_s, lam, beta, 10.0, **kw)
  got, aux_c = jax.jit(lambda *a: ops.aligned_style_features(*a, 10.0, query_chunk=chunk, **kw))(
    z_c, z_s, lam, beta
  )
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(aux_c["threshold"]), np.asarray(aux["threshold"]), rtol=1e-5, atol=1e-7
  )
  np.testing.assert_allclose(
    np.asarray(aux_c["kept_fraction"]), np.asarray(aux["kept_fraction"]), rtol=1e-6
  )
  assert "attention" not in aux_c  # no (B, Nc, Ns) tensor leaves the chunked path


@pytest.mark.parametrize(
  "variant", [VARIANTS[0], VARIANTS[3], VARIANTS[4]], ids=["full", "cgm", "cgm-renorm"]
)
def test_chunked_gradients_equal_the_whole_matrix(variant):
  z_c, z_s, lam, beta = _inputs(1)
  probe = jnp.asarray(np.random.default_rng(2).normal(size=(B, H, W, C)), jnp.float32)

  def loss(chunk):
    def f(z_c, z_s, lam, beta):
      z = ops.aligned_style_features(
        z_c, z_s, lam, beta, 10.0, temperature=1.0, query_chunk=chunk, **variant
      )
      return jnp.sum(z * probe)

    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))

  want = loss(None)(z_c, z_s, lam, beta)
  got = loss(7)(z_c, z_s, lam, beta)
  for name, g, w in zip(("z_c", "z_s", "lambda", "beta"), got, want, strict=True):
    w = np.asarray(w)
    np.testing.assert_allclose(
      np.asarray(g), w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=name
    )
  if variant["attention"] == "cgm":
    assert np.abs(np.asarray(want[2])).max() > 0  # the straight-through path reaches lambda


def _gate_oracle(z_c, z_s, lam, beta, sharpness=10.0):
  """Eqs. 1, 3-5 in float64 numpy: (A, T, mask)."""
  q = np.asarray(z_c, np.float64).reshape(B, -1, z_c.shape[-1])
  k = np.asarray(z_s, np.float64).reshape(B, -1, z_s.shape[-1])
  q /= np.linalg.norm(q, axis=-1, keepdims=True)
  k /= np.linalg.norm(k, axis=-1, keepdims=True)
  logits = sharpness * q @ k.transpose(0, 2, 1)
  a = np.exp(logits - logits.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  t = np.asarray(lam, np.float64).reshape(B, -1) * np.einsum(
    "buv,bv->bu", a, a.mean(1)
  ) + np.asarray(beta, np.float64).reshape(B, -1)
  return a, t, a > t[..., None]


def test_highest_precision_holds_the_gate_under_a_bfloat16_matmul_default():
  """What a TPU does by default (one bfloat16 pass per matmul) must not move the gate."""
  z_c, z_s, lam, beta = _inputs(3, 16, 16, 16, 16, 64)
  a, t, want = _gate_oracle(z_c, z_s, lam, beta)
  with jax.default_matmul_precision("bfloat16"):
    _, aux = jax.jit(
      lambda *x: ops.aligned_style_features(*x, 10.0, attention="cgm", return_aux=True)
    )(z_c, z_s, lam, beta)
  got = np.asarray(aux["mask"]) > 0
  decided = gate_gap(a, t) > GATE_BAND["float32"]  # outside float32's rounding band
  assert np.array_equal(got[decided], want[decided])


def test_a_bfloat16_matmul_flips_gate_decisions_only_inside_the_band():
  """The documented cost of precision "default" on a TPU: rounding q and k to bfloat16 (one
  bfloat16 pass) flips decisions, but only where |A - T| is within GATE_BAND["bfloat16"] of T."""
  z_c, z_s, lam, beta = _inputs(4, 16, 16, 16, 16, 64)  # 131,072 decisions
  a, t, want = _gate_oracle(z_c, z_s, lam, beta)
  to_bf16 = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  _, aux = ops.aligned_style_features(
    to_bf16(z_c), to_bf16(z_s), lam, beta, 10.0, attention="cgm", return_aux=True
  )
  flipped = (np.asarray(aux["mask"]) > 0) != want
  assert flipped.any()  # bfloat16 does move decisions ...
  assert gate_gap(a, t)[flipped].max() < GATE_BAND["bfloat16"]  # ... but only near the threshold


def test_query_chunk_for_a_memory_budget():
  assert ops.query_chunk_for(4096, 4096, 2**30) is None  # 512 px: 268 MB at once
  rows = ops.query_chunk_for(129_600, 16_384, 2**30)  # 4K content, 1024 px style
  assert 8 <= rows < 129_600 and rows * 16_384 * 16 <= 2**30


def test_a_row_the_gate_empties_has_a_finite_gradient():
  z_c, z_s, lam, beta = _inputs(5)
  beta = jnp.full_like(beta, 1.0)  # T above every weight: every row is emptied

  def f(beta):
    z = ops.aligned_style_features(
      z_c, z_s, lam, beta, 10.0, attention="cgm", temperature=1.0, renormalize=True
    )
    return jnp.sum(z)

  value, grad = jax.value_and_grad(f)(beta)
  assert float(value) == 0.0
  assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() < 1e3
