"""PyTorch interop: VGG-16 weights in, encoder and generator weights out (and back).

The layer tables below are the whole mapping; names on the JAX side are the
Flax names (`conv4_1`, `alignment/gate/conv1`, `decoder/dec4_1`), on the PyTorch
side torchvision's (`features.17`) and `sk_jax.interop.torch_ref`'s module paths
(`generator.alignment.gate.conv1`). Convolution kernels are HWIO in JAX and
OIHW in PyTorch; transposing is exact, so a round trip is bit-exact.

Commands: `sk-jax port-vgg16`, `sk-jax export-torch`, `sk-jax import-torch` (sk_jax/cli/interop.py).
"""

from __future__ import annotations

import re

import jax
import numpy as np

from sk_jax.errors import InputError
from sk_jax.io import images
from sk_jax.nn import vgg
from sk_jax.nn.generator import init_params

# torchvision's vgg16().features index of every convolution.
TORCH_INDEX = dict(zip(vgg.CONVS, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)))


# relative error (max |jax - torch| / max |torch|) that `port-vgg16 --verify` accepts, float32.
VERIFY_TOLERANCE = 1e-4


_WRAPPERS = ("state_dict", "model")


_TORCH_HINT = "pip install 'sk-jax[torch]' (torch==2.13.0)"


def import_torch(why: str):
  try:
    import torch
  except ImportError:
    raise InputError(f"{why} needs PyTorch: {_TORCH_HINT}") from None
  return torch


def _to_numpy(value, key: str, source: str) -> np.ndarray:
  """A tensor -> float32 numpy (bf16/fp16 sources are widened exactly)."""
  if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
    value = value.detach().cpu()
    if not value.is_floating_point():
      raise InputError(f"{source}: {key} has dtype {value.dtype}, expected floating point")
    value = value.float().numpy()
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.floating):
    raise InputError(f"{source}: {key} has dtype {arr.dtype}, expected floating point")
  arr = arr.astype(np.float32)
  if not np.isfinite(arr).all():
    raise InputError(f"{source}: {key} holds NaN or infinite values")
  return arr


def _is_tensor(v) -> bool:
  return hasattr(v, "shape") and hasattr(v, "dtype")


def unwrap_state_dict(obj, source: str) -> dict:
  """The flat {name: tensor} mapping inside a checkpoint: unwraps `state_dict`/`model`, strips `module.`."""
  for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
    if not isinstance(obj, dict):
      break
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
    if inner is None or any(_is_tensor(v) for v in obj.values()):
      break
    obj = inner
  if not isinstance(obj, dict):
    raise InputError(f"{source}: expected a state dict (name -> tensor), got {type(obj).__name__}")
  tensors = {}
  for key, value in obj.items():
    if not isinstance(key, str):
      raise InputError(f"{source}: state dict key {key!r} is not a string")
    if not _is_tensor(value):
      continue  # optimizer steps, epochs and the like beside the weights
    while key.startswith("module."):  # DataParallel / DDP
      key = key[len("module.") :]
    tensors[key] = value
  if not tensors:
    raise InputError(f"{source}: no tensors found (keys: {', '.join(map(str, list(obj)[:6]))})")
  return tensors


def _torch_shapes() -> dict[str, tuple[int, ...]]:
  """Expected PyTorch shape of every features.* tensor (OIHW weights)."""
  shapes = {}
  for name, s in vgg.param_shapes().items():
    kh, kw, cin, cout = s["kernel"]
    shapes[f"features.{TORCH_INDEX[name]}.weight"] = (cout, cin, kh, kw)
    shapes[f"features.{TORCH_INDEX[name]}.bias"] = (cout,)
  return shapes


def vgg16_from_state_dict(state_dict: dict, source: str = "state dict") -> dict:
  """torchvision-layout VGG-16 tensors -> encoder params for `sk_jax.vgg16_features`.

  Accepts `features.N.weight/bias` keys (`classifier.*` ignored) or the bare
  nn.Sequential form `N.weight/bias`. Missing, unexpected or mis-shaped tensors
  are an InputError naming the key and both shapes.
  """
  tensors = unwrap_state_dict(state_dict, source)
  if any(k.startswith("features.") for k in tensors):
    layers = {k: v for k, v in tensors.items() if not k.startswith("classifier.")}
  elif all(re.fullmatch(r"\d+\.\w+", k) for k in tensors):
    layers = {f"features.{k}": v for k, v in tensors.items()}  # nn.Sequential(features)
  else:
    raise InputError(
      f"{source}: not a torchvision VGG-16 state dict (no 'features.N.weight' keys; "
      f"found e.g. {sorted(tensors)[0]!r})"
    )
  expected = _torch_shapes()
  for key in layers:
    if key not in expected:
      hint = " (batch-norm VGG-16 is not supported)" if "running_" in key else ""
      raise InputError(
        f"{source}: unexpected layer {key} with shape {tuple(layers[key].shape)}, not in "
        f"VGG-16's features (convolutions at {sorted(set(TORCH_INDEX.values()))}){hint}"
      )
  for key, shape in expected.items():
    if key not in layers:
      raise InputError(f"{source}: missing {key} (expected shape {shape})")
    got = tuple(layers[key].shape)
    if got != shape:
      raise InputError(f"{source}: {key} has shape {got}, expected {shape}")
  params = {}
  for name, idx in TORCH_INDEX.items():
    w = _to_numpy(layers[f"features.{idx}.weight"], f"features.{idx}.weight", source)
    b = _to_numpy(layers[f"features.{idx}.bias"], f"features.{idx}.bias", source)
    params[name] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b}
  vgg.check_params(params, source)
  return params


