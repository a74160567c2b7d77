"""Every checkpoint sk-jax reads or writes, and the checks that come with them.

A generator checkpoint (what `sk-jax stylize` reads) is a directory with three Orbax items:
  meta          JSON {"format": "sk-jax-generator", "version": 1, "sha256": checksum of params}
  model_config  JSON of sk_jax.ModelConfig
  params        the generator's Flax parameters (StandardSave)
A VGG-16 weight directory (`sk-jax port-vgg16`) has the same layout with format "sk-jax-vgg16".
Writers never replace what they did not write: an existing non-empty directory must be one of
these checkpoints, and is replaced (atomically) only with `overwrite=True`. Readers verify the
checksum when the meta item has one (checkpoints written before it was added have none).

Training checkpoints live in WORKDIR/checkpoints/<step>/, written by an async Orbax
CheckpointManager with the items of ITEMS: the whole TrainState (G, D, both optimiser
states, step, RNG), both grain iterators' states and the config. `export_generator`
reads only the generator's parameters out of one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import time
import uuid

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from sk_jax.errors import InputError, SaveError, is_disk_full
from sk_jax.io import files
from sk_jax.nn import vgg
from sk_jax.nn.discriminator import DiscriminatorConfig
from sk_jax.nn.generator import ModelConfig, init_params

GENERATOR_FORMAT, VGG16_FORMAT = files.CHECKPOINT_FORMATS
VERSION = 1


def _checkpointer():
  return ocp.Checkpointer(
    ocp.CompositeCheckpointHandler(
      meta=ocp.JsonCheckpointHandler(),
      model_config=ocp.JsonCheckpointHandler(),
      params=ocp.StandardCheckpointHandler(),
    )
  )


OVERWRITE_HELP = "replace an existing sk-jax checkpoint directory (anything else is never replaced)"


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
  replaced (`sk_jax.files.check_outputs`)."""
  files.check_outputs([files.checkpoint(path)], inputs, overwrite)


def _remove_partial(pattern: str, settle_s: float = 0.5, limit_s: float = 30.0) -> None:
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
    _remove_partial(glob.escape(tmp) + "*")  # also Orbax's own "*.orbax-checkpoint-tmp"
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
    raise InputError(
      f"{path}: unreadable {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    ) from None
  if not isinstance(meta, dict) or meta.get("format") != fmt:
    raise InputError(
      f"{path}: format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {fmt!r}"
    )
  if meta.get("version") != VERSION:
    raise InputError(
      f"{path}: {what} version {meta.get('version')}, this sk-jax reads version {VERSION}"
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
      f"{path}: unreadable {what} parameters, truncated or damaged "
      f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    ) from None


def _restore_arrays(path: str, abstract, what: str):
  """Restores `params` against the expected tree; a mismatch names the first differing leaf."""
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
      f"{path}: unreadable {what} parameters, truncated or damaged "
      f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    ) from None
  meta = _read_json_item(path, "meta")
  if meta.get("sha256") and params_checksum(params) != meta["sha256"]:
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
  """Writes encoder parameters (from `sk_jax.port`) as an Orbax directory (`overwrite` as in save_generator)."""
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


# ----------------------------------------------------------------------------- training checkpoints

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("state", "content_iter", "style_iter", "config")


class _IteratorSnapshot:
  """A grain iterator's state captured now; the (synchronous) grain handler writes it later."""

  def __init__(self, iterator):
    self._state = json.dumps(iterator.get_state()).encode()

  def get_state(self) -> bytes:
    return self._state


def make_manager(workdir: str, ckpt_cfg, read_only: bool = False) -> ocp.CheckpointManager:
  """Async Orbax manager under WORKDIR/checkpoints: keeps the last `keep` (+ the best, if configured)."""
  policies = [ocp.checkpoint_managers.LatestN(n=int(ckpt_cfg.keep))]
  if ckpt_cfg.get("best_metric"):
    name, lower_is_better = ckpt_cfg.best_metric, ckpt_cfg.best_mode == "min"
    worst = math.inf if lower_is_better else -math.inf  # e.g. loss/d before the first D step
    policies.append(
      ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m.get(name, worst),
        reverse=lower_is_better,
        n=1,
        keep_checkpoints_without_metrics=False,
      )
    )
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=int(ckpt_cfg.every),
    enable_async_checkpointing=True,
    cleanup_tmp_directories=True,
    read_only=read_only,
    create=not read_only,
    # Saves wait for the previous one instead of being skipped while it is in flight.
    enable_should_save_is_saving_in_progress_check=False,
    preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR), options=options, item_names=ITEMS
  )


