"""Training: sharded step parity, resume, SIGKILL during a save, refusals, non-finite skips, export, CLI.

The tiny config (48 x 48 crops, batch 2, narrow heads and discriminator) compiles one
program per mesh; the persistent compile cache of conftest.py shares it between tests
and with the subprocesses (which inherit its environment), so the tests override only what
their property needs. One straight run (the `straight` fixture) is the reference of every
resume test.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_train_config

from sk_jax import cli
from sk_jax import config as config_lib
from sk_jax.errors import InputError, NonFiniteError
from sk_jax.io import images
from sk_jax.nn.generator import ModelConfig
from sk_jax.train import checkpoints as checkpoint
from sk_jax.train import logger, preemption, sharding
from sk_jax.train import loop as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


tiny_config = make_tiny_train_config


def _batches(n, batch=2, crop=48, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {k: rng.integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8) for k in ("content", "style")}
    for _ in range(n)
  ]


def _restore_latest(workdir, cfg):
  mngr = checkpoint.make_manager(workdir, cfg.ckpt, read_only=True)
  try:
    step = mngr.latest_step()
    setup = train_lib.make_setup(cfg, sharding.make_mesh(cfg.mesh))
    return step, jax.device_get(checkpoint.restore(mngr, setup.abstract_with_shardings(), step))
  finally:
    mngr.close()


def _steps_in_metrics(workdir):
  with open(os.path.join(workdir, logger.METRICS_FILE)) as f:
    return [json.loads(line)["step"] for line in f]


def _assert_trees_equal(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def trained(trained_workdir):
  """A workdir after 2 training steps (checkpoint at step 2) and its config."""
  return trained_workdir, tiny_config()


STRAIGHT_STEPS = 5


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted 5-step run of the tiny config, the reference of every resume test (which
  stop it after step 2, 4 or wherever a signal lands); returns its workdir.

  Checkpoints every 2 steps, keeping the last plus the best by a metric ("min" of the total
  loss, which rises over these first steps, so that the best is an older checkpoint than the
  last); checkpointing, sample grids and the kept checkpoints do not change the training state."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  cfg = tiny_config(
    train__steps=STRAIGHT_STEPS, ckpt__keep=1, ckpt__best_metric="loss/total", ckpt__best_mode="min"
  )
  train_lib.train(cfg, workdir)
  return workdir


def test_eight_devices_match_one_device(vgg_params):
  """The same three steps (G and D updated in each) on 1 and on 8 devices.

  The generator's gradients at initialisation are ill-conditioned in float32 (large
  cancellations over positions, and the CGM's hard mask), so the two summation orders
  agree to about 1e-3 relative on some leaves. Plain Adam would turn that noise into
  full-size steps for every near-zero gradient (its first step is lr * sign(g)); with a
  huge eps Adam is momentum SGD, linear in the gradient, so the parameters must agree to
  a few percent of the update. A sharding mistake (a missing all-reduce, a wrong batch
  split) moves them by the whole update.

  The comparison is only meaningful where the update is far above float32's rounding of
  the parameters it moves (p8 and p1 each carry up to half an ulp of p). E_f's gradient is
  small: at the default update scale 0.01 its update was 1.7e-8 against ulps of 1e-9 (the
  test then depended on the machine's summation order), at 1 still only 6 ulps; the scale
  is therefore 100 here (about 600 ulps). Every leaf must move by
  at least 10 ulps (norms over the leaf), and the bound adds those ulps to the 3 %.
  """
  assert jax.device_count() == 8
  batches = _batches(3, batch=8)
  runs = {}
  for n in (1, 8):
    cfg = tiny_config(
      mesh__data=n,
      data__batch_size=8,
      opt__lr=0.1,
      opt__eps=1e3,
      opt__gate_lr_scale=100.0,
      train__d_every=1,
    )
    mesh = sharding.make_mesh(cfg.mesh)
    setup = train_lib.make_setup(cfg, mesh)
    state = setup.init(0)
    init = jax.device_get(state)
    vgg_dev = jax.device_put(vgg_params, sharding.replicated(mesh))
    metrics, after_one = [], None
    for b in batches:
      state, m = setup.step_fn(state, vgg_dev, sharding.global_batch(mesh, b))
      metrics.append(jax.device_get(m))
      after_one = after_one or jax.device_get(state)
    assert state.g.params["decoder"]["dec1_1"]["kernel"].sharding.mesh.size == n
    runs[n] = init, after_one, metrics
  (init, one_1, m1), (init_8, one_8, m8) = runs[1], runs[8]
  _assert_trees_equal((init.g, init.d), (init_8.g, init_8.d))
  assert int(one_1.g.step) == int(one_1.d.step) == 1
  for step, (a, b) in enumerate(zip(m1, m8)):
    for k in a:
      if k.startswith("loss/"):
        np.testing.assert_allclose(
          b[k], a[k], rtol=1e-5 if step == 0 else 5e-4, err_msg=f"step {step} {k}"
        )
  np.testing.assert_allclose(m8[0]["grad_norm/g"], m1[0]["grad_norm/g"], rtol=1e-3)
  np.testing.assert_allclose(m8[0]["grad_norm/d"], m1[0]["grad_norm/d"], rtol=1e-3)
  params = lambda s: {"g": s.g.params, "d": s.d.params}
  for (path, p1), p8, p0 in zip(
    jax.tree_util.tree_leaves_with_path(params(one_1)),
    jax.tree.leaves(params(one_8)),
    jax.tree.leaves(params(init)),
  ):
    update = np.linalg.norm(np.float64(p1) - p0)
    # p8 - p1 carries up to one ulp of rounding per element on top of any real difference.
    ulps = np.linalg.norm(np.spacing(np.abs(np.asarray(p1, np.float32))).astype(np.float64))
    name = jax.tree_util.keystr(path)
    if name == "['g']['alignment']['gate']['conv2']['bias']" and cfg.model.gate_center:
      # model.gate_center subtracts each image's mean of E_f's outputs: their biases cancel, so
      # the loss does not depend on them and neither run moves them beyond rounding.
      assert update < ulps and np.linalg.norm(np.float64(p8) - p1) <= 2 * ulps, name
      continue
    assert update >= 10 * ulps, (
      f"{name}: update {update:.3g} is near float32 resolution ({ulps:.3g}); raise the test's step size"
    )
    assert np.linalg.norm(np.float64(p8) - p1) <= 0.03 * update + ulps, name


def test_indivisible_batch_fails_before_compiling():
  cfg = tiny_config(mesh__data=8, data__batch_size=6)
  with pytest.raises(
    InputError, match="batch_size=6 does not divide by the 8 data-parallel devices"
  ):
    train_lib.make_setup(cfg, sharding.make_mesh(cfg.mesh))
  with pytest.raises(InputError, match="mesh.model=3"):
    sharding.make_mesh(tiny_config(mesh__data=-1, mesh__model=3).mesh)
  assert dict(sharding.make_mesh(tiny_config(mesh__data=-1, mesh__model=2).mesh).shape) == {
    "data": 4,
    "model": 2,
  }


def test_model_axis_shards_parameters():
  cfg = tiny_config(mesh__data=4, mesh__model=2, data__batch_size=8)
  setup = train_lib.make_setup(cfg, sharding.make_mesh(cfg.mesh))
  spec = setup.shardings.g.params["decoder"]["dec2_1"]["kernel"].spec  # (3, 3, 128, 64)
  assert spec == jax.sharding.PartitionSpec(None, None, "model", None)
  assert setup.shardings.g.opt_state[1][0].mu["decoder"]["dec2_1"]["kernel"].spec == spec
  assert setup.shardings.step.spec == jax.sharding.PartitionSpec()


def test_resume_gives_the_same_state_as_a_straight_run(tmp_path, trained, straight):
  """2 steps, then the same workdir resumed to 5 == 5 steps straight (bitwise, data iterators included)."""
  workdir, cfg = trained
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  cfg5 = tiny_config(train__steps=STRAIGHT_STEPS)
  train_lib.train(cfg5, resumed)
  step_a, a, iters_a = _final_state(resumed, cfg5)
  step_b, b, iters_b = _final_state(straight, cfg5)
  assert step_a == step_b == 5
  _assert_trees_equal((a.g, a.d, a.step), (b.g, b.d, b.step))
  assert iters_a == iters_b
  assert _steps_in_metrics(resumed) == _steps_in_metrics(straight) == [1, 2, 3, 4, 5]
  # The straight run keeps the last checkpoint plus the best by "min" of the total loss.
  with open(os.path.join(straight, logger.METRICS_FILE)) as f:
    loss = {json.loads(l)["step"]: json.loads(l)["loss/total"] for l in f}
  best = min((1, 2, 4, 5), key=loss.get)  # the saved steps: Orbax's initial save, every 2, last
  assert best != 5
  mngr = checkpoint.make_manager(straight, tiny_config().ckpt, read_only=True)
  assert mngr.all_steps() == sorted({best, 5})
  mngr.close()
  # The run wrote its sample grids, TensorBoard events and the exported generator.
  assert sorted(os.listdir(os.path.join(straight, "samples"))) == [
    "step_0000002.png",
    "step_0000004.png",
    "step_0000005.png",
  ]
  assert os.listdir(os.path.join(straight, "tensorboard"))
  params, _ = checkpoint.load_generator(os.path.join(straight, train_lib.EXPORT_DIR))
  _assert_trees_equal(params, b.g.params)


def test_sigkill_during_a_save_resumes_from_the_previous_checkpoint(tmp_path, straight):
  """SIGKILL while step 4's checkpoint is written: the rerun resumes from step 2 and ends where
  the straight run ends."""
  workdir = str(tmp_path / "run")
  cfg = tiny_config(train__steps=STRAIGHT_STEPS, log__image_every=0)
  cfg_path = tmp_path / "cfg.json"
  cfg_path.write_text(cfg.to_json())
  script = textwrap.dedent("""
      import glob, json, os, signal, sys, time
      import ml_collections
      from sk_jax.train import checkpoints as checkpoint
      from sk_jax.train import loop as train

      original = checkpoint.save
      def save_then_die(mngr, step, *args, **kwargs):
        result = original(mngr, step, *args, **kwargs)
        if step == 4:  # die while the asynchronous write of step 4 is in flight
          deadline = time.time() + 30
          while not glob.glob(os.path.join(str(mngr.directory), "4.orbax-checkpoint-tmp*")):
            assert time.time() < deadline, "no temporary checkpoint directory appeared"
            time.sleep(0.001)
          os.kill(os.getpid(), signal.SIGKILL)
        return result
      checkpoint.save = save_then_die
      train.train(ml_collections.ConfigDict(json.load(open(sys.argv[1]))), sys.argv[2])
  """)
  proc = subprocess.run(
    [sys.executable, "-c", script, str(cfg_path), workdir],
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  ckpt_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  assert any(name.startswith("4.orbax-checkpoint-tmp") for name in os.listdir(ckpt_dir))
  mngr = checkpoint.make_manager(workdir, cfg.ckpt, read_only=True)
  assert mngr.all_steps() == [1, 2]  # Orbax's initial save after step 1, then every 2 steps
  mngr.close()

  train_lib.train(cfg, workdir)  # the same command again
  assert _steps_in_metrics(workdir) == [1, 2, 3, 4, 5]
  mngr = checkpoint.make_manager(workdir, cfg.ckpt, read_only=True)
  assert mngr.all_steps() == [4, 5]
  mngr.close()
  (_, a, iters_a), (_, b, iters_b) = _final_state(workdir, cfg), _final_state(straight, cfg)
  _assert_trees_equal((a.g, a.d, a.step), (b.g, b.d, b.step))
  assert iters_a == iters_b


def test_checkpoint_of_another_model_is_refused(tmp_path, trained):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)  # the workdir is shared with other modules
  with pytest.raises(InputError, match=r"another model config \(model.kernel_size: 5 != 3"):
    train_lib.train(tiny_config(model__kernel_size=5), workdir)
  with pytest.raises(InputError, match=r"disc.features: 16 != 8"):
    train_lib.train(tiny_config(disc__features=16), workdir)
  with pytest.raises(InputError, match="no training checkpoints"):
    checkpoint.export_generator(str(tmp_path), str(tmp_path / "out"))


def test_nonfinite_updates_are_skipped(vgg_params):
  cfg = tiny_config()
  mesh = sharding.make_mesh(cfg.mesh)
  setup = train_lib.make_setup(cfg, mesh)
  vgg_dev = jax.device_put(vgg_params, sharding.replicated(mesh))
  batch = sharding.global_batch(mesh, _batches(1)[0])
  state = setup.init(0)
  good_d = jax.device_get(state.d.params)
  before = jax.device_get(state.g)
  # A NaN discriminator makes the adversarial loss, and so every G gradient, NaN.
  poisoned = jax.tree.map(
    lambda x: jax.device_put(jnp.full_like(x, jnp.nan), x.sharding), state.d.params
  )
  state = state.replace(d=state.d.replace(params=poisoned))
  for step in (1, 2):  # step 2 is a D step: its NaN update is skipped too
    state, m = setup.step_fn(state, vgg_dev, batch)
    assert int(m["nonfinite/streak"]) == step and int(m["nonfinite/total"]) == step
    assert not np.isfinite(float(m["loss/total"]))
  _assert_trees_equal(jax.device_get(state.g), before)  # params, Adam moments and g.step untouched
  assert int(state.d.step) == 0 and int(state.step) == 2
  state = state.replace(
    d=state.d.replace(
      params=jax.tree.map(lambda x, y: jax.device_put(y, x.sharding), state.d.params, good_d)
    )
  )
  state, m = setup.step_fn(state, vgg_dev, batch)
  assert (
    int(m["nonfinite/streak"]) == 0 and int(m["nonfinite/total"]) == 2 and int(state.g.step) == 1
  )


def test_run_stops_after_too_many_nonfinite_updates(tmp_path, trained, monkeypatch):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  original = checkpoint.restore

  def poisoned_restore(*args, **kwargs):
    state = original(*args, **kwargs)
    nan = jax.tree.map(
      lambda x: jax.device_put(jnp.full_like(x, jnp.nan), x.sharding), state.d.params
    )
    return state.replace(d=state.d.replace(params=nan))

  monkeypatch.setattr(checkpoint, "restore", poisoned_restore)
  cfg = tiny_config(train__steps=10, opt__max_nonfinite=2)
  with pytest.raises(
    NonFiniteError, match=r"2 non-finite updates in a row .* last good checkpoint: .*/2"
  ):
    train_lib.train(cfg, workdir)
  mngr = checkpoint.make_manager(workdir, cfg.ckpt, read_only=True)
  assert mngr.all_steps() == [1, 2]
  mngr.close()
  monkeypatch.setattr(checkpoint, "restore", original)
  _, state = _restore_latest(workdir, cfg)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.d.params))


def test_export_subcommand_writes_a_stylize_checkpoint(tmp_path, trained):
  workdir, cfg = trained
  out = str(tmp_path / "gen")
  assert cli.main(["export", "--workdir", workdir, "--output", out]) == 0
  params, model = checkpoint.load_generator(out)
  assert model == ModelConfig.from_dict(cfg.model)
  _, state = _restore_latest(workdir, cfg)
  _assert_trees_equal(params, state.g.params)
  assert (
    cli.main(["export", "--workdir", workdir, "--output", out, "--step", "7", "--overwrite"]) == 2
  )


def _run_train_py(*args, timeout=120):
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "train.py"), *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=ROOT,
  )


def test_train_py_bad_input_is_one_line_and_exit_2(tmp_path):
  quick = os.path.join(ROOT, "configs", "quick.py")
  typo = _run_train_py("--config", quick, "--workdir", str(tmp_path), "--config.opt.lrr=1")
  missing = _run_train_py(
    "--config", quick, "--workdir", str(tmp_path), f"--config.data.content={tmp_path}/nope"
  )
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  syntax = _run_train_py("--config", str(broken), "--workdir", str(tmp_path))
  for proc, needle in (
    (typo, "lrr"),
    (missing, f"{tmp_path}/nope: no such image folder"),
    (syntax, "broken.py"),
  ):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error:") and needle in last, proc.stderr
  assert not os.path.exists(tmp_path / checkpoint.CHECKPOINT_DIR)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _config_file(tmp_path, cfg, name="cfg") -> str:
  """A --config file for train.py that returns `cfg` (the test's tiny config)."""
  (tmp_path / f"{name}.json").write_text(cfg.to_json())
  path = tmp_path / f"{name}.py"
  path.write_text(
    "import json, ml_collections\n"
    f"def get_config():\n  return ml_collections.ConfigDict(json.load(open({str(tmp_path / f'{name}.json')!r})))\n"
  )
  return str(path)


def _signal_after_step(procs, workdir, step, sig, timeout=240):
  """Sends `sig` to every process once metrics.jsonl holds `step` (log.every=1)."""
  path = os.path.join(workdir, logger.METRICS_FILE)
  deadline = time.monotonic() + timeout
  while not (os.path.exists(path) and step in _steps_in_metrics_safe(path)):
    assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs]
    assert time.monotonic() < deadline, "the run did not reach the step"
    time.sleep(0.05)
  for p in procs:
    p.send_signal(sig)


def _steps_in_metrics_safe(path):
  steps = []
  with open(path) as f:
    for line in f:
      try:
        steps.append(json.loads(line)["step"])
      except ValueError:
        pass  # a line being written
  return steps


def _final_state(workdir, cfg):
  """(step, state, content iterator state, style iterator state) of the latest checkpoint."""
  step, state = _restore_latest(workdir, cfg)
  step_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(step))
  iters = [
    sorted(
      open(os.path.join(step_dir, item, f)).read()
      for f in os.listdir(os.path.join(step_dir, item))
      if f.startswith("process_")
    )
    for item in ("content_iter", "style_iter")
  ]
  return step, state, iters


