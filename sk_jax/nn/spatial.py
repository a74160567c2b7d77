"""Per-position array math of StyleKernel: size masks of the buckets, channel shuffle, instance
norm, Eq. 6's per-pixel separable convolution and the decoder's reflect-padded convolutions.
No Flax state, NHWC throughout; each function maps to an equation of docs/method.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_EPS = 1e-5


# Size buckets (docs/method.md, "Size buckets"): an image padded up to a bucket carries its true
# size hw, an int (2,) array (a traced value, so every size in a bucket runs one program); the
# functions below then compute exactly what they compute on the unpadded image.
def valid_positions(shape_hw, hw):
  """(H, W) bool: True at rows < hw[0] and columns < hw[1]."""
  rows = jnp.arange(shape_hw[0]) < hw[0]
  cols = jnp.arange(shape_hw[1]) < hw[1]
  return rows[:, None] & cols[None, :]


def zero_outside(x_BxHxWxC, hw):
  """x with every position outside the true size hw set to 0 (what zero padding reads there)."""
  valid = valid_positions(x_BxHxWxC.shape[1:3], hw)[None, :, :, None]
  return jnp.where(valid, x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype))


def reflect_outside(x_BxHxWxC, hw, radius: int, axes=(1, 2)):
  """x with the `radius` rows (axis 1) and columns (axis 2) after the true size hw overwritten by
  numpy's 'reflect' padding of x[:, :hw[0], :hw[1]]: a convolution of that radius then reads at
  the true border what it reads on the unpadded image. Rows first, so corners reflect twice."""
  for axis in axes:
    n, size = hw[axis - 1], x_BxHxWxC.shape[axis]
    period = 2 * (n - 1)
    for j in range(radius):
      i = n + j
      m = i % period
      src = jax.lax.dynamic_slice_in_dim(x_BxHxWxC, jnp.where(m < n, m, period - m), 1, axis)
      # Past the array's end (the true size fills the bucket) nothing is written.
      dst = jnp.minimum(i, size - 1)
      keep = jax.lax.dynamic_slice_in_dim(x_BxHxWxC, dst, 1, axis)
      x_BxHxWxC = jax.lax.dynamic_update_slice_in_dim(
        x_BxHxWxC, jnp.where(i < size, src, keep), dst, axis
      )
  return x_BxHxWxC


def replicate_outside(x_BxHxWxC, hw):
  """x with the row (axis 1) and the column (axis 2) after the true size hw overwritten by the
  last true row and column (numpy's 'edge' padding by 1): what `upsample_conv3x3_reflect`
  reads there on the unpadded image. Rows first, so the corner is the last true pixel."""
  for axis in (1, 2):
    n, size = hw[axis - 1], x_BxHxWxC.shape[axis]
    src = jax.lax.dynamic_slice_in_dim(x_BxHxWxC, n - 1, 1, axis)
    dst = jnp.minimum(n, size - 1)
    keep = jax.lax.dynamic_slice_in_dim(x_BxHxWxC, dst, 1, axis)
    x_BxHxWxC = jax.lax.dynamic_update_slice_in_dim(
      x_BxHxWxC, jnp.where(n < size, src, keep), dst, axis
    )
  return x_BxHxWxC


def channel_shuffle(x, groups: int):
  """ShuffleNet channel shuffle of the last axis: (.., g, C/g) -> (.., C/g, g)."""
  c = x.shape[-1]
  if groups <= 1:
    return x
  if c % groups:
    raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
  x = x.reshape(*x.shape[:-1], groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*x.shape[:-2], c)


def mean_std(x, eps: float = _EPS, hw=None):
  """Per-sample, per-channel spatial mean and std of (B, H, W, C); eps inside the sqrt.
  hw: the true size (the statistics are over those positions only)."""
  if hw is None:
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.var(x, axis=(1, 2), keepdims=True)
    return mean, jnp.sqrt(var + eps)
  count = (hw[0] * hw[1]).astype(x.dtype)
  mean = jnp.sum(zero_outside(x, hw), axis=(1, 2), keepdims=True) / count
  var = jnp.sum(jnp.square(zero_outside(x - mean, hw)), axis=(1, 2), keepdims=True) / count
  return mean, jnp.sqrt(var + eps)


def instance_norm(x, eps: float = _EPS, hw=None):
  """(x - mu) / sigma over the spatial axes of (B, H, W, C) (the normalisation of Eq. 6)."""
  mean, std = mean_std(x, eps, hw)
  return (x - mean) / std


def _shifted_copies(x, k: int, axis: int):
  """k copies of x shifted by t - k//2 along `axis`, reflection at the edges; stacked last."""
  r = k // 2
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x, pad, mode="reflect")
  n = x.shape[axis]
  return jnp.stack([jax.lax.slice_in_dim(xp, t, t + n, axis=axis) for t in range(k)], axis=-1)


