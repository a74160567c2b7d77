"""The decoder: VGG-16 from relu4_1 back to RGB, mirrored (reflection padding, nearest upsampling)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# (name, output channels, upsample x2 after it); the last layer has no ReLU.
LAYERS = (("dec4_1", 256, True),
          ("dec3_3", 256, False), ("dec3_2", 256, False), ("dec3_1", 128, True),
          ("dec2_2", 128, False), ("dec2_1", 64, True),
          ("dec1_2", 64, False), ("dec1_1", 3, False))


def upsample_nearest(x):
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Decoder(nn.Module):
  """(B, H, W, 512) -> (B, 8H, 8W, 3), RGB roughly in [0, 1] (not clipped)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = x.astype(self.dtype)
    for i, (name, features, up) in enumerate(LAYERS):
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
      x = nn.Conv(features, (3, 3), padding="VALID", dtype=self.dtype, name=name)(x)
      if i < len(LAYERS) - 1:
        x = jax.nn.relu(x)
      if up:
        x = upsample_nearest(x)
    return x.astype(jnp.float32)