def test_sigterm_saves_the_step_and_resumes_like_a_straight_run(tmp_path, straight):
  """SIGTERM mid-run: the step in flight is finished and saved, one line, exit 75; the rerun
  of the same command ends where an uninterrupted run ends (bitwise: params, Adam, data)."""
  cfg = tiny_config(train__steps=STRAIGHT_STEPS, ckpt__every=100, log__image_every=0)
  config = _config_file(tmp_path, cfg)
  workdir = str(tmp_path / "run")
  args = [sys.executable, os.path.join(ROOT, "train.py"), "--config", config, "--workdir", workdir]
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
  try:
    _signal_after_step([proc], workdir, 2, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == preemption.EXIT_PREEMPTED == 75, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("train.py: stopped by SIGTERM after step "), err[-3000:]
  stopped = int(last.split("after step ")[1].split(";")[0])
  assert 2 <= stopped < 5
  mngr = checkpoint.make_manager(workdir, cfg.ckpt, read_only=True)
  assert mngr.all_steps() == [1, stopped]  # Orbax's first save, then the one on SIGTERM
  mngr.close()
  assert f"checkpoint {workdir}/checkpoints/{stopped};" in last

  rerun = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=ROOT)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  step_a, a, iters_a = _final_state(workdir, cfg)
  step_b, b, iters_b = _final_state(straight, cfg)
  assert step_a == step_b == 5
  key = jax.random.key_data
  _assert_trees_equal((a.g, a.d, a.step, key(a.rng)), (b.g, b.d, b.step, key(b.rng)))
  assert iters_a == iters_b
  assert _steps_in_metrics(workdir) == list(range(1, 6))