def separable_pixel_conv(x, f_v, f_h, bias, hw=None):
  """Per-position, per-channel separable convolution (Eq. 6 without the normalisation).

  Args:
    x: (B, H, W, C) feature.
    f_v: (B, H, W, C, k) vertical (k x 1) filter at every position and channel.
    f_h: (B, H, W, C, k) horizontal (1 x k) filter.
    bias: (B, H, W, C).

  Returns:
    (B, H, W, C): y[b,i,j,c] = sum_t f_v[b,i,j,c,t] x[b,i+t-k//2,j,c], then
    z[b,i,j,c] = sum_t f_h[b,i,j,c,t] y[b,i,j+t-k//2,c], then z + bias; rows and
    columns outside the image are read with reflection (numpy's 'reflect'); with hw, outside
    x[:, :hw[0], :hw[1]].
  """
  k = f_v.shape[-1]
  if f_h.shape[-1] != k or k % 2 == 0:
    raise ValueError(
      f"separable_pixel_conv: filters must share one odd size, got {f_v.shape} {f_h.shape}"
    )
  if hw is not None:
    x = reflect_outside(x, hw, k // 2, axes=(1,))
  y = jnp.einsum("bhwck,bhwck->bhwc", _shifted_copies(x, k, axis=1), f_v)
  if hw is not None:
    y = reflect_outside(y, hw, k // 2, axes=(2,))
  z = jnp.einsum("bhwck,bhwck->bhwc", _shifted_copies(y, k, axis=2), f_h)
  return z + bias


def conv3x3_reflect(x, kernel):
  """A 3 x 3 convolution of (B, H, W, Cin) over its reflection-padded self (numpy's 'reflect'),
  kernel (3, 3, Cin, Cout) -> (B, H, W, Cout); H, W >= 2.

  Equal to `conv(pad(x, 1, "reflect"), kernel, "VALID")`, computed as XLA's zero-padded
  ("SAME") convolution, whose interior never reads the padding, with the border rows and
  columns recomputed from thin reflected strips. XLA's CPU backend runs a VALID convolution
  of a padded input several times slower than the SAME one (docs/method.md, decoder).
  """
  conv = lambda a, padding: jax.lax.conv_general_dilated(
    a, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  h, w = x.shape[1:3]
  if not (isinstance(h, int) and isinstance(w, int)):
    # Symbolic sizes (jax.export, ONNX): the plain form, which converters follow.
    return conv(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect"), "VALID")
  reflect = lambda a, axis: jnp.concatenate(
    [
      jax.lax.slice_in_dim(a, 1, 2, axis=axis),
      a,
      jax.lax.slice_in_dim(a, a.shape[axis] - 2, a.shape[axis] - 1, axis=axis),
    ],
    axis=axis,
  )
  out = conv(x, "SAME")
  top = conv(reflect(reflect(x[:, :2], 1)[:, :3], 2), "VALID")  # (B, 1, W, Cout)
  bottom = conv(reflect(reflect(x[:, h - 2 :], 1)[:, 1:], 2), "VALID")
  left = conv(reflect(reflect(x[:, :, :2], 2)[:, :, :3], 1), "VALID")[
    :, 1:-1
  ]  # (B, H - 2, 1, Cout)
  right = conv(reflect(reflect(x[:, :, w - 2 :], 2)[:, :, 1:], 1), "VALID")[:, 1:-1]
  middle = jnp.concatenate([left, out[:, 1:-1, 1:-1], right], axis=2)
  return jnp.concatenate([top, middle, bottom], axis=1)


def upsample_nearest(x):
  """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated 2 x 2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# Nearest x2 upsampling then a reflect-padded 3 x 3 convolution, along one axis: output row 2i + a
# reads upsampled rows 2i + a - 1 .. 2i + a + 1, i.e. low-resolution rows i + a - 1 and i + a of
# the edge-padded input, with the 3 taps summed into 2 by _PHASES[a] (2 x 3).
_PHASES = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def _conv(x, kernel, padding):
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def upsample_conv3x3_reflect(x, kernel):
  """conv3x3_reflect(upsample_nearest(x), kernel) without the upsampled input: (B, H, W, Cin),
  kernel (3, 3, Cin, Cout) -> (B, 2H, 2W, Cout); H, W >= 1.

  Each of the four output phases (row and column parity) is a 2 x 2 convolution of the
  edge-padded x, with the 3 x 3 taps summed into 2 x 2 (reflection at the upsampled border reads
  the border pixel's copy, i.e. edge padding at low resolution): 16 instead of 36 multiply-adds
  per input position and channel pair, the same function up to float32 rounding. The four phase
  kernels are one convolution with 4 Cout outputs over (H + 1) x (W + 1) positions, computed
  zero-padded (XLA's fast form, as in `conv3x3_reflect`) with the border rows and columns
  recomputed from thin edge-padded strips; then interleaved (docs/method.md, decoder).
  """
  b, h, w, _ = x.shape
  cout = kernel.shape[-1]
  if not (isinstance(h, int) and isinstance(w, int)):
    # Symbolic sizes (jax.export, ONNX): the plain form, which converters follow.
    return conv3x3_reflect(upsample_nearest(x), kernel.astype(x.dtype))
  phases = jnp.asarray(_PHASES, jnp.float32)
  k = jnp.einsum("apd,bqe,deio->pqiabo", phases, phases, kernel.astype(jnp.float32))
  # summed in float32, then x's dtype (a bfloat16 decoder rounds the 2 x 2 kernels once)
  k = k.reshape(2, 2, kernel.shape[2], 4 * cout).astype(x.dtype)
  edge = lambda a: jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  y = _conv(x, k, ((1, 1), (1, 1)))  # (B, H + 1, W + 1, 4 Cout), wrong on its border
  top = _conv(edge(x[:, :1])[:, :2], k, "VALID")  # (B, 1, W + 1, 4 Cout)
  bottom = _conv(edge(x[:, h - 1 :])[:, 1:], k, "VALID")
  left = _conv(edge(x[:, :, :1])[:, :, :2], k, "VALID")[:, 1:-1]  # (B, H - 1, 1, 4 Cout)
  right = _conv(edge(x[:, :, w - 1 :])[:, :, 1:], k, "VALID")[:, 1:-1]
  middle = jnp.concatenate([left, y[:, 1:-1, 1:-1], right], axis=2)
  y = jnp.concatenate([top, middle, bottom], axis=1)
  y = y.reshape(b, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([y[:, a : a + h, c : c + w, a, c] for c in (0, 1)], 3) for a in (0, 1)]
  return jnp.stack(rows, 2).reshape(b, 2 * h, 2 * w, cout)  # (B, H, 2, W, 2, Cout) interleaved
