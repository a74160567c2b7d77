"""The public array functions of sk_jax.nn.ops against straightforward numpy versions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sk_jax.nn import ops, spatial


def np_separable_pixel_conv(x, f_v, f_h, bias):
  b, h, w, c = x.shape
  k = f_v.shape[-1]
  r = k // 2
  xp = np.pad(x, ((0, 0), (r, r), (0, 0), (0, 0)), mode="reflect")
  y = np.zeros_like(x)
  for i in range(h):
    for t in range(k):
      y[:, i] += f_v[:, i, :, :, t] * xp[:, i + t]
  yp = np.pad(y, ((0, 0), (0, 0), (r, r), (0, 0)), mode="reflect")
  z = np.zeros_like(x)
  for j in range(w):
    for t in range(k):
      z[:, :, j] += f_h[:, :, j, :, t] * yp[:, :, j + t]
  return z + bias


@pytest.mark.parametrize("k", [1, 3, 5])
def test_separable_pixel_conv_matches_numpy_with_reflection(k):
  rng = np.random.default_rng(k)
  x = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  f_v = rng.normal(size=(2, 6, 7, 3, k)).astype(np.float32)
  f_h = rng.normal(size=(2, 6, 7, 3, k)).astype(np.float32)
  bias = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  got = spatial.separable_pixel_conv(x, f_v, f_h, bias)
  np.testing.assert_allclose(got, np_separable_pixel_conv(x, f_v, f_h, bias), rtol=1e-5, atol=1e-5)


def test_separable_pixel_conv_edges_read_reflected_rows():
  # A vertical filter that only reads the row above: row 0 must see row 1 (reflection), not 0 or row 0.
  x = np.arange(4 * 3, dtype=np.float32).reshape(1, 4, 3, 1)
  f_v = np.zeros((1, 4, 3, 1, 3), np.float32)
  f_v[..., 0] = 1.0
  f_h = np.zeros_like(f_v)
  f_h[..., 1] = 1.0
  out = np.asarray(spatial.separable_pixel_conv(x, f_v, f_h, np.zeros((1, 4, 3, 1), np.float32)))
  np.testing.assert_array_equal(out[0, 0, :, 0], x[0, 1, :, 0])
  np.testing.assert_array_equal(out[0, 1:, :, 0], x[0, :-1, :, 0])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_identity_kernel_returns_input(k):
  x = np.random.default_rng(0).normal(size=(2, 5, 6, 4)).astype(np.float32)
  delta = np.zeros((2, 5, 6, 4, k), np.float32)
  delta[..., k // 2] = 1.0
  out = spatial.separable_pixel_conv(x, delta, delta, np.zeros_like(x))
  np.testing.assert_array_equal(np.asarray(out), x)


def test_channel_shuffle_matches_shufflenet():
  x = np.arange(2 * 3 * 12, dtype=np.float32).reshape(2, 3, 1, 12)
  got = np.asarray(spatial.channel_shuffle(x, 3))
  expected = x.reshape(2, 3, 1, 3, 4).transpose(0, 1, 2, 4, 3).reshape(2, 3, 1, 12)
  np.testing.assert_array_equal(got, expected)
  # Group g, member m lands at position m * groups + g.
  np.testing.assert_array_equal(got[0, 0, 0, :4], [0, 4, 8, 1])
  np.testing.assert_array_equal(np.asarray(spatial.channel_shuffle(x, 1)), x)
  with pytest.raises(ValueError):
    spatial.channel_shuffle(x, 5)


def np_aligned_style_features(z_c, z_s, lam, beta, sharpness, gate=True, renormalize=False):
  b, h, w, c = z_c.shape
  q = z_c.reshape(b, -1, c).astype(np.float64)
  k = z_s.reshape(b, -1, c).astype(np.float64)
  out = np.zeros_like(q)
  for n in range(b):
    cos = (q[n] @ k[n].T) / (
      np.linalg.norm(q[n], axis=1)[:, None] * np.linalg.norm(k[n], axis=1)[None]
    )
    logits = sharpness * cos
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    if gate:
      a_r = a.mean(axis=0)  # Eq. 3: attention each style position receives
      t = lam[n].reshape(-1) * (a @ a_r) + beta[n].reshape(-1)  # Eq. 4
      a = a * (a - t[:, None] > 0)  # Eq. 5
      if renormalize:
        a = a / (a.sum(1, keepdims=True) + 1e-12)
    out[n] = a @ k[n]
  return out.reshape(b, h, w, c)


@pytest.mark.parametrize("gate,renormalize", [(True, False), (True, True), (False, False)])
def test_aligned_style_features_matches_numpy(gate, renormalize):
  rng = np.random.default_rng(1)
  z_c = np.abs(rng.normal(size=(2, 3, 4, 8))).astype(np.float32)
  z_s = np.abs(rng.normal(size=(2, 5, 3, 8))).astype(np.float32)
  lam = rng.uniform(0.5, 1.5, size=(2, 3, 4)).astype(np.float32)
  beta = rng.uniform(-0.02, 0.02, size=(2, 3, 4)).astype(np.float32)
  attention = "cgm" if gate else "full"
  got = ops.aligned_style_features(
    z_c, z_s, lam, beta, 5.0, attention=attention, renormalize=renormalize
  )
  expected = np_aligned_style_features(z_c, z_s, lam, beta, 5.0, gate, renormalize)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)


def test_gate_removes_some_weights_and_keeps_the_largest():
  rng = np.random.default_rng(2)
  z_c = np.abs(rng.normal(size=(1, 4, 4, 16))).astype(np.float32)
  z_s = np.abs(rng.normal(size=(1, 4, 4, 16))).astype(np.float32)
  ones, zeros = np.ones((1, 4, 4), np.float32), np.zeros((1, 4, 4), np.float32)
  _, aux = ops.aligned_style_features(z_c, z_s, ones, zeros, 10.0, return_aux=True)
  mask, attn = np.asarray(aux["mask"]), np.asarray(aux["attention"])
  assert 0.0 < mask.mean() < 1.0
  # With lambda = 1 and beta = 0 the threshold is a weighted mean of A_r, never above the row maximum.
  assert np.all(mask[0, np.arange(16), attn[0].argmax(-1)] == 1)


def test_permuting_style_positions_leaves_z_cs_unchanged():
  rng = np.random.default_rng(3)
  z_c = np.abs(rng.normal(size=(1, 3, 3, 8))).astype(np.float32)
  z_s = np.abs(rng.normal(size=(1, 4, 5, 8))).astype(np.float32)
  lam = rng.uniform(0.5, 1.5, size=(1, 3, 3)).astype(np.float32)
  beta = np.zeros((1, 3, 3), np.float32)
  perm = rng.permutation(20)
  z_s_perm = z_s.reshape(1, 20, 8)[:, perm].reshape(1, 4, 5, 8)
  for attention in ("cgm", "full"):
    a = ops.aligned_style_features(z_c, z_s, lam, beta, 10.0, attention=attention)
    b = ops.aligned_style_features(z_c, z_s_perm, lam, beta, 10.0, attention=attention)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_hard_gate_is_a_step_forward_with_a_surrogate_gradient():
  x = jnp.array([-2.0, -0.1, 0.0, 0.1, 2.0])
  np.testing.assert_array_equal(np.asarray(ops.hard_gate(x, 1.0)), [0, 0, 0, 1, 1])
  g = jax.grad(lambda v: jnp.sum(ops.hard_gate(v, 1.0)))(x)
  s = jax.nn.sigmoid(x)
  np.testing.assert_allclose(np.asarray(g), np.asarray(s * (1 - s)), rtol=1e-6)
  assert np.all(np.asarray(jax.grad(lambda v: jnp.sum(ops.hard_gate(v, None)))(x)) == 0)


def test_instance_norm_and_mean_std():
  x = np.random.default_rng(4).normal(2.0, 3.0, size=(2, 8, 8, 3)).astype(np.float32)
  mean, std = spatial.mean_std(x)
  np.testing.assert_allclose(np.asarray(mean)[:, 0, 0], x.mean(axis=(1, 2)), rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(std)[:, 0, 0], np.sqrt(x.var(axis=(1, 2)) + 1e-5), rtol=1e-5
  )
  y = np.asarray(spatial.instance_norm(x))
  np.testing.assert_allclose(y.mean(axis=(1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(y.std(axis=(1, 2)), 1, atol=1e-3)


def _reflect_conv_reference(x, k):
  """float64: a 3 x 3 convolution of numpy's reflect-padded x, tap by tap."""
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  h, w = x.shape[1:3]
  return sum(
    np.einsum("bhwc,cd->bhwd", xp[:, i : i + h, j : j + w], k[i, j])
    for i in range(3)
    for j in range(3)
  )