class UnreadableCheckpoint(InputError):
  """A training checkpoint whose files cannot be read (truncated, damaged); an older one may be."""


_READ_ERROR_MARKS = (
  "DATA_LOSS",
  "OUT_OF_RANGE",
  "Error reading",
  "Failed to json parse",
  "Unterminated",
  "Expecting",
  "corrupt",
  "truncated",
)


def _is_read_error(e: BaseException) -> bool:
  """Damaged files (vs a checkpoint of another structure, which Orbax reports as a ValueError)."""
  if not isinstance(e, ValueError):
    return True  # TensorStore's and the file system's errors, KeyError of a missing item, ...
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, (json.JSONDecodeError, OSError)) or any(
      m in str(e) for m in _READ_ERROR_MARKS
    ):
      return True
    e = e.__cause__ or e.__context__
  return False


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def read_config(mngr, step: int) -> dict:
  """The config JSON saved with checkpoint `step` (UnreadableCheckpoint if it cannot be read)."""
  try:
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception as e:
    raise UnreadableCheckpoint(
      f"{os.path.join(str(mngr.directory), str(step))}: unreadable config ({_first_line(e)})"
    ) from None


def _saved_model_configs(saved_cfg: dict, where: str) -> tuple[ModelConfig, DiscriminatorConfig]:
  if not isinstance(saved_cfg, dict) or not isinstance(saved_cfg.get("model"), dict):
    raise InputError(f"{where}: the checkpoint's config has no model group")
  return (
    ModelConfig.from_dict(saved_cfg["model"], source=f"{where}: model"),
    DiscriminatorConfig.from_dict(saved_cfg.get("disc", {}), source=f"{where}: disc"),
  )


def check_compatible(
  saved_cfg: dict, model: ModelConfig, disc: DiscriminatorConfig, cfg, where: str
) -> None:
  """Refuses a checkpoint of another model or discriminator, naming the differing fields."""
  saved_model, saved_disc = _saved_model_configs(saved_cfg, where)
  diffs = model.diff(saved_model) + disc.diff(saved_disc)
  if diffs:
    raise InputError(
      f"{where}: checkpoint of another model config ({'; '.join(diffs)}; "
      "this run's value first); use another --workdir"
    )
  others = []
  for group in ("loss", "opt", "data", "train"):
    now, then = cfg[group].to_dict(), saved_cfg.get(group, {})
    others += [f"{group}.{k}" for k in now if k in then and then[k] != now[k]]
  if others:
    logging.warning("resuming with changed settings: %s", ", ".join(others))


def restore(mngr, abstract_state, step: int, content_it=None, style_it=None):
  """Restores the state (and, given them, the data iterators in place) of checkpoint `step`.

  abstract_state: ShapeDtypeStructs with the target shardings.
  """
  where = os.path.join(str(mngr.directory), str(step))
  args = {"state": ocp.args.StandardRestore(abstract_state)}
  if content_it is not None:
    args["content_iter"] = grain.checkpoint.CheckpointRestore(content_it)
    args["style_iter"] = grain.checkpoint.CheckpointRestore(style_it)
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:
    if _is_read_error(e):
      raise UnreadableCheckpoint(
        f"{where}: unreadable, truncated or damaged ({_first_line(e)})"
      ) from None
    raise InputError(
      f"{where}: does not match this config ({str(e).splitlines()[0][:300]})"
    ) from None
  return restored["state"]


UNREADABLE_DIR = "unreadable_checkpoints"


