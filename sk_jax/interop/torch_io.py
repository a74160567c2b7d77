"""PyTorch files: reading .pth/.pt/.bin and .safetensors weight files safely (weights only; a
pickle that would run code is refused), and `sk-jax export-torch` files (a generator with its
encoder for sk_jax.interop.torch_ref). The tensor layouts are sk_jax.interop.port's."""

from __future__ import annotations

import json
import os
import pickle
import re

import numpy as np

from sk_jax.errors import InputError
from sk_jax.interop import port
from sk_jax.io import images
from sk_jax.nn.generator import ModelConfig

# An sk-jax export holds the whole model: encoder.features.* and generator.*.
EXPORT_FORMAT = "sk-jax-torch"


EXPORT_VERSION = 1


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
  torch = port.import_torch(f"reading {path}")
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


def _vgg_tensors(obj, source: str):
  """Our own export holds the encoder under `encoder.`; anything else is taken as it is."""
  if isinstance(obj, dict) and obj.get("format") == EXPORT_FORMAT:
    sd = port.unwrap_state_dict(obj, source)
    return {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
  return obj


def vgg16_from_torch(path: str) -> dict:
  """A PyTorch VGG-16 checkpoint (.pth/.pt/.bin or .safetensors) -> encoder params (numpy, HWIO).

  The result is accepted by `sk_jax.vgg16_features` in place of `sk_jax.load_vgg16()`.
  `.pth` files are read with `torch.load(weights_only=True)`: a pickle that would
  run code is refused with an InputError, never executed.
  """
  obj, _ = read_torch_file(path)
  return port.vgg16_from_state_dict(_vgg_tensors(obj, path), source=os.fspath(path))


def export_torch(params, config, vgg_params, path: str) -> str:
  """Writes the whole model (encoder + generator + config) as a PyTorch file.

  `.pth`: {"format", "version", "model_config", "state_dict"} (plain types, loads with
  weights_only=True); `.safetensors`: the state dict with format and config in the metadata.
  Keys are `sk_jax.interop.torch_ref.StyleKernel`'s: `encoder.features.N.*`, `generator.*`.
  """
  torch = port.import_torch("exporting to PyTorch")
  sd = {
    **port.vgg16_to_torch(vgg_params, prefix="encoder.features."),
    **{f"generator.{k}": v for k, v in port.generator_to_torch(params).items()},
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
  """A file from `sk-jax export-torch` -> `sk_jax.interop.torch_ref.StyleKernel` in eval mode (weights-only
  loading): encoder and generator in plain PyTorch."""
  from sk_jax.interop import torch_ref  # imports torch

  params, config, vgg_params = read_export(path)
  model = torch_ref.StyleKernel(config)
  model.load_state_dict(
    {
      **port.vgg16_to_torch(vgg_params, prefix="encoder.features."),
      **{f"generator.{k}": v for k, v in port.generator_to_torch(params).items()},
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
    tensors = port.unwrap_state_dict(obj, path)
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
  params = port.generator_from_state_dict(gen, config, source=path)
  return params, config, port.vgg16_from_state_dict(enc, source=path)


def torch_vgg_state_dict(path: str) -> dict:
  """The torchvision-layout tensors of a file, as torch tensors (for --verify)."""
  torch = port.import_torch("--verify")
  obj, _ = read_torch_file(path)
  sd = port.unwrap_state_dict(_vgg_tensors(obj, path), path)
  if not any(k.startswith("features.") for k in sd):
    sd = {f"features.{k}": v for k, v in sd.items()}
  return {
    k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).float()
    for k, v in sd.items()
    if k.startswith("features.")
  }
