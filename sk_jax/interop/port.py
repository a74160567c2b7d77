"""PyTorch interop: VGG-16 weights in, encoder and generator weights out (and back).

The layer tables below are the whole mapping; names on the JAX side are the
Flax names (`conv4_1`, `alignment/gate/conv1`, `decoder/dec4_1`), on the PyTorch
side torchvision's (`features.17`) and `sk_jax.torch_ref`'s module paths
(`generator.alignment.gate.conv1`). Convolution kernels are HWIO in JAX and
OIHW in PyTorch; transposing is exact, so a round trip is bit-exact.

Commands: `sk-jax port-vgg16`, `sk-jax export-torch`, `sk-jax import-torch` (sk_jax/cli/interop.py).
"""

from __future__ import annotations

import json
import os
import pickle
import re

import jax
import numpy as np

from sk_jax.errors import InputError
from sk_jax.io import images
from sk_jax.nn import vgg
from sk_jax.nn.generator import ModelConfig, init_params

# torchvision's vgg16().features index of every convolution.
TORCH_INDEX = dict(zip(vgg.CONVS, (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)))
# An sk-jax export holds the whole model: encoder.features.* and generator.*.
EXPORT_FORMAT = "sk-jax-torch"
EXPORT_VERSION = 1
# relative error (max |jax - torch| / max |torch|) that `port-vgg16 --verify` accepts, float32.
VERIFY_TOLERANCE = 1e-4
_WRAPPERS = ("state_dict", "model")
_TORCH_HINT = "pip install 'sk-jax[torch]' (torch==2.13.0)"


def _import_torch(why: str):
  try:
    import torch
  except ImportError:
    raise InputError(f"{why} needs PyTorch: {_TORCH_HINT}") from None
  return torch


# --- reading PyTorch files --------------------------------------------------------------


def _refusal(path: str, err: Exception) -> InputError:
  """torch's weights-only refusal is a page of advice; keep the line that names the culprit."""
  text = str(err)
  m = re.search(
    r"(Unsupported global: GLOBAL \S+|Unsupported operand \d+|Unsupported class \S+)", text
  )
  culprit = m.group(1) if m else text.strip().splitlines()[-1][:160]
  return InputError(
    f"{path}: refused: the pickle would run code or build Python objects on load "
    f"({culprit}); only plain tensors are read (torch.load weights_only=True), "
    "nothing was executed; save model.state_dict() rather than the model object"
  )


def _looks_like_torch_file(path: str) -> bool:
  """torch.save writes a zip archive; files of torch < 1.6 and bare pickles start with a pickle
  protocol opcode (0x80). Anything else is not a PyTorch checkpoint, whatever torch.load says."""
  with open(path, "rb") as f:
    head = f.read(4)
  return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _load_pth(path: str):
  torch = _import_torch(f"reading {path}")
  if not _looks_like_torch_file(path):
    raise InputError(
      f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"
    )
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "Weights only load failed" in str(e):
      raise _refusal(path, e) from None
    raise InputError(f"{path}: not a PyTorch checkpoint ({str(e).splitlines()[0][:160]})") from None
  except Exception as e:  # torch.load raises almost any type for a damaged or foreign file.
    raise InputError(
      f"{path}: not a PyTorch checkpoint or truncated ({type(e).__name__}: "
      f"{str(e).splitlines()[0][:160] if str(e) else 'unreadable'})"
    ) from None


def _load_safetensors(path: str) -> tuple[dict, dict]:
  """(tensors as numpy, metadata); bfloat16 files go through torch when it is installed."""
  from safetensors import SafetensorError, safe_open

  try:
    import torch  # noqa: F401  (numpy has no bfloat16; torch reads every dtype)

    framework = "pt"
  except ImportError:
    framework = "np"
  try:
    with safe_open(path, framework=framework) as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise InputError(
      f"{path}: not a safetensors file or truncated ({str(e).splitlines()[0][:160]})"
    ) from None


def read_torch_file(path: str) -> tuple[dict, dict]:
  """Any supported PyTorch weight file -> (raw object, safetensors metadata or {})."""
  path = os.fspath(path)
  images.check_file(path, "a .pth/.pt/.bin or .safetensors file")
  if path.endswith(".safetensors"):
    return _load_safetensors(path)
  return _load_pth(path), {}


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


# --- VGG-16 ----------------------------------------------------------------------------


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