def restore_newest(
  mngr,
  abstract_state,
  model: ModelConfig,
  disc: DiscriminatorConfig,
  cfg,
  content_it=None,
  style_it=None,
):
  """Restores the newest checkpoint that can be read -> (state, step), or (None, None) if none exists.

  A checkpoint that cannot be read is skipped with a one-line warning and moved (never deleted)
  to WORKDIR/unreadable_checkpoints/, so that training can save that step again; one of
  another model is an InputError. None readable -> UnreadableCheckpoint listing why.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  bad = []
  for step in steps:
    where = os.path.join(str(mngr.directory), str(step))
    try:
      check_compatible(read_config(mngr, step), model, disc, cfg, where)
      state = restore(mngr, abstract_state, step, content_it, style_it)
    except UnreadableCheckpoint as e:
      logging.warning("skipping checkpoint %s: %s", where, " ".join(str(e).split()))
      bad.append((step, e))
      continue
    if bad and jax.process_index() == 0:
      _set_aside(mngr, [s for s, _ in bad])
    if bad:
      mngr.reload()
      logging.warning(
        "resumed from the older checkpoint %s; the unreadable ones are kept in %s",
        where,
        os.path.join(os.path.dirname(str(mngr.directory)), UNREADABLE_DIR),
      )
    return state, step
  if bad:
    raise UnreadableCheckpoint(
      f"{mngr.directory}: no readable checkpoint ("
      + "; ".join(f"{s}: {' '.join(str(e).split())}" for s, e in bad)
      + "); move that directory away to start afresh"
    )
  return None, None


def _set_aside(mngr, steps) -> None:
  aside = os.path.join(os.path.dirname(str(mngr.directory)), UNREADABLE_DIR)
  os.makedirs(aside, exist_ok=True)
  for step in steps:
    target, n = os.path.join(aside, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(aside, f"{step}.{n}"), n + 1
    os.rename(os.path.join(str(mngr.directory), str(step)), target)


def _disk_full_error(mngr, e: BaseException, step=None) -> SaveError:
  """Removes the half-written step(s) and names the directory; the complete checkpoints stay."""
  _remove_partial(os.path.join(glob.escape(str(mngr.directory)), "*.orbax-checkpoint-tmp*"))
  what = f"checkpoint {step}" if step is not None else "a checkpoint"
  return SaveError(
    f"{mngr.directory}: no space left on the device while saving {what}; the earlier "
    "checkpoints are intact: free space and run the same command again to resume"
  )


def close(mngr, save_failed: bool = False) -> None:
  """Closes the manager. After a failed save, the half-written step is removed once more:
  `_disk_full_error` removed it while Orbax's other writer threads could still be finishing, and
  on a loaded machine they can recreate it after its settle time; closed, none is left."""
  mngr.close()
  if save_failed:
    _remove_partial(
      os.path.join(glob.escape(str(mngr.directory)), "*.orbax-checkpoint-tmp*"), settle_s=0.0
    )


def wait(mngr) -> None:
  """Waits for the asynchronous save in flight; a full disk -> SaveError (see `save`)."""
  try:
    mngr.wait_until_finished()
  except Exception as e:
    if is_disk_full(e):
      raise _disk_full_error(mngr, e) from None
    raise


def save(mngr, step: int, state, content_it, style_it, cfg, metrics=None, force=False) -> bool:
  """Starts an asynchronous save of everything a resume needs (the arrays are copied first).

  A full disk, here or in the previous save still in flight, is a SaveError: the half-written
  step is removed and the complete checkpoints are left as they were.
  """
  try:
    return mngr.save(
      step,
      metrics=metrics,
      force=force,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        content_iter=grain.checkpoint.CheckpointSave(_IteratorSnapshot(content_it)),
        style_iter=grain.checkpoint.CheckpointSave(_IteratorSnapshot(style_it)),
        config=ocp.args.JsonSave(json.loads(cfg.to_json_best_effort())),
      ),
    )
  except Exception as e:
    if is_disk_full(e):
      raise _disk_full_error(mngr, e, step) from None
    raise


def export_generator(
  workdir: str, output: str, step: int | None = None, *, overwrite: bool = False
) -> str:
  """Writes the generator of a training checkpoint in the format `sk-jax stylize` reads.

  Reads only the generator's parameters (not D, the optimiser states or the data iterators).
  `output` must be new, empty, or (with `overwrite`) an sk-jax checkpoint.
  """
  check_target(output, overwrite, inputs=[workdir])
  ckpt_dir = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    raise InputError(f"{workdir}: no training checkpoints (expected {ckpt_dir})")
  mngr = ocp.CheckpointManager(
    ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True, create=False), item_names=ITEMS
  )
  try:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise InputError(
        f"{ckpt_dir}: no complete checkpoint{'' if step is None else f' at step {step}'}"
      )
    where = os.path.join(ckpt_dir, str(step))
    model, _ = _saved_model_configs(read_config(mngr, step), where)
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    target = {"g": {"params": abstract}}
    try:
      restored = mngr.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
            target,
            restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True,
          )
        ),
      )
    except Exception as e:
      if _is_read_error(e):
        raise UnreadableCheckpoint(
          f"{where}: unreadable, truncated or damaged ({_first_line(e)}); choose another --step"
        ) from None
      raise InputError(
        f"{where}: does not match its own config ({str(e).splitlines()[0][:300]})"
      ) from None
  finally:
    mngr.close()
  return save_generator(output, restored["state"]["g"]["params"], model, overwrite=overwrite)
