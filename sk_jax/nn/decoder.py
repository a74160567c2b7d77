"""The decoder: VGG-16 from relu4_1 back to RGB, mirrored (reflection padding, nearest upsampling)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sk_jax.nn import spatial

# (name, output channels, upsample x2 after it); the last layer has no ReLU.
LAYERS = (
  ("dec4_1", 256, True),
  ("dec3_3", 256, False),
  ("dec3_2", 256, False),
  ("dec3_1", 128, True),
  ("dec2_2", 128, False),
  ("dec2_1", 64, True),
  ("dec1_2", 64, False),
  ("dec1_1", 3, False),
)


class ReflectConv(nn.Module):
  """A 3 x 3 convolution over the reflection-padded input; parameters as flax's nn.Conv
  ("kernel" (3, 3, Cin, Cout) lecun-normal, "bias" zeros), computed in `dtype`. upsample: of the
  input upsampled x2 (nearest) first, computed without it (`spatial.upsample_conv3x3_reflect`)."""

  features: int
  dtype: jnp.dtype = jnp.float32
  upsample: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features), jnp.float32
    )
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
    x = x.astype(self.dtype)
    if self.upsample:
      return spatial.upsample_conv3x3_reflect(x, kernel) + bias.astype(self.dtype)
    return spatial.conv3x3_reflect(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class Decoder(nn.Module):
  """(B, H, W, 512) -> (B, 8H, 8W, 3), RGB roughly in [0, 1] (not clipped). fuse_upsampling:
  the layers after an upsampling compute it inside their convolution (the same function up to
  float32 rounding, 30 % fewer FLOPs; docs/method.md, decoder); training keeps the plain form."""

  dtype: jnp.dtype = jnp.float32
  fuse_upsampling: bool = True

  @nn.compact
  def __call__(self, x, hw=None):
    """hw: x's true size inside a size bucket: each convolution then reflects at its border
    (spatial.reflect_outside) and the output equals the unpadded one there."""
    x = x.astype(self.dtype)
    up = False  # the upsampling after a layer happens inside the next one's convolution
    for i, (name, features, upsample_after) in enumerate(LAYERS):
      if up and not self.fuse_upsampling:
        x, hw, up = spatial.upsample_nearest(x), None if hw is None else hw * 2, False
      if hw is not None:
        x = spatial.replicate_outside(x, hw) if up else spatial.reflect_outside(x, hw, 1)
      x = ReflectConv(features, self.dtype, up, name=name)(x)
      if up and hw is not None:
        hw = hw * 2
      if i < len(LAYERS) - 1:
        x = jax.nn.relu(x)
      up = upsample_after
    return x.astype(jnp.float32)
