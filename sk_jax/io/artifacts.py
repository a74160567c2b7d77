"""The artifacts inference reads: generator checkpoints and VGG-16 weight directories, with their checks.

A generator checkpoint (what `sk-jax stylize` reads) is a directory with three Orbax items:
  meta          JSON {"format": "sk-jax-generator", "version": 1, "sha256": checksum of params}
  model_config  JSON of sk_jax.ModelConfig
  params        the generator's Flax parameters (StandardSave)
A VGG-16 weight directory (`sk-jax port-vgg16`) has the same layout with format "sk-jax-vgg16".
Writers never replace what they did not write: an existing non-empty directory must be one of
these checkpoints, and is replaced (atomically) only with `overwrite=True`. Readers verify the
checksum (a meta item without one is refused).

Training checkpoints are sk_jax.train.checkpoints'; it exports their generator as a generator
checkpoint with `save_generator`.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import time
import uuid

import jax
import numpy as np

from sk_jax.errors import InputError, SaveError, describe, is_disk_full
from sk_jax.io import files
from sk_jax.nn import vgg
from sk_jax.nn.generator import ModelConfig, init_params

# Orbax (0.6 s to import) is imported where it is used, so that `sk-jax stylize` and `Stylizer`
# with the bundled generator never load it.
GENERATOR_FORMAT, VGG16_FORMAT = files.CHECKPOINT_FORMATS


VERSION = 1


def _checkpointer():
  import orbax.checkpoint as ocp

  return ocp.Checkpointer(
    ocp.CompositeCheckpointHandler(
      meta=ocp.JsonCheckpointHandler(),
      model_config=ocp.JsonCheckpointHandler(),
      params=ocp.StandardCheckpointHandler(),
    )
  )


def params_checksum(arrays) -> str:
  """SHA-256 over every leaf (key path, dtype, shape and bytes, in tree order), as saved."""
  h = hashlib.sha256()
  for key, leaf in jax.tree_util.tree_leaves_with_path(arrays):
    a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
    h.update(f"{jax.tree_util.keystr(key)}|{a.dtype.name}|{a.shape};".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def check_target(path: str, overwrite: bool = False, inputs=()) -> None:
  """InputError unless `path` may be written: missing, an empty directory, or (with `overwrite`)
  a checkpoint of ours; never an input. A file or a directory holding anything else is never
  replaced (`sk_jax.io.files.check_outputs`)."""
  files.check_outputs([files.checkpoint(path)], inputs, overwrite)


def remove_partial(pattern: str, settle_s: float = 0.5, limit_s: float = 30.0) -> None:
  """Removes what a failed write left, waiting for writer threads that are still finishing (when one
  item fails, Orbax's other items keep writing for a moment): until nothing matches for `settle_s`."""
  deadline, quiet_since = time.monotonic() + limit_s, None
  while time.monotonic() < deadline:
    found = glob.glob(pattern)
    for path in found:
      shutil.rmtree(path, ignore_errors=True)
    now = time.monotonic()
    if found:
      quiet_since = None
    elif quiet_since is None:
      quiet_since = now
    elif now - quiet_since >= settle_s:
      return
    time.sleep(0.05)


def _remove_stale_temporaries(parent: str, name: str) -> None:
  """Temporaries of earlier writes to the same target that were killed before their swap."""
  for stale in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.tmp-*")):
    shutil.rmtree(stale, ignore_errors=True)


def _save(path: str, fmt: str, arrays, config: dict, *, overwrite: bool = False) -> str:
  """Writes {meta, config, arrays} next to `path`, then swaps it in, so a crash loses nothing.

  A full disk is a SaveError naming `path`; the temporary is removed and `path` is untouched.
  """
  import orbax.checkpoint as ocp

  check_target(path, overwrite)
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  _remove_stale_temporaries(parent, os.path.basename(path))
  tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
  try:
    with _checkpointer() as ckptr:
      ckptr.save(
        tmp,
        args=ocp.args.Composite(
          meta=ocp.args.JsonSave(
            {"format": fmt, "version": VERSION, "sha256": params_checksum(arrays)}
          ),
          model_config=ocp.args.JsonSave(config),
          params=ocp.args.StandardSave(arrays),
        ),
      )
  except Exception as e:
    remove_partial(glob.escape(tmp) + "*")  # also Orbax's own "*.orbax-checkpoint-tmp"
    if is_disk_full(e):
      raise SaveError(f"{path}: no space left on the device; nothing was written") from None
    raise
  old = None
  if os.path.isdir(path):
    old = f"{tmp}.old"
    os.rename(path, old)
  os.rename(tmp, path)
  if old:
    shutil.rmtree(old, ignore_errors=True)
  return path


def _read_json_item(path: str, item: str):
  import orbax.checkpoint as ocp

  with _checkpointer() as ckptr:
    return ckptr.restore(path, args=ocp.args.Composite(**{item: ocp.args.JsonRestore()}))[item]


def _open(path: str, fmt: str, what: str) -> tuple[str, dict]:
  """Validates the directory and its meta; returns (abs path, model_config JSON)."""
  hint = (
    "write one with `sk-jax init --output DIR` or export one from training"
    if fmt == GENERATOR_FORMAT
    else "write one with `sk-jax port-vgg16`"
  )
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
    raise InputError(f"{path}: unreadable {what} ({describe(e)})") from None
  if not isinstance(meta, dict) or meta.get("format") != fmt:
    raise InputError(
      f"{path}: format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {fmt!r}"
    )
  if meta.get("version") != VERSION:
    raise InputError(
      f"{path}: {what} version {meta.get('version')}, this sk-jax reads version {VERSION}"
    )
  if not isinstance(meta.get("sha256"), str):
    raise InputError(
      f"{path}: the {what} has no parameter checksum in its meta item (written before sk-jax "
      "checked them); write it again with this version"
    )
  if not isinstance(config, dict):
    raise InputError(f"{path}: model_config is not a JSON object")
  return path, config


def _check_readable(path: str, what: str) -> None:
  """Reads every stored value of the params item once, synchronously, one at a time: a truncated
  or missing file is an InputError here, before Orbax's concurrent restore, whose other reads
  would otherwise still complete into its closed event loop (an asyncio traceback after the
  error)."""
  import tensorstore as ts

  params_dir = os.path.join(path, "params")
  if not os.path.isfile(os.path.join(params_dir, "manifest.ocdbt")):
    return  # not OCDBT: Orbax reads (and reports) it
  try:
    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{params_dir}/"}).result()
    for key in kv.list().result():
      kv.read(key).result()
  except Exception as e:  # TensorStore reports a short read as ValueError: OUT_OF_RANGE
    raise InputError(
      f"{path}: unreadable {what} parameters, truncated or damaged ({describe(e, 160)})"
    ) from None


def _restore_arrays(path: str, abstract, what: str):
  """Restores `params` against the expected tree; a mismatch names the first differing leaf."""
  import orbax.checkpoint as ocp

  try:
    with _checkpointer() as ckptr:
      meta_tree = ckptr.metadata(path).item_metadata["params"]
  except Exception as e:
    raise InputError(f"{path}: unreadable {what} parameters ({type(e).__name__})") from None
  got = {
    jax.tree_util.keystr(k): tuple(getattr(v, "shape", ()))
    for k, v in jax.tree_util.tree_leaves_with_path(meta_tree)
  }
  want = {
    jax.tree_util.keystr(k): tuple(v.shape)
    for k, v in jax.tree_util.tree_leaves_with_path(abstract)
  }
  for key in sorted(set(want) | set(got)):
    if key not in got:
      raise InputError(
        f"{path}: parameter {key} missing from the {what} (its config says it should exist)"
      )
    if key not in want:
      raise InputError(
        f"{path}: unexpected parameter {key} in the {what}, which its model config does not have"
      )
    if got[key] != want[key]:
      raise InputError(
        f"{path}: parameter {key} has shape {got[key]}, its model config implies {want[key]}"
      )
  # Restored in the saved dtypes (the checksum is over those), then cast to the expected ones.
  saved_dtype = {
    jax.tree_util.keystr(k): getattr(v, "dtype", None)
    for k, v in jax.tree_util.tree_leaves_with_path(meta_tree)
  }
  as_saved = jax.tree_util.tree_map_with_path(
    lambda k, a: jax.ShapeDtypeStruct(a.shape, saved_dtype[jax.tree_util.keystr(k)] or a.dtype),
    abstract,
  )
  _check_readable(path, what)
  try:
    with _checkpointer() as ckptr:
      params = ckptr.restore(
        path, args=ocp.args.Composite(params=ocp.args.StandardRestore(as_saved))
      )["params"]
  except Exception as e:  # truncated or missing array files: TensorStore raises several types
    raise InputError(
      f"{path}: unreadable {what} parameters, truncated or damaged ({describe(e, 160)})"
    ) from None
  meta = _read_json_item(path, "meta")
  if params_checksum(params) != meta["sha256"]:
    raise InputError(
      f"{path}: the {what}'s parameters do not match the checksum in its meta item "
      "(damaged file); restore it from a backup or export it again"
    )
  return jax.tree.map(lambda x, a: x if x.dtype == a.dtype else x.astype(a.dtype), params, abstract)


def save_generator(
  path: str, params, config, dtype: str | None = None, *, overwrite: bool = False
) -> str:
  """Writes a generator checkpoint (params + ModelConfig) that `sk-jax stylize` reads.

  dtype "bfloat16" stores the parameters in bfloat16, half the size; `load_generator`
  reads either and returns float32 (docs/interop.md has the output difference).
  `path` must be new, empty, or (with `overwrite`) an sk-jax checkpoint; else InputError.
  """
  params = jax.tree.map(np.asarray, jax.device_get(params))
  if dtype not in (None, "float32", "bfloat16"):
    raise InputError(f"checkpoint dtype must be float32 or bfloat16, got {dtype!r}")
  if dtype == "bfloat16":
    params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
  return _save(path, GENERATOR_FORMAT, params, config.to_dict(), overwrite=overwrite)


def load_generator(path: str, expected=None):
  """Reads a generator checkpoint -> (params, ModelConfig).

  `expected` (a ModelConfig) makes a checkpoint of another model config an
  InputError naming the differing fields.
  """
  path, config_json = _open(path, GENERATOR_FORMAT, "generator checkpoint")
  config = ModelConfig.from_dict(config_json, source=f"{path}: model_config")
  if expected is not None and config != expected:
    raise InputError(
      f"{path}: checkpoint of another model config ({'; '.join(expected.diff(config))})"
    )
  abstract = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  # The float32 target also widens a bfloat16 checkpoint (save_generator(dtype=...)).
  return _restore_arrays(path, abstract, "generator checkpoint"), config


def save_vgg16_dir(path: str, params, source: str = "", *, overwrite: bool = False) -> str:
  """Writes encoder parameters (from `sk_jax.interop.port`) as an Orbax directory (`overwrite` as in save_generator)."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return _save(path, VGG16_FORMAT, params, {"source": source}, overwrite=overwrite)


def load_vgg16_dir(path: str) -> dict:
  """Reads encoder parameters written by `save_vgg16_dir` (numpy arrays)."""
  path, _ = _open(path, VGG16_FORMAT, "VGG-16 weight directory")
  abstract = {
    name: {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
    for name, shapes in vgg.param_shapes().items()
  }
  params = _restore_arrays(path, abstract, "VGG-16 weight directory")
  return jax.tree.map(np.asarray, params)
