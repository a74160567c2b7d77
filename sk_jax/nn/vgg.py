"""The frozen ImageNet VGG-16 encoder (torchvision's layer layout), as a pure function.

Parameters are a plain dict {"conv1_1": {"kernel": HWIO, "bias": (O,)}, ...}; they
are never trained, so they live outside the generator's Flax parameters and
outside its checkpoints.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError
from sk_jax.nn import spatial

# torchvision's vgg16().features, in order; "M" is a 2x2 max pool.
LAYERS = (
  "conv1_1",
  "conv1_2",
  "M",
  "conv2_1",
  "conv2_2",
  "M",
  "conv3_1",
  "conv3_2",
  "conv3_3",
  "M",
  "conv4_1",
  "conv4_2",
  "conv4_3",
  "M",
  "conv5_1",
  "conv5_2",
  "conv5_3",
)
CONVS = tuple(name for name in LAYERS if name != "M")
CHANNELS = {"conv1": 64, "conv2": 128, "conv3": 256, "conv4": 512, "conv5": 512}
TAPS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def param_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
  """The expected shape of every encoder parameter (HWIO kernels)."""
  shapes, cin = {}, 3
  for name in CONVS:
    cout = CHANNELS[name.split("_")[0]]
    shapes[name] = {"kernel": (3, 3, cin, cout), "bias": (cout,)}
    cin = cout
  return shapes


def check_params(params, source: str) -> None:
  """Raises InputError naming the first missing, unexpected or mis-shaped layer."""
  expected = param_shapes()
  if not isinstance(params, dict):
    raise InputError(f"{source}: expected a dict of VGG-16 layers, got {type(params).__name__}")
  extra = sorted(set(params) - set(expected))
  if extra:
    raise InputError(f"{source}: unexpected VGG-16 layer {extra[0]!r}")
  for name, shapes in expected.items():
    if name not in params:
      raise InputError(f"{source}: missing VGG-16 layer {name!r}")
    for key, shape in shapes.items():
      got = (
        getattr(params[name].get(key), "shape", None) if isinstance(params[name], dict) else None
      )
      if tuple(got or ()) != shape:
        raise InputError(f"{source}: {name}.{key} has shape {got}, expected {shape}")


def _conv(x, layer):
  y = jax.lax.conv_general_dilated(
    x,
    layer["kernel"].astype(x.dtype),
    window_strides=(1, 1),
    padding=((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  return y + layer["bias"].astype(x.dtype)


def _max_pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def vgg16_features(params, images, taps=TAPS, dtype=jnp.float32, hw=None):
  """VGG-16 activations at the requested taps.

  Args:
    params: from `sk_jax.io.weights.load_vgg16()`.
    images: (B, H, W, 3) float RGB in [0, 1].
    taps: names among relu1_1 ... relu5_1; the network stops at the deepest one.
    dtype: compute dtype (float32 or bfloat16).
    hw: the true size (int (2,), multiples of 2^pools) of images zero-padded to a size
      bucket: every layer's input is 0 outside it, as the convolutions' zero padding reads,
      so the activations inside equal those of the unpadded images.

  Returns:
    {tap: (B, H / 2^i, W / 2^i, C)} for every requested tap.
  """
  taps = tuple(taps)
  unknown = set(taps) - set(TAPS)
  if unknown:
    raise ValueError(f"unknown VGG-16 taps {sorted(unknown)}; choose from {TAPS}")
  last = max(TAPS.index(t) for t in taps)
  x = ((images - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)
  scale = 1
  if hw is not None:
    x = spatial.zero_outside(x, hw)
  out = {}
  for name in LAYERS:
    if name == "M":
      x = _max_pool(x)
      scale *= 2
      continue
    x = jax.nn.relu(_conv(x, params[name]))
    if hw is not None:
      x = spatial.zero_outside(x, hw // scale)
    tap = "relu" + name[4:]
    if tap in taps:
      out[tap] = x
      if TAPS.index(tap) == last:
        break
  return out