@pytest.mark.parametrize("shape", [(1, 1, 1, 3), (2, 1, 3, 4), (1, 5, 2, 3), (1, 7, 6, 8)])
def test_upsample_conv3x3_reflect_equals_upsampling_then_the_reflect_convolution(shape):
  """The decoder's fused layer (docs/method.md, decoder): nearest x2 upsampling followed by the
  reflect-padded 3 x 3 convolution, computed as four 2 x 2 phase convolutions."""
  rng = np.random.default_rng(sum(shape))
  x = rng.normal(size=shape).astype(np.float32)
  k = rng.normal(size=(3, 3, shape[-1], 5)).astype(np.float32)
  want = _reflect_conv_reference(np.repeat(np.repeat(x, 2, axis=1), 2, axis=2), k)
  got = np.asarray(spatial.upsample_conv3x3_reflect(jnp.asarray(x), jnp.asarray(k)))
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(5, 7), (9, 11), (9, 6), (1, 3)])
def test_replicate_outside_makes_the_fused_layer_exact_inside_a_bucket(hw):
  """In a size bucket the decoder's fused layer reads the edge copy that `replicate_outside`
  writes after the true size: equal to the layer on the unpadded input."""
  rng = np.random.default_rng(hw[0] * 31 + hw[1])
  x = rng.normal(size=(1, 9, 11, 4)).astype(np.float32)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 5)).astype(np.float32))
  padded = spatial.replicate_outside(jnp.asarray(x), jnp.asarray(hw))
  got = np.asarray(spatial.upsample_conv3x3_reflect(padded, k))[:, : 2 * hw[0], : 2 * hw[1]]
  want = np.asarray(spatial.upsample_conv3x3_reflect(jnp.asarray(x[:, : hw[0], : hw[1]]), k))
  # float32 sums of 64 products of O(1) terms: 1e-5 is above their rounding on any backend
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 2, 2, 3), (2, 5, 7, 4), (1, 9, 3, 2)])
def test_conv3x3_reflect_equals_a_valid_convolution_of_the_reflected_input(shape):
  rng = np.random.default_rng(sum(shape))
  x = rng.normal(size=shape).astype(np.float32)
  k = rng.normal(size=(3, 3, shape[-1], 5)).astype(np.float32)
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  want = np.zeros((*shape[:3], 5), np.float64)
  for i in range(3):
    for j in range(3):
      want += np.einsum("bhwc,cd->bhwd", xp[:, i : i + shape[1], j : j + shape[2]], k[i, j])
  np.testing.assert_allclose(
    np.asarray(spatial.conv3x3_reflect(jnp.asarray(x), jnp.asarray(k))), want, rtol=1e-5, atol=1e-5
  )
