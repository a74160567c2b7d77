"""The training losses of Sec. 3.3 (Eq. 7-9), each a pure function of VGG features or images.

Features are dicts {tap: (B, H, W, C)} from `sk_jax.models.vgg.vgg16_features`;
every loss returns a float32 scalar averaged over the batch. "||.||_2" of Eq. 8
is read as the mean squared error, as in SANet's identity losses (docs/training.md).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from sk_jax import ops

CONTENT_LAYERS = ("relu4_1", "relu5_1")
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
REMD_LAYERS = ("relu3_1", "relu4_1")
REC_LAYERS = ("relu2_1", "relu3_1", "relu4_1", "relu5_1")

Features = Mapping[str, jax.Array]


def _mse(a, b):
  return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def content_loss(feats_cs: Features, feats_c: Features, layers: Sequence[str] = CONTENT_LAYERS):
  """SANet's content loss: sum over layers of MSE(IN(phi(I_cs)), IN(phi(I_c)))."""
  return sum(_mse(ops.instance_norm(feats_cs[l].astype(jnp.float32)),
                  ops.instance_norm(feats_c[l].astype(jnp.float32))) for l in layers)


def gram(x_BxHxWxC):
  """(B, C, C) Gram matrices normalised by C * H * W (Johnson et al.)."""
  b, h, w, c = x_BxHxWxC.shape
  f_BxNxC = x_BxHxWxC.reshape(b, h * w, c).astype(jnp.float32)
  return jnp.einsum("bnc,bnd->bcd", f_BxNxC, f_BxNxC) / (h * w * c)


def style_loss(feats_cs: Features, feats_s: Features, layers: Sequence[str] = STYLE_LAYERS,
               form: str = "mean_std"):
  """Sum over layers of MSE(mu) + MSE(sigma) (form "mean_std", eps inside the sqrt) or MSE(Gram)."""
  if form not in ("mean_std", "gram"):
    raise ValueError(f"style loss form must be 'mean_std' or 'gram', got {form!r}")
  total = 0.0
  for l in layers:
    a, b = feats_cs[l].astype(jnp.float32), feats_s[l].astype(jnp.float32)
    if form == "gram":
      total += _mse(gram(a), gram(b))
    else:
      mu_a, sd_a = ops.mean_std(a)
      mu_b, sd_b = ops.mean_std(b)
      total += _mse(mu_a, mu_b) + _mse(sd_a, sd_b)
  return total


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
      jax.random.split(key, b))
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
  return jnp.maximum(jnp.mean(jnp.min(cost_BxNxM, axis=2), axis=1),
                     jnp.mean(jnp.min(cost_BxNxM, axis=1), axis=1))


def remd_loss(feats_cs: Features, feats_s: Features, key, max_positions: int,
              layers: Sequence[str] = REMD_LAYERS):
  """Eq. 9 summed over `layers`, averaged over the batch; positions capped by `max_positions`."""
  total = 0.0
  for i, l in enumerate(layers):
    k_cs, k_s = jax.random.split(jax.random.fold_in(key, i))
    total += jnp.mean(remd(subsample_positions(feats_cs[l], k_cs, max_positions),
                           subsample_positions(feats_s[l], k_s, max_positions)))
  return total


def reconstruction_loss(i_cc, i_c, i_ss, i_s, feats_cc: Features, feats_c: Features,
                        feats_ss: Features, feats_s: Features, pixel_weight: float,
                        feature_weight: float, layers: Sequence[str] = REC_LAYERS):
  """Eq. 8: lambda_rec1 * pixel MSE + lambda_rec2 * feature MSE of I_cc vs I_c and I_ss vs I_s.

  Returns (weighted total, {"pixel": unweighted, "feature": unweighted}).
  """
  pixel = _mse(i_cc, i_c) + _mse(i_ss, i_s)
  feature = sum(_mse(feats_cc[l], feats_c[l]) + _mse(feats_ss[l], feats_s[l]) for l in layers)
  return pixel_weight * pixel + feature_weight * feature, {"pixel": pixel, "feature": feature}


def _check_gan(kind: str):
  if kind not in ("lsgan", "hinge"):
    raise ValueError(f"GAN loss must be 'lsgan' or 'hinge', got {kind!r}")


def discriminator_loss(real_outputs: Sequence[jax.Array], fake_outputs: Sequence[jax.Array],
                       kind: str = "lsgan"):
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
