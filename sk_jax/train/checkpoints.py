"""Training checkpoints: WORKDIR/checkpoints/<step>/, written by an async Orbax CheckpointManager
with the items of ITEMS: the whole TrainState (G, D, both optimiser states, step, RNG), both grain
iterators' states and the config. `export_generator` reads only the generator's parameters out of
one and writes them as a generator directory (sk_jax.io.artifacts)."""

from __future__ import annotations

import glob
import json
import math
import os

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from sk_jax.errors import InputError, SaveError, describe, is_disk_full, one_line
from sk_jax.io import artifacts

# Read back what export_generator writes (tests, callers of this module).
from sk_jax.io.artifacts import load_generator  # noqa: F401
from sk_jax.nn.discriminator import DiscriminatorConfig
from sk_jax.nn.generator import ModelConfig, init_params

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


def read_config(mngr, step: int) -> dict:
  """The config JSON saved with checkpoint `step` (UnreadableCheckpoint if it cannot be read)."""
  try:
    return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  except Exception as e:
    raise UnreadableCheckpoint(
      f"{os.path.join(str(mngr.directory), str(step))}: unreadable config ({describe(e)})"
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
        f"{where}: unreadable, truncated or damaged ({describe(e)})"
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
      logging.warning("skipping checkpoint %s: %s", where, one_line(e))
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
      + "; ".join(f"{s}: {one_line(e)}" for s, e in bad)
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
  artifacts.remove_partial(
    os.path.join(glob.escape(str(mngr.directory)), "*.orbax-checkpoint-tmp*")
  )
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
    artifacts.remove_partial(
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
  artifacts.check_target(output, overwrite, inputs=[workdir])
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
          f"{where}: unreadable, truncated or damaged ({describe(e)}); choose another --step"
        ) from None
      raise InputError(
        f"{where}: does not match its own config ({str(e).splitlines()[0][:300]})"
      ) from None
  finally:
    mngr.close()
  return artifacts.save_generator(
    output, restored["state"]["g"]["params"], model, overwrite=overwrite
  )
