"""The losses of Sec. 3.3 (Eq. 7-9), each a pure function of VGG features or images.

Features are dicts {tap: (B, H, W, C)} from `sk_jax.nn.vgg.vgg16_features`.
The content and style losses are defined here once, per sample (shape (B,)): the
trainer takes their batch mean, and `sk_jax.eval.metrics` reports them as Table 2's
figures. REMD, reconstruction and the GAN terms (training only) return float32
scalars averaged over the batch. "||.||_2" of Eq. 8 is read as the mean squared
error, as in SANet's identity losses (docs/training.md).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from sk_jax.nn import spatial

CONTENT_LAYERS = ("relu4_1", "relu5_1")  # SANet's content loss
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")  # as in WCT's evaluation
REMD_LAYERS = ("relu3_1", "relu4_1")
REC_LAYERS = ("relu2_1", "relu3_1", "relu4_1", "relu5_1")

Features = Mapping[str, jax.Array]


def _mse(a, b):
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def content_loss(feats_cs: Features, feats_c: Features, layers: Sequence[str] = CONTENT_LAYERS):
  """SANet's content loss per sample, (B,): sum_l mean_{h,w,c} (IN(phi_l(I_cs)) - IN(phi_l(I_c)))^2.

  IN is `spatial.instance_norm` (biased variance, eps 1e-5 inside the sqrt); both images
  must have the same size.
  """
  total = 0.0
  for l in layers:
    a, b = feats_cs[l].astype(jnp.float32), feats_c[l].astype(jnp.float32)
    if a.shape != b.shape:
      raise ValueError(f"content_loss: {l} shapes differ, {a.shape} vs {b.shape}")
    total = total + jnp.mean(
      jnp.square(spatial.instance_norm(a) - spatial.instance_norm(b)), axis=(1, 2, 3)
    )
  return total


def gram(x_BxHxWxC):
  """(B, C, C) Gram matrices F^T F normalised by C * H * W (Johnson et al.)."""
  b, h, w, c = x_BxHxWxC.shape
  f_BxNxC = x_BxHxWxC.reshape(b, h * w, c).astype(jnp.float32)
  return jnp.einsum("bnc,bnd->bcd", f_BxNxC, f_BxNxC) / (h * w * c)


def style_statistics(feats: Features, layers: Sequence[str] = STYLE_LAYERS):
  """{layer: (mean (B, C), std (B, C), Gram (B, C, C))}: all that the style losses compare.

  Under jit, what a loss does not use (the Gram for the mean/std form) is never computed.
  """
  stats = {}
  for l in layers:
    f = feats[l].astype(jnp.float32)
    mu, sd = spatial.mean_std(f)
    stats[l] = (mu[:, 0, 0], sd[:, 0, 0], gram(f))
  return stats


def style_losses(stats_cs, stats_s) -> dict:
  """Both forms of the style loss from two `style_statistics`, each per sample (B,):

  mean_std = sum_l [mean_c (mu_l(cs) - mu_l(s))^2 + mean_c (sigma_l(cs) - sigma_l(s))^2]
  gram     = sum_l ||G_l(cs) - G_l(s)||_F^2, G = F^T F / (H W C) (Johnson et al. 2016)
  The stylized and style images may differ in size: only these statistics meet.
  """
  mean_std, gram_form = 0.0, 0.0
  for l in stats_cs:
    mu_cs, sd_cs, g_cs = stats_cs[l]
    mu_s, sd_s, g_s = stats_s[l]
    mean_std = (
      mean_std + jnp.mean((mu_cs - mu_s) ** 2, axis=-1) + jnp.mean((sd_cs - sd_s) ** 2, axis=-1)
    )
    gram_form = gram_form + jnp.sum((g_cs - g_s) ** 2, axis=(-2, -1))
  return {"mean_std": mean_std, "gram": gram_form}


def style_loss(
  feats_cs: Features,
  feats_s: Features,
  layers: Sequence[str] = STYLE_LAYERS,
  form: str = "mean_std",
):
  """The style loss per sample, (B,), in form "mean_std" or "gram" (see `style_losses`)."""
  if form not in ("mean_std", "gram"):
    raise ValueError(f"style loss form must be 'mean_std' or 'gram', got {form!r}")
  return style_losses(style_statistics(feats_cs, layers), style_statistics(feats_s, layers))[form]


def subsample_positions(x_BxHxWxC, key, max_positions: int):
  """(B, N, C) with N = min(H * W, max_positions) positions per image, drawn without replacement.

  Each image gets its own draw (the key is split over the batch), so the result
  does not depend on how the batch is sharded.
  """
  b, h, w, c = x_BxHxWxC.shape
  x_BxNxC = x_BxHxWxC.reshape(b, h * w, c)
  if max_positions <= 0 or h * w <= max_positions:
    return x_BxNxC
  idx_BxM = jax.vmap(lambda k: jax.random.choice(k, h * w, (max_positions,), replace=False))(
    jax.random.split(key, b)
  )
  return jnp.take_along_axis(x_BxNxC, idx_BxM[..., None], axis=1)


def cosine_cost(x_BxNxC, y_BxMxC, eps: float = 1e-8):
  """(B, N, M) cosine distances 1 - cos(x_i, y_j)."""
  x = x_BxNxC.astype(jnp.float32)
  y = y_BxMxC.astype(jnp.float32)
  x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)
  y = y * jax.lax.rsqrt(jnp.sum(y * y, axis=-1, keepdims=True) + eps)
  return 1.0 - jnp.einsum("bnc,bmc->bnm", x, y)


def remd(x_BxNxC, y_BxMxC):
  """Relaxed EMD (Eq. 9) per image: max of the two directional mean nearest-neighbour costs; (B,)."""
  cost_BxNxM = cosine_cost(x_BxNxC, y_BxMxC)
  return jnp.maximum(
    jnp.mean(jnp.min(cost_BxNxM, axis=2), axis=1), jnp.mean(jnp.min(cost_BxNxM, axis=1), axis=1)
  )


def remd_loss(
  feats_cs: Features,
  feats_s: Features,
  key,
  max_positions: int,
  layers: Sequence[str] = REMD_LAYERS,
):
  """Eq. 9 summed over `layers`, averaged over the batch; positions capped by `max_positions`."""
  total = 0.0
  for i, l in enumerate(layers):
    k_cs, k_s = jax.random.split(jax.random.fold_in(key, i))
    total += jnp.mean(
      remd(
        subsample_positions(feats_cs[l], k_cs, max_positions),
        subsample_positions(feats_s[l], k_s, max_positions),
      )
    )
  return total


def reconstruction_loss(
  i_cc,
  i_c,
  i_ss,
  i_s,
  feats_cc: Features,
  feats_c: Features,
  feats_ss: Features,
  feats_s: Features,
  pixel_weight: float,
  feature_weight: float,
  layers: Sequence[str] = REC_LAYERS,
):
  """Eq. 8: lambda_rec1 * pixel MSE + lambda_rec2 * feature MSE of I_cc vs I_c and I_ss vs I_s.

  Returns (weighted total, {"pixel": unweighted, "feature": unweighted}).
  """
  pixel = _mse(i_cc, i_c) + _mse(i_ss, i_s)
  feature = sum(_mse(feats_cc[l], feats_c[l]) + _mse(feats_ss[l], feats_s[l]) for l in layers)
  return pixel_weight * pixel + feature_weight * feature, {"pixel": pixel, "feature": feature}


def _check_gan(kind: str):
  if kind not in ("lsgan", "hinge"):
    raise ValueError(f"GAN loss must be 'lsgan' or 'hinge', got {kind!r}")


def discriminator_loss(
  real_outputs: Sequence[jax.Array], fake_outputs: Sequence[jax.Array], kind: str = "lsgan"
):
  """pix2pixHD's D loss: 0.5 * sum over scales of (real term + fake term).

  lsgan: (D(x) - 1)^2 and D(G)^2; hinge: relu(1 - D(x)) and relu(1 + D(G)); means over patches.
  """
  _check_gan(kind)
  total = 0.0
  for real, fake in zip(real_outputs, fake_outputs, strict=True):
    real, fake = real.astype(jnp.float32), fake.astype(jnp.float32)
    if kind == "lsgan":
      total += jnp.mean(jnp.square(real - 1.0)) + jnp.mean(jnp.square(fake))
    else:
      total += jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake))
  return 0.5 * total


def generator_adv_loss(fake_outputs: Sequence[jax.Array], kind: str = "lsgan"):
  """The generator's adversarial term, summed over scales: (D(G) - 1)^2 (lsgan) or -D(G) (hinge)."""
  _check_gan(kind)
  total = 0.0
  for fake in fake_outputs:
    fake = fake.astype(jnp.float32)
    total += jnp.mean(jnp.square(fake - 1.0)) if kind == "lsgan" else -jnp.mean(fake)
  return total
