"""Size buckets: the shapes `Stylizer.stylize` compiles for (docs/method.md, "Size buckets").

An image is padded up to its bucket and carries its true size; the masked network
(`hw=` arguments of sk_jax.nn and sk_jax.nn.ops) then computes exactly the unpadded result,
so every size of a bucket runs one compiled program.
"""

from __future__ import annotations

import numpy as np

from sk_jax.nn.generator import STRIDE


def bucket_side(n: int) -> int:
  """The size bucket of an image side n (docs/method.md, "Size buckets"): n rounded up to a
  multiple of 64 up to 1024, of 128 up to 2048, of 256 beyond."""
  step = 64 if n <= 1024 else 128 if n <= 2048 else 256
  return -(-n // step) * step


def to_bucket(image) -> tuple[np.ndarray, np.ndarray]:
  """(H, W, 3) -> the (1, H', W', 3) image of its size bucket and its size inside, (2,) int32.

  As in `sk_jax.nn.generator.pad_to_stride`, the image is first reflection-padded to
  multiples of 8 (what the unbucketed path computes on); the rest of the bucket is zeros,
  which the masked network never reads (docs/method.md, "Size buckets")."""
  h, w = image.shape[:2]
  ph, pw = -h % STRIDE, -w % STRIDE
  mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
  image = np.pad(np.asarray(image, np.float32), ((0, ph), (0, pw), (0, 0)), mode=mode)
  hw = np.array(image.shape[:2], np.int32)
  out = np.zeros((1, bucket_side(hw[0]), bucket_side(hw[1]), 3), np.float32)
  out[0, : hw[0], : hw[1]] = image
  return out, hw
