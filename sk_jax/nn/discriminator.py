"""The multi-scale PatchGAN discriminator of pix2pixHD (Wang et al. 2018), used for L_adv."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sk_jax.errors import InputError
from sk_jax.nn import spatial
from sk_jax.nn.fields import ConfigFields


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig(ConfigFields):
  """Everything that fixes the discriminator's parameters."""

  GROUP = "disc"
  num_scales: int = 3  # pix2pixHD's num_D
  features: int = 64  # ndf: width of the first layer, doubled per layer up to 512
  num_layers: int = 3  # stride-2 layers per scale (n_layers_D)
  norm: str = "instance"  # "instance" (pix2pixHD) or "none"

  def __post_init__(self):
    if self.num_scales < 1 or self.num_layers < 1 or self.features < 1:
      raise InputError(f"disc: num_scales, num_layers and features must be positive, got {self}")
    if self.norm not in ("instance", "none"):
      raise InputError(f"disc.norm must be 'instance' or 'none', got {self.norm!r}")


def downsample(x):
  """AvgPool2d(3, stride=2, padding=1, count_include_pad=False) of (B, H, W, C)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  count = jax.lax.reduce_window(jnp.ones_like(x[..., :1]), 0.0, jax.lax.add, window, strides, pad)
  return total / count


class PatchDiscriminator(nn.Module):
  """pix2pixHD's NLayerDiscriminator: (B, H, W, 3) -> (B, h, w, 1) real/fake logits per patch."""

  features: int = 64
  num_layers: int = 3
  norm: str = "instance"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    # Kernel 4 with zero padding 2, as in pix2pixHD (padw = ceil((4 - 1) / 2)).
    conv = lambda f, s, name, bias=True: nn.Conv(
      f, (4, 4), (s, s), padding=((2, 2), (2, 2)), use_bias=bias, dtype=self.dtype, name=name
    )
    x = jax.nn.leaky_relu(conv(self.features, 2, "conv0")(x), 0.2)
    nf = self.features
    for i in range(1, self.num_layers + 1):
      nf = min(nf * 2, 512)
      # A bias before instance norm is cancelled exactly; its gradient is pure
      # rounding noise, which Adam would turn into full-size random steps.
      x = conv(nf, 2 if i < self.num_layers else 1, f"conv{i}", bias=self.norm != "instance")(x)
      if self.norm == "instance":
        x = spatial.instance_norm(x.astype(jnp.float32)).astype(self.dtype)
      x = jax.nn.leaky_relu(x, 0.2)
    return conv(1, 1, f"conv{self.num_layers + 1}")(x).astype(jnp.float32)


class MultiScaleDiscriminator(nn.Module):
  """Three PatchGANs on the image at full, 1/2 and 1/4 resolution.

  __call__((B, H, W, 3) RGB in [0, 1]) -> list of (B, h_i, w_i, 1) logits, finest scale first.
  """

  config: DiscriminatorConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    cfg = self.config
    x = (images.astype(jnp.float32) * 2.0 - 1.0).astype(self.dtype)  # pix2pixHD sees [-1, 1]
    outputs = []
    for i in range(cfg.num_scales):
      outputs.append(
        PatchDiscriminator(cfg.features, cfg.num_layers, cfg.norm, self.dtype, name=f"scale{i}")(x)
      )
      if i + 1 < cfg.num_scales:
        x = downsample(x)
    return outputs


def init_discriminator(config: DiscriminatorConfig, rng, image_hw=(32, 32)):
  """Random discriminator parameters; they do not depend on the image size."""
  x = jnp.zeros((1, *image_hw, 3), jnp.float32)
  return MultiScaleDiscriminator(config).init(rng, x)["params"]
