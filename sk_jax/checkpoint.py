"""Every checkpoint sk-jax reads or writes, and the checks that come with them.

A generator checkpoint (what `sk-jax stylize` reads) is a directory with three Orbax items:
  meta          JSON {"format": "sk-jax-generator", "version": 1}
  model_config  JSON of sk_jax.ModelConfig
  params        the generator's Flax parameters (StandardSave)
A VGG-16 weight directory (`sk-jax port-vgg16`) has the same layout with format "sk-jax-vgg16".

Training checkpoints live in WORKDIR/checkpoints/<step>/, written by an async Orbax
CheckpointManager with the items of ITEMS: the whole TrainState (G, D, both optimiser
states, step, RNG), both grain iterators' states and the config. `export_generator`
reads only the generator's parameters out of one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from sk_jax.errors import InputError
from sk_jax.models import vgg
from sk_jax.models.discriminator import DiscriminatorConfig
from sk_jax.models.generator import ModelConfig, init_params

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
  path, _ = _open(path, VGG16_FORMAT, "VGG-16 weight directory")
  abstract = {name: {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}
              for name, shapes in vgg.param_shapes().items()}
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
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m.get(name, worst), reverse=lower_is_better, n=1,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=int(ckpt_cfg.every), enable_async_checkpointing=True,
      cleanup_tmp_directories=True, read_only=read_only, create=not read_only,
      # Saves wait for the previous one instead of being skipped while it is in flight.
      enable_should_save_is_saving_in_progress_check=False,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                               options=options, item_names=ITEMS)


def read_config(mngr, step: int) -> dict:
  """The config JSON saved with checkpoint `step`."""
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]


def _saved_model_configs(saved_cfg: dict, where: str) -> tuple[ModelConfig, DiscriminatorConfig]:
  if not isinstance(saved_cfg, dict) or not isinstance(saved_cfg.get("model"), dict):
    raise InputError(f"{where}: the checkpoint's config has no model group")
  return (ModelConfig.from_dict(saved_cfg["model"], source=f"{where}: model"),
          DiscriminatorConfig.from_dict(saved_cfg.get("disc", {}), source=f"{where}: disc"))


def check_compatible(saved_cfg: dict, model: ModelConfig, disc: DiscriminatorConfig, cfg,
                     where: str) -> None:
  """Refuses a checkpoint of another model or discriminator, naming the differing fields."""
  saved_model, saved_disc = _saved_model_configs(saved_cfg, where)
  diffs = model.diff(saved_model) + disc.diff(saved_disc)
  if diffs:
    raise InputError(f"{where}: checkpoint of another model config ({'; '.join(diffs)}; "
                     "this run's value first); use another --workdir")
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
  except ValueError as e:
    raise InputError(f"{where}: does not match this config ({str(e).splitlines()[0][:300]})") from None
  return restored["state"]


def save(mngr, step: int, state, content_it, style_it, cfg, metrics=None, force=False) -> bool:
  """Starts an asynchronous save of everything a resume needs (the arrays are copied first)."""
  return mngr.save(step, metrics=metrics, force=force, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      content_iter=grain.checkpoint.CheckpointSave(_IteratorSnapshot(content_it)),
      style_iter=grain.checkpoint.CheckpointSave(_IteratorSnapshot(style_it)),
      config=ocp.args.JsonSave(json.loads(cfg.to_json_best_effort()))))


def export_generator(workdir: str, output: str, step: int | None = None) -> str:
  """Writes the generator of a training checkpoint in the format `sk-jax stylize` reads.

  Reads only the generator's parameters (not D, the optimiser states or the data iterators).
  """
  ckpt_dir = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_dir):
    raise InputError(f"{workdir}: no training checkpoints (expected {ckpt_dir})")
  mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
                               item_names=ITEMS)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None or step not in mngr.all_steps():
      raise InputError(f"{ckpt_dir}: no complete checkpoint{'' if step is None else f' at step {step}'}")
    where = os.path.join(ckpt_dir, str(step))
    model, _ = _saved_model_configs(read_config(mngr, step), where)
    abstract = jax.eval_shape(lambda: init_params(model, jax.random.key(0)))
    target = {"g": {"params": abstract}}
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))
    except ValueError as e:
      raise InputError(f"{where}: does not match its own config ({str(e).splitlines()[0][:300]})") from None
  finally:
    mngr.close()
  return save_generator(output, restored["state"]["g"]["params"], model)
