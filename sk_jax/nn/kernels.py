"""Style Kernel Generation (Sec. 3.2) and its application to the content (Eq. 6)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.nn import spatial


def _delta_bias(channels: int, k: int):
  """Bias of the kernel head's last layer: F1, F2 centred deltas and B = 0 for every channel."""

  def init(key, shape, dtype=jnp.float32):
    del key
    per_channel = np.zeros(2 * k + 1, np.float32)
    per_channel[k // 2] = per_channel[k + k // 2] = 1.0
    return jnp.asarray(np.tile(per_channel, channels), dtype).reshape(shape)

  return init


class KernelHead(nn.Module):
  """Z_cs -> per-position, per-channel F1 (k x 1), F2 (1 x k) and B: two convolutions."""

  channels: int
  kernel_size: int
  hidden: int
  init_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z_cs):
    k = self.kernel_size
    h = nn.relu(nn.Conv(self.hidden, (3, 3), dtype=self.dtype, name="conv1")(z_cs))
    out = nn.Conv(
      self.channels * (2 * k + 1),
      (1, 1),
      dtype=self.dtype,
      name="conv2",
      kernel_init=nn.initializers.normal(self.init_std),
      bias_init=_delta_bias(self.channels, k),
    )(h)
    kern_BxHxWxCx2kp1 = out.astype(jnp.float32).reshape(*out.shape[:3], self.channels, 2 * k + 1)
    # lax slices rather than basic indexing, which becomes a gather under symbolic shapes.
    f_v = jax.lax.slice_in_dim(kern_BxHxWxCx2kp1, 0, k, axis=-1)
    f_h = jax.lax.slice_in_dim(kern_BxHxWxCx2kp1, k, 2 * k, axis=-1)
    return f_v, f_h, jax.lax.index_in_dim(kern_BxHxWxCx2kp1, 2 * k, axis=-1, keepdims=False)


def apply_style_kernels(z_c, f_v, f_h, bias, groups: int, hw=None):
  """Eq. 6: Z_bar = IN(GS(Z_c)) * F1 * F2 + B; hw: Z_c's true size inside a size bucket (the
  statistics and the reflection at the border are then those of the unpadded Z_c)."""
  x = spatial.instance_norm(spatial.channel_shuffle(z_c.astype(jnp.float32), groups), hw=hw)
  return spatial.separable_pixel_conv(x, f_v, f_h, bias, hw)
