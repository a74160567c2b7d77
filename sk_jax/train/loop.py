"""The training loop (Sec. 4): `train(cfg, workdir)` runs the paper's recipe from a config.

`python train.py` / `sk-jax train` are thin wrappers around it. It builds the jitted step
(sk_jax.train.step), streams the data (sk_jax.train.data), resumes from and writes training
checkpoints (sk_jax.train.checkpoints), logs (sk_jax.train.logger), evaluates while training
(sk_jax.train.train_eval) and, at the end, exports the generator for `sk-jax stylize`. The host
stops the run after `opt.max_nonfinite` non-finite updates in a row, without saving, so the
last checkpoint is the last good state.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from absl import logging

from sk_jax.config import validate_config
from sk_jax.errors import NonFiniteError, SaveError, is_disk_full
from sk_jax.io import artifacts, files, weights
from sk_jax.train import checkpoints, data, preemption, sharding, throughput, train_eval
from sk_jax.train import workdir as workdir_lock
from sk_jax.train.logger import MetricLogger, sample_grid
from sk_jax.train.step import make_setup

EXPORT_DIR = "generator"


# ----------------------------------------------------------------------------- the loop


def train(cfg, workdir: str, devices=None) -> dict:
  """Trains (or resumes) in `workdir`; returns the last logged metrics.

  Bad config, data or checkpoint -> InputError before anything compiles. Writes
  WORKDIR/checkpoints (Orbax), metrics.jsonl, tensorboard/, samples/*.png and, at
  the end of a single-process run, the generator for `sk-jax stylize` in WORKDIR/generator.
  Holds WORKDIR/.lock while it runs (a second trainer -> InputError naming the PID); resumes
  from the newest readable checkpoint; a full disk -> SaveError, earlier checkpoints intact.
  """
  models = validate_config(cfg)
  sources = data.open_sources(cfg.data)  # bad data paths fail before any device is touched
  sharding.maybe_initialize_distributed(cfg.mesh)
  workdir_lock.create(workdir)
  # One trainer per workdir (per host; process 0 owns it): a second one refuses, naming the PID.
  with workdir_lock.lock(workdir, enabled=jax.process_index() == 0):
    return _train(cfg, workdir, devices, models, sources)


def _train(cfg, workdir: str, devices, models, sources) -> dict:
  # Fails now, not at the end: WORKDIR/generator is replaced only when it is one of ours.
  files.check_outputs([files.checkpoint(os.path.join(workdir, EXPORT_DIR))], overwrite=True)
  mesh = sharding.make_mesh(cfg.mesh, devices)
  setup = make_setup(cfg, mesh, models)
  pidx, pcount = jax.process_index(), jax.process_count()
  content_ds, style_ds = data.build_streams(cfg.data, sources, int(cfg.seed), pidx, pcount)
  content_it, style_it = iter(content_ds), iter(style_ds)
  vgg_params = jax.device_put(
    weights.load_vgg16(setup.model.vgg_weights), sharding.replicated(mesh)
  )

  mngr = checkpoints.make_manager(workdir, cfg.ckpt)
  # The newest readable checkpoint: a damaged one is skipped with a warning (and kept).
  state, start = checkpoints.restore_newest(
    mngr, setup.abstract_with_shardings(), setup.model, setup.disc, cfg, content_it, style_it
  )
  if start is not None:
    logging.info("resumed from %s/%d", mngr.directory, start)
  else:
    state, start = setup.init(int(cfg.seed)), 0
  total = int(cfg.train.steps)
  logger = MetricLogger(workdir, start, total, enabled=pidx == 0)
  batch_size, max_bad = int(cfg.data.batch_size), int(cfg.opt.max_nonfinite)
  last_saved = mngr.latest_step()
  skipped_images, last_metrics, pending = 0, {}, None
  # D metrics are logged from the latest D step, also across a resume.
  last_d = {k: logger.last_record[k] for k in ("loss/d", "grad_norm/d") if k in logger.last_record}
  clock = throughput.StepClock.for_run(cfg, setup.model, setup.disc, mesh)
  evaluator = train_eval.Evaluator(cfg, setup.model, mesh, setup.shardings.g.params, vgg_params)
  last_eval = {}
  profile = throughput.Profile(cfg.log.get("profile"), workdir, enabled=pidx == 0)

  def fetch(pending_step, pending_metrics):
    """Host copy of one step's metrics; stops the run on too many non-finite updates."""
    nonlocal last_metrics
    m = {k: float(v) for k, v in jax.device_get(pending_metrics).items()}
    d_metrics = {k: m.pop(k) for k in ("loss/d", "grad_norm/d")}
    if m.pop("d_updated"):  # D metrics exist on D steps only; log the latest ones
      last_d.update(d_metrics)
    m.update(last_d)
    if m["nonfinite/streak"] >= max_bad:
      good = (
        f"{mngr.directory}/{last_saved}" if last_saved is not None else "none (no checkpoint yet)"
      )
      raise NonFiniteError(
        f"stopped at step {pending_step}: {int(m['nonfinite/streak'])} non-finite updates "
        f"in a row (opt.max_nonfinite={max_bad}); last good checkpoint: {good}"
      )
    last_metrics = m
    return m

  stops, step_fn, save_failed = preemption.StopRequests(), None, False
  try:
    stops.__enter__()
    for step in range(start, total):
      profile.before(step)
      with clock.data_wait():
        content, style = next(content_it), next(style_it)
        batch = sharding.global_batch(mesh, {"content": content["image"], "style": style["image"]})
      skipped = int(content["skipped"].sum() + style["skipped"].sum())
      if skipped:
        skipped_images += skipped
        logging.warning("skipped %d unreadable images so far", skipped_images)
      if step_fn is None:
        step_fn = sharding.compiled_for_all(setup.step_fn, state, vgg_params, batch)
      state, metrics = step_fn(state, vgg_params, batch)
      done = step + 1
      clock.step_done()
      profile.after(done, state)
      # Metrics of the previous step are fetched while this one runs (one step of lag).
      if pending is not None:
        fetch(*pending)
      pending = (done, metrics)
      logger.advance()
      is_last = done == total
      if done % cfg.log.every == 0 or is_last or done == start + 1:
        m = dict(fetch(*pending))
        m.update(clock.interval(batch_size))
        m["data/skipped_images"] = skipped_images
        logger.scalars(done, m)
      if cfg.log.image_every and (done % cfg.log.image_every == 0 or is_last):
        grid = sample_grid(
          *map(np.asarray, jax.device_get(setup.sample_fn(state.g.params, vgg_params, batch)))
        )
        logger.grid(done, grid)
      if evaluator.due(done):
        last_eval, eval_grid = evaluator(state.g.params)
        logger.scalars(done, last_eval)
        logger.grid(done, sample_grid(*eval_grid), name="eval/samples")
      stop = stops.should_stop(mngr, done)
      if mngr.should_save(done) or is_last or stop:
        m = fetch(*pending)
        if m["nonfinite/streak"] == 0:  # never checkpoint in the middle of a non-finite streak
          checkpoints.save(
            mngr,
            done,
            state,
            content_it,
            style_it,
            cfg,
            force=is_last or stop,
            metrics={k: v for k, v in {**m, **last_eval}.items() if math.isfinite(v)},
          )
          last_saved = done
      if stop:
        checkpoints.wait(mngr)  # synchronous: the checkpoint is committed before the exit
        raise preemption.Preempted(stops.message(mngr, done, last_saved), done)
    if pending is not None:
      fetch(*pending)
  except jax.errors.JaxRuntimeError as e:
    if pcount == 1:
      raise
    preemption.exit_on_lost_peer(e, mngr, step + 1)
  except SaveError:
    save_failed = True
    raise
  except OSError as e:  # metrics, samples or TensorBoard on a full disk
    if is_disk_full(e):
      raise SaveError(
        f"{workdir}: no space left on the device while writing logs ({e.filename or e}); "
        "free space and run the same command again to resume"
      ) from None
    raise
  finally:
    stops.__exit__()
    profile.stop()
    try:
      checkpoints.wait(mngr)
    except SaveError:
      save_failed = True
      raise
    finally:
      checkpoints.close(mngr, save_failed)
      logger.close()
      content_it.close()  # stops grain's worker processes
      style_it.close()
  if pcount == 1:  # Orbax's single-directory writer; multi-host runs use `sk-jax export`
    path = artifacts.save_generator(
      os.path.join(workdir, EXPORT_DIR), state.g.params, setup.model, overwrite=True
    )
    logging.info("generator exported to %s", path)
  return last_metrics
