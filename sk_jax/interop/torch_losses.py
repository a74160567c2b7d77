"""The losses of Eq. 7 and the multi-scale discriminator in plain PyTorch, NCHW, float32.

Written from the paper (Sec. 3.3, Eqs. 7-9) and docs/method.md, not translated from sk_jax.nn.losses:

  losses        content, style (mean/std and Gram), REMD at given positions, reconstruction
                (pixel and feature identity losses), LSGAN and hinge adversarial terms
  MultiScaleDiscriminator  pix2pixHD's PatchGANs; module paths equal the Flax names
                (scale0.conv0 ...), so `sk_jax.port.discriminator_to_torch` loads strictly

`sk_jax.torch_train` trains with them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sk_jax.interop import torch_ref

CONTENT_LAYERS = ("relu4_1", "relu5_1")
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
REMD_LAYERS = ("relu3_1", "relu4_1")
REC_LAYERS = ("relu2_1", "relu3_1", "relu4_1", "relu5_1")
_EPS = 1e-5


# ----------------------------------------------------------------------------- losses


def mean_std(x, eps: float = _EPS):
  """Spatial mean and std (biased variance, eps inside the sqrt) of (B, C, H, W): each (B, C)."""
  return x.mean(dim=(2, 3)), torch.sqrt(x.var(dim=(2, 3), unbiased=False) + eps)


def content_loss(feats_cs, feats_c, layers=CONTENT_LAYERS):
  """Per sample (B,): sum over layers of the MSE between instance-normalised features."""
  return sum(
    (torch_ref.instance_norm(feats_cs[l]) - torch_ref.instance_norm(feats_c[l]))
    .square()
    .mean(dim=(1, 2, 3))
    for l in layers
  )


def gram(x):
  """(B, C, C): F F^T / (C H W)."""
  b, c, h, w = x.shape
  f = x.reshape(b, c, h * w)
  return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(feats_cs, feats_s, layers=STYLE_LAYERS, form: str = "mean_std"):
  """Per sample (B,): mean/std form (AdaIN's, channel means) or Gram form (Johnson et al.)."""
  total = 0.0
  for l in layers:
    if form == "gram":
      total = total + (gram(feats_cs[l]) - gram(feats_s[l])).square().sum(dim=(1, 2))
    else:
      (mu_a, sd_a), (mu_b, sd_b) = mean_std(feats_cs[l]), mean_std(feats_s[l])
      total = total + (mu_a - mu_b).square().mean(-1) + (sd_a - sd_b).square().mean(-1)
  return total


def positions(x, idx=None):
  """(B, C, H, W) -> (B, N, C) feature vectors; idx (B, M) long picks M positions per image."""
  x = x.flatten(2).transpose(1, 2)
  return x if idx is None else torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def remd(x, y, eps: float = 1e-8):
  """Eq. 9 per image, (B,): max of the two mean nearest-neighbour cosine distances."""
  x = x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)
  y = y * torch.rsqrt(y.square().sum(-1, keepdim=True) + eps)
  cost = 1.0 - torch.bmm(x, y.transpose(1, 2))
  return torch.maximum(cost.min(dim=2).values.mean(1), cost.min(dim=1).values.mean(1))


def remd_loss(feats_cs, feats_s, indices, layers=REMD_LAYERS):
  """Eq. 9 summed over layers, batch mean; indices {layer: (idx_cs, idx_s)}, None = all positions."""
  total = 0.0
  for l in layers:
    idx_cs, idx_s = indices.get(l, (None, None))
    total = total + remd(positions(feats_cs[l], idx_cs), positions(feats_s[l], idx_s)).mean()
  return total


def reconstruction_loss(i_cc, i_c, i_ss, i_s, f_cc, f_c, f_ss, f_s, w_pixel, w_feature):
  """Eq. 8 (identity losses, "||.||_2" read as the MSE): (weighted sum, pixel, feature)."""
  pixel = F.mse_loss(i_cc, i_c) + F.mse_loss(i_ss, i_s)
  feature = sum(F.mse_loss(f_cc[l], f_c[l]) + F.mse_loss(f_ss[l], f_s[l]) for l in REC_LAYERS)
  return w_pixel * pixel + w_feature * feature, pixel, feature


def discriminator_loss(real_outputs, fake_outputs, kind: str = "lsgan"):
  """0.5 * sum over scales of the real and the fake term (pix2pixHD)."""
  total = 0.0
  for real, fake in zip(real_outputs, fake_outputs, strict=True):
    if kind == "lsgan":
      total = total + (real - 1.0).square().mean() + fake.square().mean()
    else:
      total = total + F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
  return 0.5 * total


def generator_adv_loss(fake_outputs, kind: str = "lsgan"):
  """Sum over scales: (D(G) - 1)^2 (lsgan) or -D(G) (hinge), patch means."""
  if kind == "lsgan":
    return sum((f - 1.0).square().mean() for f in fake_outputs)
  return sum(-f.mean() for f in fake_outputs)


# ----------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
  """pix2pixHD's NLayerDiscriminator: 4x4 convolutions, zero padding 2, LeakyReLU 0.2."""

  def __init__(self, features: int, num_layers: int, norm: str):
    super().__init__()
    self.num_layers, self.norm = num_layers, norm
    self.conv0 = nn.Conv2d(3, features, 4, 2, padding=2)
    cin = features
    for i in range(1, num_layers + 1):
      nf = min(features * 2**i, 512)
      stride = 2 if i < num_layers else 1
      # No bias before instance norm, which would cancel it (as the JAX model).
      conv = nn.Conv2d(cin, nf, 4, stride, padding=2, bias=norm != "instance")
      setattr(self, f"conv{i}", conv)
      cin = nf
    setattr(self, f"conv{num_layers + 1}", nn.Conv2d(cin, 1, 4, 1, padding=2))

  def forward(self, x):
    x = F.leaky_relu(self.conv0(x), 0.2)
    for i in range(1, self.num_layers + 1):
      x = getattr(self, f"conv{i}")(x)
      if self.norm == "instance":
        x = torch_ref.instance_norm(x)
      x = F.leaky_relu(x, 0.2)
    return getattr(self, f"conv{self.num_layers + 1}")(x)


class MultiScaleDiscriminator(nn.Module):
  """PatchGANs on the image in [-1, 1] at full, 1/2, 1/4 ... resolution; list of (B, 1, h, w)."""

  def __init__(self, config):
    super().__init__()
    self.num_scales = config.num_scales
    for i in range(config.num_scales):
      setattr(
        self, f"scale{i}", PatchDiscriminator(config.features, config.num_layers, config.norm)
      )

  def forward(self, images):
    x, outputs = images * 2.0 - 1.0, []
    for i in range(self.num_scales):
      outputs.append(getattr(self, f"scale{i}")(x))
      if i + 1 < self.num_scales:
        x = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
    return outputs
