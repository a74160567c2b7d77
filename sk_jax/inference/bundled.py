"""The generator that ships inside the package, and the one place that turns a
`--checkpoint` value into (params, ModelConfig).

    from sk_jax.inference import bundled
    params, config = bundled.resolve("bundled")   # or None, or a checkpoint directory

A bundle is a directory of three files (sk_jax/assets/h200-dev-2500/ is the shipped one):
  params.npz          the generator's parameters, flattened with '/'-joined keys; bfloat16
                      arrays are stored as their uint16 bit patterns (numpy has no bfloat16)
  model_config.json   sk_jax.ModelConfig as JSON
  manifest.json       {"format", "version", "name", "dtype", "sha256": {file: hex digest}}
It is read with numpy alone (no Orbax, no network), and every file's SHA-256 is checked
against the manifest before anything is parsed. The model card is MODEL_CARD.md beside it.
"""

from __future__ import annotations

import json
import os

import numpy as np

from sk_jax.errors import InputError
from sk_jax.io import artifacts, files
from sk_jax.nn.generator import ModelConfig

BUNDLED = "bundled"
NAME = "h200-dev-2500"
DIRECTORY = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", NAME
)
FORMAT = "sk-jax-bundled-generator"
VERSION = 1
FILES = ("params.npz", "model_config.json")


def is_bundled(checkpoint: str | None) -> bool:
  """None, "" and "bundled" name the packaged generator (a directory called bundled is ./bundled)."""
  return not checkpoint or checkpoint == BUNDLED


def describe(checkpoint: str | None) -> str:
  """What a report calls this generator: the bundle's name or the checkpoint's absolute path."""
  return f"{BUNDLED} ({NAME})" if is_bundled(checkpoint) else os.path.abspath(checkpoint)


def resolve(checkpoint: str | None, expected: ModelConfig | None = None):
  """A `--checkpoint` value -> (params, ModelConfig): the bundled generator or an Orbax directory."""
  if is_bundled(checkpoint):
    params, config = load()
    if expected is not None and config != expected:
      raise InputError(
        f"bundled generator: another model config ({'; '.join(expected.diff(config))})"
      )
    return params, config
  return artifacts.load_generator(checkpoint, expected)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
  """uint16 bfloat16 bit patterns -> float32 (exact: bfloat16 is float32's upper half)."""
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _unflatten(flat: dict) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def load(directory: str | None = None):
  """Reads a bundle (default: the packaged one) -> (params as float32 numpy arrays, ModelConfig);
  InputError if any file is missing or its SHA-256 differs from the manifest's."""
  directory = directory or DIRECTORY
  where = f"bundled generator {directory}"
  manifest_path = os.path.join(directory, "manifest.json")
  try:
    with open(manifest_path) as f:
      manifest = json.load(f)
  except FileNotFoundError:
    raise InputError(
      f"{where}: no manifest.json (the package is incomplete; reinstall sk-jax)"
    ) from None
  except (OSError, ValueError) as e:
    raise InputError(f"{where}: unreadable manifest.json ({e})") from None
  if (
    not isinstance(manifest, dict)
    or manifest.get("format") != FORMAT
    or manifest.get("version") != VERSION
  ):
    raise InputError(f"{where}: manifest.json is not a version-{VERSION} {FORMAT!r} manifest")
  digests = manifest.get("sha256", {})
  for name in FILES:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise InputError(f"{where}: {name} is missing (reinstall sk-jax)")
    got = files.sha256_file(path)
    if got != digests.get(name):
      raise InputError(
        f"{where}: {name} fails its integrity check (SHA-256 {got[:16]}..., manifest "
        f"{str(digests.get(name))[:16]}...); the file is damaged, reinstall sk-jax"
      )
  with open(os.path.join(directory, "model_config.json")) as f:
    config = ModelConfig.from_dict(json.load(f), source=f"{where}: model_config.json")
  stored_bf16 = manifest.get("dtype") == "bfloat16"
  with np.load(os.path.join(directory, "params.npz"), allow_pickle=False) as npz:
    flat = {
      k: _bf16_to_f32(npz[k]) if stored_bf16 else npz[k].astype(np.float32) for k in npz.files
    }
  return _unflatten(flat), config


def write(
  directory: str, params, config: ModelConfig, dtype: str = "bfloat16", name: str = NAME
) -> str:
  """Writes `params` (a Flax tree) and `config` as a bundle; dtype "bfloat16" (rounded to nearest
  even) or "float32". Used once, by benchmarks/bundle_generator.py."""
  import jax
  import ml_dtypes

  if dtype not in ("bfloat16", "float32"):
    raise InputError(f"bundle dtype must be bfloat16 or float32, got {dtype!r}")
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    key = "/".join(str(getattr(p, "key", p)) for p in path)
    leaf = np.asarray(leaf, np.float32)
    flat[key] = leaf.astype(ml_dtypes.bfloat16).view(np.uint16) if dtype == "bfloat16" else leaf
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, "params.npz"), **flat)
  with open(os.path.join(directory, "model_config.json"), "w") as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True)
    f.write("\n")
  manifest = {
    "format": FORMAT,
    "version": VERSION,
    "name": name,
    "dtype": dtype,
    "sha256": {n: files.sha256_file(os.path.join(directory, n)) for n in FILES},
  }
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
  return directory