def _vgg_tensors(obj, source: str):
  """Our own export holds the encoder under `encoder.`; anything else is taken as it is."""
  if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
    sd = unwrap_state_dict(obj, source)
    return {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
  return obj


def vgg16_from_torch(path: str) -> dict:
  """A PyTorch VGG-16 checkpoint (.pth/.pt/.bin or .safetensors) -> encoder params (numpy, HWIO).

  The result is accepted by `sk_jax.vgg16_features` in place of `sk_jax.load_vgg16()`.
  `.pth` files are read with `torch.load(weights_only=True)`: a pickle that would
  run code is refused with an InputError, never executed.
  """
  obj, _ = read_torch_file(path)
  return vgg16_from_state_dict(_vgg_tensors(obj, path), source=os.fspath(path))


def vgg16_to_torch(params, prefix: str = "features.") -> dict:
  """Encoder params -> torchvision-layout state dict of torch tensors (OIHW), exact copies."""
  torch = _import_torch("exporting to PyTorch")
  vgg.check_params({k: dict(v) for k, v in params.items()}, "encoder params")
  sd = {}
  for name, idx in TORCH_INDEX.items():
    kernel = np.asarray(params[name]["kernel"], np.float32)
    sd[f"{prefix}{idx}.weight"] = torch.from_numpy(
      np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
    )
    sd[f"{prefix}{idx}.bias"] = torch.from_numpy(np.array(params[name]["bias"], np.float32))
  return sd


# --- the generator ---------------------------------------------------------------------


def generator_to_torch(params) -> dict:
  """Generator Flax params -> `torch_ref.Generator` state dict (dots for slashes, OIHW weights)."""
  torch = _import_torch("exporting to PyTorch")
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
  """Discriminator Flax params -> `torch_train.MultiScaleDiscriminator` state dict."""
  return generator_to_torch(params)


def discriminator_from_state_dict(state_dict: dict, config, source: str = "state dict"):
  """`torch_train.MultiScaleDiscriminator` tensors -> Flax params of `config` (DiscriminatorConfig)."""
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


def export_torch(params, config, vgg_params, path: str) -> str:
  """Writes the whole model (encoder + generator + config) as a PyTorch file.

  `.pth`: {"format", "version", "model_config", "state_dict"} (plain types, loads with
  weights_only=True); `.safetensors`: the state dict with format and config in the metadata.
  Keys are `sk_jax.torch_ref.StyleKernel`'s: `encoder.features.N.*`, `generator.*`.
  """
  torch = _import_torch("exporting to PyTorch")
  sd = {
    **vgg16_to_torch(vgg_params, prefix="encoder.features."),
    **{f"generator.{k}": v for k, v in generator_to_torch(params).items()},
  }
  path = os.path.abspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    if path.endswith(".safetensors"):
      from safetensors.torch import save_file

      save_file(
        sd,
        tmp,
        metadata={
          "format": EXPORT_FORMAT,
          "version": str(EXPORT_VERSION),
          "model_config": json.dumps(config.to_dict()),
        },
      )
    else:
      torch.save(
        {
          "format": EXPORT_FORMAT,
          "version": EXPORT_VERSION,
          "model_config": config.to_dict(),
          "state_dict": sd,
        },
        tmp,
      )
    os.replace(tmp, path)  # nothing half-written under the final name
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def is_export(path: str) -> bool:
  """True for a file that `export_torch` wrote (its header says so; nothing is unpickled): a
  safetensors file whose metadata names EXPORT_FORMAT, or a torch zip whose pickle holds it."""
  import struct
  import zipfile

  try:
    with open(path, "rb") as f:
      head = f.read(8)
      if zipfile.is_zipfile(f):
        with zipfile.ZipFile(f) as z:
          pickles = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
          return bool(pickles) and EXPORT_FORMAT.encode() in z.read(pickles[0])
      (size,) = struct.unpack("<Q", head) if len(head) == 8 else (0,)
      if not 0 < size <= 1 << 24:
        return False
      f.seek(8)
      header = json.loads(f.read(size))
  except (OSError, ValueError, zipfile.BadZipFile, struct.error):
    return False
  meta = header.get("__metadata__") if isinstance(header, dict) else None
  return isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT


def load_torch_model(path: str):
  """A file from `sk-jax export-torch` -> `sk_jax.torch_ref.StyleKernel` in eval mode (weights-only
  loading): encoder and generator in plain PyTorch."""
  from sk_jax.interop import torch_ref  # imports torch

  params, config, vgg_params = read_export(path)
  model = torch_ref.StyleKernel(config)
  model.load_state_dict(
    {
      **vgg16_to_torch(vgg_params, prefix="encoder.features."),
      **{f"generator.{k}": v for k, v in generator_to_torch(params).items()},
    }
  )
  return model.eval()


def read_export(path: str):
  """An `export_torch` file -> (generator params, ModelConfig, encoder params)."""

  obj, meta = read_torch_file(path)
  if meta:  # safetensors
    fmt, config_json = meta.get("format"), meta.get("model_config")
    try:
      config_dict = json.loads(config_json) if config_json else None
    except json.JSONDecodeError:
      raise InputError(f"{path}: metadata 'model_config' is not JSON") from None
    tensors = obj
  else:
    fmt = obj.get("format") if isinstance(obj, dict) else None
    config_dict = obj.get("model_config") if isinstance(obj, dict) else None
    tensors = unwrap_state_dict(obj, path)
  if fmt != EXPORT_FORMAT or not isinstance(config_dict, dict):
    raise InputError(
      f"{path}: not an sk-jax export (format {fmt!r}, expected {EXPORT_FORMAT!r} with a "
      "model_config); write one with `sk-jax export-torch`"
    )
  config = ModelConfig.from_dict(config_dict, source=f"{path}: model_config")
  gen = {k[len("generator.") :]: v for k, v in tensors.items() if k.startswith("generator.")}
  enc = {k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}
  other = sorted(set(tensors) - {f"generator.{k}" for k in gen} - {f"encoder.{k}" for k in enc})
  if other:
    raise InputError(
      f"{path}: unexpected tensor {other[0]} with shape {tuple(tensors[other[0]].shape)}"
    )
  params = generator_from_state_dict(gen, config, source=path)
  return params, config, vgg16_from_state_dict(enc, source=path)


# --- verification ----------------------------------------------------------------------


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

  torch = _import_torch("--verify")
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


def torch_vgg_state_dict(path: str) -> dict:
  """The torchvision-layout tensors of a file, as torch tensors (for --verify)."""
  torch = _import_torch("--verify")
  obj, _ = read_torch_file(path)
  sd = unwrap_state_dict(_vgg_tensors(obj, path), path)
  if not any(k.startswith("features.") for k in sd):
    sd = {f"features.{k}": v for k, v in sd.items()}
  return {
    k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).float()
    for k, v in sd.items()
    if k.startswith("features.")
  }