# train.train in process argv[2] of a run with the config file argv[1] (JSON), coordinator
# argv[3] and workdir argv[4]; prints what that process saw and returned.
_TRAIN_AND_REPORT = textwrap.dedent("""
    import json, sys
    import ml_collections
    from sk_jax.train import loop as train
    cfg = ml_collections.ConfigDict(json.load(open(sys.argv[1])))
    cfg.mesh.process_id, cfg.mesh.coordinator_address = int(sys.argv[2]), sys.argv[3]
    metrics = train.train(cfg, sys.argv[4])
    import jax
    print("RESULT", jax.process_index(), jax.device_count(), json.dumps(metrics))
""")


def _launch_two(config, workdir, port, report=False):
  """train.py as process 0 and 1 of a 2 x 2-CPU-device run (a 4-device mesh); with `report`,
  train.train on the same config (`config`.json) printing a RESULT line instead."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  address = f"127.0.0.1:{port}"
  if report:
    command = lambda i: ["-c", _TRAIN_AND_REPORT, config[:-3] + ".json", str(i), address, workdir]
  else:
    command = lambda i: [
      os.path.join(ROOT, "train.py"),
      "--config",
      config,
      "--workdir",
      workdir,
      f"--config.mesh.process_id={i}",
      f"--config.mesh.coordinator_address={address}",
    ]
  return [
    subprocess.Popen(
      [sys.executable, *command(i)],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      cwd=ROOT,
    )
    for i in range(2)
  ]


def _wait_all(procs, timeout=300, stdout=False):
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
    return outs if stdout else [err for _, err in outs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def test_two_processes_resume_after_sigterm_and_after_a_killed_peer(tmp_path):
  """2 processes x 2 devices (gloo collectives). An uninterrupted run: both processes see the
  4-device mesh, return the same finite loss and each saves its own data iterator. SIGTERM to
  both after step 2: both save the same step (agreed through JAX's preemption service) and
  exit 75. SIGKILL to process 1: process 0 stops within the heartbeat timeout, with one line
  naming the last committed checkpoint if a collective fails first. Each rerun ends bitwise where the uninterrupted run
  ends."""
  cfg = tiny_config(
    mesh__data=-1,
    mesh__distributed=True,
    mesh__num_processes=2,
    mesh__heartbeat_timeout_s=10,
    data__batch_size=4,
    train__steps=5,
    ckpt__every=100,
    log__image_every=0,
    # Typed (not None) in the file, so that the command line can set them per process.
    mesh__process_id=0,
    mesh__coordinator_address="",
  )
  config = _config_file(tmp_path, cfg)
  runs = {name: str(tmp_path / name) for name in ("term", "kill", "straight")}

  procs = _launch_two(config, runs["term"], _free_port())
  _signal_after_step(procs, runs["term"], 2, signal.SIGTERM, timeout=600)
  errs = _wait_all(procs)
  assert [p.returncode for p in procs] == [75, 75], errs[0][-3000:] + errs[1][-3000:]
  lines = [e.strip().splitlines()[-1] for e in errs]
  # JAX's notifier caught the SIGTERM and told the coordination service.
  assert lines[0].startswith("train.py: stopped by a preemption notice after step "), errs[0]
  stopped = int(lines[0].split("after step ")[1].split(";")[0])
  assert lines[1] == lines[0] and 2 <= stopped < 5
  restore_cfg = tiny_config(data__batch_size=4)
  mngr = checkpoint.make_manager(runs["term"], cfg.ckpt, read_only=True)
  assert mngr.all_steps() == [1, stopped]
  mngr.close()

  procs = _launch_two(config, runs["kill"], _free_port())
  _signal_after_step(procs[1:], runs["kill"], 2, signal.SIGKILL, timeout=600)
  t = time.monotonic()
  errs = _wait_all(procs[:1], timeout=120)
  assert procs[0].returncode not in (0, None), errs[0][-3000:]
  assert time.monotonic() - t < 120
  # Which comes first is a race (measured both ways on the same idle machine): the next
  # collective failing (gloo sees the dead peer's socket: the one line of exit_on_lost_peer),
  # or, when the collective waits instead, JAX's coordination service aborting this process
  # after mesh.heartbeat_timeout_s (its own fatal log; preemption.exit_on_lost_peer says so).
  lines = errs[0].strip().splitlines()
  if any(l.startswith("train.py: lost a peer process at step ") for l in lines):
    assert lines[-1].startswith("train.py: lost a peer process at step "), errs[0][-3000:]
    assert lines[-1].endswith("checkpoints/1; run the same command on every host to resume")
  else:
    assert "JAX distributed service detected fatal errors" in errs[0], errs[0][-3000:]
  mngr = checkpoint.make_manager(runs["kill"], cfg.ckpt, read_only=True)
  assert mngr.latest_step() == 1  # Orbax's first save; the rerun resumes there
  mngr.close()

  for name in runs:
    procs = _launch_two(config, runs[name], _free_port(), report=name == "straight")
    outs = _wait_all(procs, stdout=True)
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-3000:] + outs[1][1][-3000:]
  results = {}
  for out, _ in outs:  # the straight run's
    line = [l for l in out.splitlines() if l.startswith("RESULT")][-1].split(" ", 3)
    results[int(line[1])] = (int(line[2]), json.loads(line[3]))
  assert results[0][0] == results[1][0] == 4
  assert results[0][1]["loss/total"] == pytest.approx(results[1][1]["loss/total"], rel=1e-6)
  assert np.isfinite(results[0][1]["loss/total"])
  step_dir = os.path.join(runs["straight"], checkpoint.CHECKPOINT_DIR, "5")
  assert sorted(os.listdir(os.path.join(step_dir, "content_iter"))) == [
    "commit_success.txt",
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]
  final = {name: _final_state(runs[name], restore_cfg) for name in runs}
  key = jax.random.key_data
  for name in ("term", "kill"):
    (step_a, a, iters_a), (step_b, b, iters_b) = final[name], final["straight"]
    assert step_a == step_b == 5
    _assert_trees_equal((a.g, a.d, a.step, key(a.rng)), (b.g, b.d, b.step, key(b.rng)))
    assert iters_a == iters_b
    assert _steps_in_metrics(runs[name]) == list(range(1, 6))


def test_analytic_train_step_flops_match_xla_on_cpu():
  """flops.train_step_flops (G forward and backward, every VGG pass, D) within 10 % of XLA."""
  from sk_jax.config import validate_config
  from sk_jax.io import weights
  from sk_jax.train import flops

  cfg = tiny_config(data__batch_size=2)
  setup = train_lib.make_setup(cfg, sharding.make_mesh(cfg.mesh))
  batch = {k: jax.ShapeDtypeStruct((2, 48, 48, 3), np.uint8) for k in ("content", "style")}
  compiled = setup.step_fn.lower(setup.abstract, jax.eval_shape(weights.load_vgg16), batch)
  cost = compiled.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  parts = flops.train_step_flops(cfg, *validate_config(cfg))
  assert sum(parts.values()) == pytest.approx(cost["flops"], rel=0.10)
  assert parts["generator"] > parts["vgg_outputs"] > parts["vgg_inputs"] > parts["remd"] > 0


def test_throughput_metrics_and_profile_trace(tmp_path):
  """Every logged interval carries throughput/...; log.profile writes a non-empty trace."""
  workdir = str(tmp_path / "run")
  cfg = tiny_config(data__batch_size=2, train__steps=3, log__image_every=0, log__profile="1:2")
  train_lib.train(cfg, workdir)
  with open(os.path.join(workdir, logger.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [1, 2, 3]
  for r in records:
    assert 0 <= r["throughput/data_wait_share"] <= 1
    assert r["throughput/data_wait_s"] <= r["throughput/step_s"]
    assert r["throughput/tflops_per_device"] > 0
    assert r["throughput/mfu"] == "unknown"  # the CPU has no peak in the table
    assert r["throughput/images_per_s_per_device"] == pytest.approx(
      r["throughput/images_per_s"], rel=1e-9
    )
  traces = [
    os.path.join(d, f)
    for d, _, files in os.walk(os.path.join(workdir, "profile"))
    for f in files
    if f.endswith(".xplane.pb")
  ]
  assert traces and all(os.path.getsize(t) > 0 for t in traces)
  with pytest.raises(InputError, match="log.profile must be 'START:STOP'"):
    train_lib.train(tiny_config(log__profile="5"), str(tmp_path / "bad"))


def _event_tags(logdir):
  """{tag: [steps]} of the scalars and images in a TensorBoard event directory (TFRecord frames)."""
  from tensorboardX.proto import event_pb2

  tags = {}
  for name in os.listdir(logdir):
    with open(os.path.join(logdir, name), "rb") as f:
      data = f.read()
    pos = 0
    while pos + 12 <= len(data):
      (length,) = np.frombuffer(data[pos : pos + 8], "<u8")
      event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + int(length)])
      pos += 12 + int(length) + 4
      for value in event.summary.value:
        tags.setdefault(value.tag, []).append(event.step)
  return tags


def test_eval_while_training_every_n_steps(tmp_path):
  """eval.every=2 over 4 steps: eval/... (Table 2, CFSD, kept fraction, cost) at steps 2 and 4 in
  metrics.jsonl and TensorBoard, a grid of the 4 held-out pairs each time, best by eval/cfsd."""
  workdir = str(tmp_path / "run")
  cfg = tiny_config(data__batch_size=2, train__steps=4, log__image_every=0, ckpt__every=2)
  cfg.eval.update(every=2, size=32)
  cfg.ckpt.update(keep=1, best_metric="eval/cfsd", best_mode="max")
  train_lib.train(cfg, workdir)
  with open(os.path.join(workdir, logger.METRICS_FILE)) as f:
    evals = [r for r in map(json.loads, f) if "eval/cfsd" in r]
  assert [r["step"] for r in evals] == [2, 4]
  for r in evals:
    assert set(r) == {"step", "eval/seconds", *config_lib.EVAL_METRICS}
    assert 0 <= r["eval/kept_fraction"] <= 1 and r["eval/cfsd"] > 0 and r["eval/seconds"] > 0
    assert all(np.isfinite(v) for v in r.values())
  tags = _event_tags(os.path.join(workdir, "tensorboard"))
  assert tags["eval/cfsd"] == tags["eval/samples"] == [2, 4]
  grid = os.path.join(workdir, "samples", "eval_0000004.png")
  assert os.path.getsize(grid) > 0
  assert images.load_image(grid).shape == (4 * 34 - 2, 3 * 34 - 2, 3)
  best = max(evals, key=lambda r: r["eval/cfsd"])["step"]
  mngr = checkpoint.make_manager(workdir, cfg.ckpt, read_only=True)
  assert mngr.all_steps() == sorted({best, 4})
  mngr.close()
