"""The losses of Eq. 7-9 and the discriminator against straightforward numpy (and torch) versions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sk_jax.nn import discriminator as disc_lib
from sk_jax.nn import losses

EPS = 1e-5
TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def _feats(seed, batch=2):
  """Random non-negative 'VGG features' with a few distinct sizes per tap."""
  rng = np.random.default_rng(seed)
  sizes = {
    "relu1_1": (8, 6, 3),
    "relu2_1": (6, 5, 4),
    "relu3_1": (5, 4, 5),
    "relu4_1": (4, 3, 6),
    "relu5_1": (3, 2, 7),
  }
  return {
    t: np.maximum(rng.normal(size=(batch, *s)), 0.0) + 0.1 * rng.random((batch, *s))
    for t, s in sizes.items()
  }


def _np_mean_std(x):
  mean = x.mean(axis=(1, 2), keepdims=True)
  return mean, np.sqrt(((x - mean) ** 2).mean(axis=(1, 2), keepdims=True) + EPS)


def _jnp(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def test_content_loss_matches_numpy():
  a, b = _feats(0), _feats(1)
  want = 0.0
  for l in ("relu4_1", "relu5_1"):
    (ma, sa), (mb, sb) = _np_mean_std(a[l]), _np_mean_std(b[l])
    want += np.mean(((a[l] - ma) / sa - (b[l] - mb) / sb) ** 2)
  got = losses.content_loss(_jnp(a), _jnp(b))
  assert got.shape == (a["relu4_1"].shape[0],)  # per sample; the trainer takes the batch mean
  np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=1e-5)
  assert float(jnp.max(losses.content_loss(_jnp(a), _jnp(a)))) == pytest.approx(0.0, abs=1e-7)


def test_style_loss_mean_std_matches_numpy():
  a, b = _feats(2), _feats(3)
  want = 0.0
  for l in TAPS:
    (ma, sa), (mb, sb) = _np_mean_std(a[l]), _np_mean_std(b[l])
    want += np.mean((ma - mb) ** 2) + np.mean((sa - sb) ** 2)
  np.testing.assert_allclose(float(jnp.mean(losses.style_loss(_jnp(a), _jnp(b)))), want, rtol=1e-5)


def test_style_loss_gram_matches_numpy():
  a, b = _feats(4), _feats(5)
  want = 0.0
  for l in TAPS:
    grams = []
    for x in (a[l], b[l]):
      bsz, h, w, c = x.shape
      g = np.zeros((bsz, c, c))
      for i in range(bsz):
        f = x[i].reshape(h * w, c)
        g[i] = f.T @ f / (h * w * c)
      grams.append(g)
    want += np.mean(np.sum((grams[0] - grams[1]) ** 2, axis=(1, 2)))  # squared Frobenius norm
  got = losses.style_loss(_jnp(a), _jnp(b), form="gram")
  np.testing.assert_allclose(float(jnp.mean(got)), want, rtol=1e-5)
  with pytest.raises(ValueError, match="mean_std"):
    losses.style_loss(_jnp(a), _jnp(b), form="gramm")


def _np_remd(x, y):
  """Eq. 9 with explicit loops: x (N, C), y (M, C)."""
  n, m = len(x), len(y)
  cost = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      cost[i, j] = 1.0 - x[i] @ y[j] / (np.linalg.norm(x[i]) * np.linalg.norm(y[j]))
  return max(
    np.mean([min(cost[i, j] for j in range(m)) for i in range(n)]),
    np.mean([min(cost[i, j] for i in range(n)) for j in range(m)]),
  )


def test_remd_matches_numpy_without_subsampling():
  a, b = _feats(6), _feats(7)
  want = 0.0
  for l in ("relu3_1", "relu4_1"):
    c = a[l].shape[-1]
    want += np.mean([_np_remd(a[l][i].reshape(-1, c), b[l][i].reshape(-1, c)) for i in range(2)])
  got = losses.remd_loss(_jnp(a), _jnp(b), jax.random.key(0), max_positions=1000)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  # Identical feature sets are at distance zero; the max makes the loss symmetric.
  assert float(losses.remd_loss(_jnp(a), _jnp(a), jax.random.key(0), 1000)) == pytest.approx(
    0, abs=1e-5
  )
  np.testing.assert_allclose(
    float(losses.remd_loss(_jnp(b), _jnp(a), jax.random.key(0), 1000)), want, rtol=1e-5
  )


def test_remd_subsampling_is_keyed_and_draws_distinct_positions():
  x = jnp.asarray(np.random.default_rng(8).normal(size=(3, 6, 5, 4)), jnp.float32)  # 30 positions
  sub = losses.subsample_positions(x, jax.random.key(1), 7)
  assert sub.shape == (3, 7, 4)
  flat = np.asarray(x).reshape(3, 30, 4)
  for i in range(3):
    rows = [int(np.argmin(np.abs(flat[i] - v).sum(-1))) for v in np.asarray(sub[i])]
    assert len(set(rows)) == 7, "positions must be drawn without replacement"
    np.testing.assert_array_equal(np.asarray(sub[i]), flat[i][rows])
  np.testing.assert_array_equal(sub, losses.subsample_positions(x, jax.random.key(1), 7))
  assert not np.array_equal(sub, losses.subsample_positions(x, jax.random.key(2), 7))
  # Each image draws its own positions.
  idx = [
    tuple(int(np.argmin(np.abs(flat[i] - v).sum(-1))) for v in np.asarray(sub[i])) for i in range(3)
  ]
  assert len(set(idx)) > 1

  # The capped loss is Eq. 9 on the drawn positions.
  a, b = _feats(9), _feats(10)
  key = jax.random.key(3)
  got = losses.remd_loss(_jnp(a), _jnp(b), key, max_positions=5, layers=("relu3_1",))
  k_cs, k_s = jax.random.split(jax.random.fold_in(key, 0))
  xa = np.asarray(losses.subsample_positions(_jnp(a)["relu3_1"], k_cs, 5), np.float64)
  xb = np.asarray(losses.subsample_positions(_jnp(b)["relu3_1"], k_s, 5), np.float64)
  want = np.mean([_np_remd(xa[i], xb[i]) for i in range(2)])
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_reconstruction_loss_matches_numpy():
  rng = np.random.default_rng(11)
  imgs = [rng.random((2, 8, 8, 3)) for _ in range(4)]
  f_cc, f_c, f_ss, f_s = _feats(12), _feats(13), _feats(14), _feats(15)
  pixel = np.mean((imgs[0] - imgs[1]) ** 2) + np.mean((imgs[2] - imgs[3]) ** 2)
  feature = sum(
    np.mean((f_cc[l] - f_c[l]) ** 2) + np.mean((f_ss[l] - f_s[l]) ** 2)
    for l in ("relu2_1", "relu3_1", "relu4_1", "relu5_1")
  )
  total, parts = losses.reconstruction_loss(
    *_jnp(imgs), _jnp(f_cc), _jnp(f_c), _jnp(f_ss), _jnp(f_s), pixel_weight=20.0, feature_weight=0.5
  )
  np.testing.assert_allclose(float(parts["pixel"]), pixel, rtol=1e-5)
  np.testing.assert_allclose(float(parts["feature"]), feature, rtol=1e-5)
  np.testing.assert_allclose(float(total), 20 * pixel + 0.5 * feature, rtol=1e-5)


def test_gan_losses_match_numpy():
  rng = np.random.default_rng(16)
  real = [rng.normal(size=(2, s, s, 1)) for s in (5, 3, 2)]
  fake = [rng.normal(size=(2, s, s, 1)) for s in (5, 3, 2)]
  d_ls = 0.5 * sum(np.mean((r - 1) ** 2) + np.mean(f**2) for r, f in zip(real, fake))
  g_ls = sum(np.mean((f - 1) ** 2) for f in fake)
  d_hinge = 0.5 * sum(
    np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)) for r, f in zip(real, fake)
  )
  g_hinge = -sum(np.mean(f) for f in fake)
  np.testing.assert_allclose(
    float(losses.discriminator_loss(_jnp(real), _jnp(fake))), d_ls, rtol=1e-5
  )
  np.testing.assert_allclose(float(losses.generator_adv_loss(_jnp(fake))), g_ls, rtol=1e-5)
  np.testing.assert_allclose(
    float(losses.discriminator_loss(_jnp(real), _jnp(fake), "hinge")), d_hinge, rtol=1e-5
  )
  np.testing.assert_allclose(
    float(losses.generator_adv_loss(_jnp(fake), "hinge")), g_hinge, rtol=1e-5
  )
  with pytest.raises(ValueError, match="lsgan"):
    losses.generator_adv_loss(_jnp(fake), "wgan")


def test_downsample_is_avgpool_excluding_padding():
  x = np.random.default_rng(17).random((1, 7, 6, 2))
  want = np.zeros((1, 4, 3, 2))
  for i in range(4):
    for j in range(3):
      rows = [r for r in range(2 * i - 1, 2 * i + 2) if 0 <= r < 7]
      cols = [c for c in range(2 * j - 1, 2 * j + 2) if 0 <= c < 6]
      want[0, i, j] = x[0][np.ix_(rows, cols)].mean(axis=(0, 1))
  np.testing.assert_allclose(
    np.asarray(disc_lib.downsample(jnp.asarray(x, jnp.float32))), want, rtol=1e-5
  )


def test_discriminator_matches_pix2pixhd_in_torch():
  """One scale against pix2pixHD's NLayerDiscriminator(ndf=8, n_layers=3, InstanceNorm2d) in torch."""
  import torch  # the torch extra; the README test command installs it

  nn = torch.nn
  cfg = disc_lib.DiscriminatorConfig(num_scales=2, features=8, num_layers=3)
  params = disc_lib.init_discriminator(cfg, jax.random.key(0))
  layers, nf_prev, nf = [], 3, 8
  p = params["scale1"]

  def conv(name, cin, cout, stride):
    c = nn.Conv2d(cin, cout, 4, stride, 2)
    c.weight.data = torch.from_numpy(np.asarray(p[name]["kernel"]).transpose(3, 2, 0, 1).copy())
    # Layers before an instance norm have no bias here (it would cancel); torch's is set to zero.
    bias = p[name].get("bias", np.zeros(cout, np.float32))
    c.bias.data = torch.from_numpy(np.asarray(bias).copy())
    return c

  layers += [conv("conv0", 3, 8, 2), nn.LeakyReLU(0.2)]
  for i, stride in ((1, 2), (2, 2), (3, 1)):
    nf_prev, nf = nf, min(nf * 2, 512)
    layers += [conv(f"conv{i}", nf_prev, nf, stride), nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2)]
  layers += [conv("conv4", nf, 1, 1)]
  net = nn.Sequential(*layers).eval()

  assert "bias" not in p["conv1"] and "bias" in p["conv0"] and "bias" in p["conv4"]
  x = np.random.default_rng(18).random((2, 40, 36, 3)).astype(np.float32)
  outs = disc_lib.MultiScaleDiscriminator(cfg).apply({"params": params}, jnp.asarray(x))
  assert [o.shape for o in outs] == [(2, 8, 8, 1), (2, 6, 6, 1)]
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2)) * 2 - 1
  xt = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)(xt)
  with torch.no_grad():
    want = net(xt).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(np.asarray(outs[1]), want, atol=1e-4, rtol=1e-4)