def vgg16_to_torch(params, prefix: str = "features.") -> dict:
  """Encoder params -> torchvision-layout state dict of torch tensors (OIHW), exact copies."""
  torch = import_torch("exporting to PyTorch")
  vgg.check_params({k: dict(v) for k, v in params.items()}, "encoder params")
  sd = {}
  for name, idx in TORCH_INDEX.items():
    kernel = np.asarray(params[name]["kernel"], np.float32)
    sd[f"{prefix}{idx}.weight"] = torch.from_numpy(
      np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    )
    sd[f"{prefix}{idx}.bias"] = torch.from_numpy(np.array(params[name]["bias"], np.float32))
  return sd


def generator_to_torch(params) -> dict:
  """Generator Flax params -> `torch_ref.Generator` state dict (dots for slashes, OIHW weights)."""
  torch = import_torch("exporting to PyTorch")
  sd = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params)):
    names = [p.key for p in path]
    arr = np.asarray(leaf, np.float32)
    if names[-1] == "kernel":
      names[-1], arr = "weight", arr.transpose(3, 2, 0, 1)
    sd[".".join(names)] = torch.from_numpy(np.array(arr, np.float32, order="C"))  # a writable copy
  return sd


def generator_from_state_dict(state_dict: dict, config, source: str = "state dict"):
  """`torch_ref.Generator` tensors -> Flax params of `config` (the inverse of generator_to_torch).

  Missing, unexpected or mis-shaped tensors are an InputError naming the key and both shapes.
  """
  abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  return _params_from_state_dict(state_dict, abstract, "model", source)


def discriminator_to_torch(params) -> dict:
  """Discriminator Flax params -> `torch_losses.MultiScaleDiscriminator` state dict."""
  return generator_to_torch(params)


def discriminator_from_state_dict(state_dict: dict, config, source: str = "state dict"):
  """`torch_losses.MultiScaleDiscriminator` tensors -> Flax params of `config` (DiscriminatorConfig)."""
  from sk_jax.nn.discriminator import init_discriminator

  abstract = jax.eval_shape(lambda: init_discriminator(config, jax.random.key(0)))
  return _params_from_state_dict(state_dict, abstract, "discriminator", source)


def _params_from_state_dict(state_dict: dict, abstract, what: str, source: str):
  """Flax-named torch tensors (dots for slashes, OIHW) -> params shaped as `abstract`."""
  tensors = unwrap_state_dict(state_dict, source)
  expected = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
    names = [p.key for p in path]
    shape = tuple(leaf.shape)
    if names[-1] == "kernel":
      names[-1], shape = "weight", (shape[3], shape[2], shape[0], shape[1])
    expected[".".join(names)] = (tuple(p.key for p in path), shape)
  for key in tensors:
    if key not in expected:
      raise InputError(
        f"{source}: unexpected tensor {key} with shape {tuple(tensors[key].shape)}, "
        f"not a parameter of this {what} config"
      )
  params: dict = {}
  for key, (flax_path, shape) in expected.items():
    if key not in tensors:
      raise InputError(f"{source}: missing {key} (expected shape {shape})")
    got = tuple(tensors[key].shape)
    if got != shape:
      raise InputError(f"{source}: {key} has shape {got}, expected {shape}")
    arr = _to_numpy(tensors[key], key, source)
    if flax_path[-1] == "kernel":
      arr = np.ascontiguousarray(arr.transpose(2, 3, 1, 0))
    node = params
    for name in flax_path[:-1]:
      node = node.setdefault(name, {})
    node[flax_path[-1]] = arr
  return params


def relative_error(ours, ref) -> tuple[float, float]:
  """(max |ours - ref|, that divided by max |ref|): relative to the tensor's range, not per element,
  so that near-zero entries (ReLU outputs) do not turn rounding noise into huge ratios."""
  ours = np.asarray(ours, np.float64)
  ref = np.asarray(ref, np.float64)
  if ours.shape != ref.shape:
    raise ValueError(f"shapes differ: {ours.shape} vs {ref.shape}")
  abs_err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
  scale = float(np.max(np.abs(ref))) if ref.size else 0.0
  return abs_err, abs_err / max(scale, np.finfo(np.float32).tiny)


def default_image(size: int) -> np.ndarray:
  """scikit-image's astronaut, resized to size x size (rounded down to a multiple of 8), in [0, 1]."""
  from skimage import data

  size = max(8, size - size % 8)
  img = images.resize_short_side(data.astronaut().astype(np.float32) / 255.0, size)
  return np.ascontiguousarray(img[:size, :size])


def compare_encoders(torch_state_dict: dict, params: dict, image: np.ndarray) -> list[dict]:
  """Runs `torch_ref.VGGEncoder` (loaded from the PyTorch tensors themselves) and the JAX
  encoder (from `params`) on one (H, W, 3) image; per tap: max abs and relative error."""
  from sk_jax.interop import torch_ref

  torch = import_torch("--verify")
  enc = torch_ref.VGGEncoder()
  enc.load_state_dict(
    {k: v for k, v in torch_state_dict.items() if k in enc.state_dict()}, strict=True
  )
  with torch.no_grad():
    ref = enc(torch.from_numpy(image[None].transpose(0, 3, 1, 2).copy()), taps=vgg.TAPS)
  with jax.default_matmul_precision("highest"):
    ours = vgg.vgg16_features(params, image[None])
  rows = []
  for tap in vgg.TAPS:
    abs_err, rel_err = relative_error(ours[tap], ref[tap].numpy().transpose(0, 2, 3, 1))
    rows.append(
      {"tap": tap, "shape": tuple(ours[tap].shape), "max_abs": abs_err, "max_rel": rel_err}
    )
  return rows
