"""Standalone Orbax checkpoints: the generator for `sk-jax stylize`, and ported VGG-16 weights.

A generator checkpoint is a directory with three Orbax items:
  meta          JSON {"format": "sk-jax-generator", "version": 1}
  model_config  JSON of sk_jax.ModelConfig
  params        the generator's Flax parameters (StandardSave)
Training checkpoints (sk_jax.train) hold more; `train.py --export` writes this format.
"""

from __future__ import annotations

import os
import shutil
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp

from sk_jax.errors import InputError

GENERATOR_FORMAT = "sk-jax-generator"
VGG16_FORMAT = "sk-jax-vgg16"
VERSION = 1


def _checkpointer():
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      meta=ocp.JsonCheckpointHandler(), model_config=ocp.JsonCheckpointHandler(),
      params=ocp.StandardCheckpointHandler()))


def _save(path: str, fmt: str, arrays, config: dict) -> str:
  """Writes {meta, config, arrays} next to `path`, then swaps it in, so a crash loses nothing."""
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
  with _checkpointer() as ckptr:
    ckptr.save(tmp, args=ocp.args.Composite(
        meta=ocp.args.JsonSave({"format": fmt, "version": VERSION}),
        model_config=ocp.args.JsonSave(config),
        params=ocp.args.StandardSave(arrays)))
  old = None
  if os.path.exists(path):
    old = f"{tmp}.old"
    os.rename(path, old)
  os.rename(tmp, path)
  if old:
    shutil.rmtree(old, ignore_errors=True)
  return path


def _read_json_item(path: str, item: str):
  with _checkpointer() as ckptr:
    return ckptr.restore(path, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


def _open(path: str, fmt: str, what: str) -> tuple[str, dict]:
  """Validates the directory and its meta; returns (abs path, model_config JSON)."""
  hint = ("write one with `sk-jax init --output DIR` or export one from training"
          if fmt == GENERATOR_FORMAT else "write one with `sk-jax port-vgg16`")
  if not os.path.exists(path):
    raise InputError(f"{path}: no such {what} directory ({hint})")
  if not os.path.isdir(path):
    raise InputError(f"{path}: not a directory; a {what} is an Orbax directory ({hint})")
  if not os.listdir(path):
    raise InputError(f"{path}: empty directory, not a {what} ({hint})")
  path = os.path.abspath(path)
  for item in ("meta", "model_config", "params"):
    if not os.path.isdir(os.path.join(path, item)):
      raise InputError(f"{path}: not a {what} (no '{item}' item; {hint})")
  try:
    meta = _read_json_item(path, "meta")
    config = _read_json_item(path, "model_config")
  except Exception as e:  # Orbax raises many types for a damaged directory.
    raise InputError(f"{path}: unreadable {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
  if not isinstance(meta, dict) or meta.get("format") != fmt:
    raise InputError(f"{path}: format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {fmt!r}")
  if meta.get("version") != VERSION:
    raise InputError(f"{path}: {what} version {meta.get('version')}, this sk-jax reads version {VERSION}")
  if not isinstance(config, dict):
    raise InputError(f"{path}: model_config is not a JSON object")
  return path, config


def _restore_arrays(path: str, abstract, what: str):
  """Restores `params` against the expected tree; a mismatch names the first differing leaf."""
  try:
    with _checkpointer() as ckptr:
      meta_tree = ckptr.metadata(path).item_metadata["params"]
  except Exception as e:
    raise InputError(f"{path}: unreadable {what} parameters ({type(e).__name__})") from None
  got = {jax.tree_util.keystr(k): tuple(getattr(v, "shape", ()))
         for k, v in jax.tree_util.tree_leaves_with_path(meta_tree)}
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(abstract)}
  for key in sorted(set(want) | set(got)):
    if key not in got:
      raise InputError(f"{path}: parameter {key} missing from the {what} (its config says it should exist)")
    if key not in want:
      raise InputError(f"{path}: unexpected parameter {key} in the {what}, which its model config does not have")
    if got[key] != want[key]:
      raise InputError(f"{path}: parameter {key} has shape {got[key]}, its model config implies {want[key]}")
  with _checkpointer() as ckptr:
    restored = ckptr.restore(path, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  return restored["params"]


def save_generator(path: str, params, config, dtype: str | None = None) -> str:
  """Writes a generator checkpoint (params + ModelConfig) that `sk-jax stylize` reads.

  dtype "bfloat16" stores the parameters in bfloat16, half the size; `load_generator`
  reads either and returns float32 (docs/interop.md has the output difference).
  """
  params = jax.tree.map(np.asarray, jax.device_get(params))
  if dtype not in (None, "float32", "bfloat16"):
    raise InputError(f"checkpoint dtype must be float32 or bfloat16, got {dtype!r}")
  if dtype == "bfloat16":
    params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
  return _save(path, GENERATOR_FORMAT, params, config.to_dict())


def load_generator(path: str, expected=None):
  """Reads a generator checkpoint -> (params, ModelConfig).

  `expected` (a ModelConfig) makes a checkpoint of another model config an
  InputError naming the differing fields.
  """
  from sk_jax.models.generator import ModelConfig, init_params

  path, config_json = _open(path, GENERATOR_FORMAT, "generator checkpoint")
  config = ModelConfig.from_dict(config_json, source=f"{path}: model_config")
  if expected is not None and config != expected:
    raise InputError(f"{path}: checkpoint of another model config ({'; '.join(expected.diff(config))})")
  abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  # The float32 target also widens a bfloat16 checkpoint (save_generator(dtype=...)).
  return _restore_arrays(path, abstract, "generator checkpoint"), config


def save_vgg16_dir(path: str, params, source: str = "") -> str:
  """Writes encoder parameters (from `sk_jax.port`) as an Orbax directory."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return _save(path, VGG16_FORMAT, params, {"source": source})


def load_vgg16_dir(path: str) -> dict:
  """Reads encoder parameters written by `save_vgg16_dir` (numpy arrays)."""
  from sk_jax.models import vgg

  path, _ = _open(path, VGG16_FORMAT, "VGG-16 weight directory")
  abstract = {name: {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
              for name, shapes in vgg.param_shapes().items()}
  params = _restore_arrays(path, abstract, "VGG-16 weight directory")
  return jax.tree.map(np.asarray, params)
