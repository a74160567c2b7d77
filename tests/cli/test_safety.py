"""Never lose a user's data (issue 13): what the tools refuse to overwrite, one trainer per workdir,
checkpoint fallback, full disks, and the paths that used to end in a traceback.

Training runs reuse test_train.py's tiny config (one or two steps each); the persistent compile
cache of conftest.py shares its programs.
"""

import errno
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import sk_jax
from sk_jax import cli
from sk_jax.errors import InputError, SaveError
from sk_jax.inference.stylizer import Stylizer
from sk_jax.interop import torch_io
from sk_jax.io import artifacts, images
from sk_jax.train import checkpoints, data, logger, sharding
from sk_jax.train import loop as train_lib
from sk_jax.train import workdir as workdir_lib

SMALL = sk_jax.ModelConfig(gate_hidden=8, kernel_hidden=16)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  return rc, capsys.readouterr()


def one_error_line(io) -> str:
  lines = io.err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in io.err, io.err
  return lines[0]


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
  path = tmp_path_factory.mktemp("gen") / "gen"
  return artifacts.save_generator(str(path), sk_jax.init_params(SMALL, jax.random.key(0)), SMALL)


@pytest.fixture(scope="module")
def trained(trained_workdir):
  """A workdir after 2 training steps: checkpoints 1 (Orbax's first save) and 2."""
  return trained_workdir


def _copy(trained, tmp_path, name="run"):
  workdir = str(tmp_path / name)
  shutil.copytree(trained, workdir)
  return workdir


def _all_steps(workdir, tiny_train_config):
  mngr = checkpoints.make_manager(workdir, tiny_train_config().ckpt, read_only=True)
  try:
    return mngr.all_steps()
  finally:
    mngr.close()


# ----------------------------------------------------------------------------- 1. foreign data


def test_checkpoint_writers_never_replace_what_they_did_not_write(capsys, tmp_path, monkeypatch):
  out = tmp_path / "out"
  out.mkdir()
  (out / "thesis.txt").write_text("four years")
  rc, io = run(capsys, "init", "--output", out)
  assert rc == 2 and "not an sk-jax checkpoint" in one_error_line(io)
  assert (out / "thesis.txt").read_text() == "four years"
  # `.` from inside a photo folder
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(skdata.astronaut()[::16, ::16]).save(photos / "holiday.png")
  monkeypatch.chdir(photos)
  rc, io = run(capsys, "init", "--output", ".")
  assert rc == 2 and (photos / "holiday.png").exists()
  monkeypatch.chdir(tmp_path)
  # a file is never replaced, with or without --overwrite
  (tmp_path / "notes").write_text("x")
  rc, io = run(capsys, "init", "--output", tmp_path / "notes", "--overwrite")
  assert (
    rc == 2 and "not a directory" in one_error_line(io) and (tmp_path / "notes").read_text() == "x"
  )
  # the same library rule for VGG directories (port-vgg16, import-torch --vgg-output)
  with pytest.raises(InputError, match="not an sk-jax checkpoint"):
    artifacts.save_vgg16_dir(str(out), {"conv1_1": {"kernel": np.zeros((3, 3, 3, 64), np.float32)}})
  assert os.listdir(out) == ["thesis.txt"]
  rc, io = run(capsys, "port-vgg16", tmp_path / "whatever.pth", out)
  assert rc == 2 and "not an sk-jax checkpoint" in one_error_line(io)
  # ours: refused without --overwrite, replaced with it; an empty directory is fine
  (tmp_path / "empty").mkdir()
  assert run(capsys, "init", "--output", tmp_path / "empty")[0] == 0
  rc, io = run(capsys, "init", "--output", tmp_path / "empty", "--seed", 1)
  assert rc == 2 and "--overwrite" in one_error_line(io)
  assert run(capsys, "init", "--output", tmp_path / "empty", "--seed", 1, "--overwrite")[0] == 0
  artifacts.load_generator(str(tmp_path / "empty"))
  assert not glob.glob(str(tmp_path / ".empty.tmp-*"))


def test_export_never_replaces_foreign_data(capsys, trained, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "thesis.txt").write_text("four years")
  rc, io = run(capsys, "export", "--workdir", trained, "--output", out)
  assert rc == 2 and "not an sk-jax checkpoint" in one_error_line(io)
  assert os.listdir(out) == ["thesis.txt"]
  fresh = tmp_path / "fresh"
  assert run(capsys, "export", "--workdir", trained, "--output", fresh)[0] == 0
  rc, io = run(capsys, "export", "--workdir", trained, "--output", fresh)
  assert rc == 2 and "--overwrite" in one_error_line(io)
  assert run(capsys, "export", "--workdir", trained, "--output", fresh, "--overwrite")[0] == 0


# ----------------------------------------------------------------------------- 2. inputs


def test_stylize_refuses_an_output_that_is_an_input(capsys, gen, tmp_path, monkeypatch):
  monkeypatch.setattr(Stylizer, "load", lambda *a, **k: pytest.fail("computed before refusing"))
  Image.fromarray(skdata.astronaut()[::8, ::8]).save(tmp_path / "a.png")
  Image.fromarray(skdata.brick()[::8, ::8]).save(tmp_path / "s.png")
  before = (tmp_path / "a.png").read_bytes()
  os.symlink(tmp_path / "a.png", tmp_path / "link.png")
  common = ("stylize", "--checkpoint", gen, "--size", 32, "--style", tmp_path / "s.png")
  for content, output in (
    ("a.png", "a.png"),
    ("a.png", "link.png"),
    ("link.png", "a.png"),
    ("a.png", "s.png"),
  ):
    rc, io = run(capsys, *common, "--content", tmp_path / content, "--output", tmp_path / output)
    assert rc == 2 and "refusing to overwrite an input" in one_error_line(io), (content, output)
  # directory mode: an earlier result lies among the contents, and the output is that directory
  (tmp_path / "photos").mkdir()
  shutil.copy(tmp_path / "a.png", tmp_path / "photos" / "a.png")
  shutil.copy(tmp_path / "a.png", tmp_path / "photos" / "a_stylized_s.png")
  rc, io = run(capsys, *common, "--content", tmp_path / "photos", "--output", tmp_path / "photos")
  assert rc == 2 and "a_stylized_s.png" in one_error_line(io)
  assert (tmp_path / "a.png").read_bytes() == before


# ----------------------------------------------------------------------------- 3. --size


def test_size_and_max_pixels_are_validated_before_allocating(capsys, gen, tmp_path):
  Image.fromarray(skdata.astronaut()[::8, ::8]).save(tmp_path / "a.png")
  common = (
    "stylize",
    "--checkpoint",
    gen,
    "--content",
    tmp_path / "a.png",
    "--style",
    tmp_path / "a.png",
    "--output",
    tmp_path / "o.png",
  )
  for flags, needle in (
    ((("--size", -5)), "--size must be 0"),
    (("--size", 8), "--size must be 0"),
    (("--max-pixels", -1), "--max-pixels must be"),
    (("--size", 100000), "more than --max-pixels=40000000"),
  ):
    rc, io = run(capsys, *common, *flags)
    assert rc == 2 and needle in one_error_line(io), flags
  assert not (tmp_path / "o.png").exists()
  with pytest.raises(InputError, match="more than --max-pixels=1000"):
    images.prepare(np.zeros((20, 30, 3), np.float32), 100, max_pixels=1000)


# ----------------------------------------------------------------------------- 4. one trainer


def test_a_second_trainer_on_a_workdir_is_refused_naming_the_pid(tmp_path, tiny_train_config):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      textwrap.dedent("""
          import sys, time
          from sk_jax.train import workdir
          with workdir.lock(sys.argv[1]):
            print("locked", flush=True)
            time.sleep(600)
      """),
      workdir,
    ],
    stdout=subprocess.PIPE,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(InputError, match=rf"another training run \(PID {holder.pid}\)"):
      train_lib.train(tiny_train_config(), workdir)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))
    assert not os.path.exists(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  with workdir_lib.lock(workdir):  # a killed holder leaves no lock behind
    with pytest.raises(InputError, match=rf"PID {os.getpid()}"):
      with workdir_lib.lock(workdir):  # a second open file description, as another process
        pass


# ----------------------------------------------------------------------------- 5, 6. fallback


def _truncate(path, keep=0.5):
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * keep))


def test_damaged_latest_checkpoint_falls_back_and_a_torn_metrics_line_is_dropped(
  trained, tmp_path, caplog, tiny_train_config, metric_steps
):
  """The latest checkpoint's array files truncated and metrics.jsonl's last line half-written:
  the run warns, resumes from the previous checkpoint, keeps the damaged one aside."""
  workdir = _copy(trained, tmp_path)
  for f in glob.glob(
    os.path.join(workdir, checkpoints.CHECKPOINT_DIR, "2", "state", "ocdbt.process_0", "d", "*")
  ):
    _truncate(f)
  with open(os.path.join(workdir, logger.METRICS_FILE), "a") as f:
    f.write('{"step": 3, "loss/to')  # torn by a power loss
  train_lib.train(tiny_train_config(log__image_every=0), workdir)
  assert any("skipping checkpoint" in r.message and "/2:" in r.message for r in caplog.records)
  assert metric_steps(workdir) == [1, 2]
  assert _all_steps(workdir, tiny_train_config) == [1, 2]
  assert os.listdir(os.path.join(workdir, checkpoints.UNREADABLE_DIR)) == ["2"]  # kept, not deleted


@pytest.mark.parametrize("damage", ["state", "config", "iterator"])
def test_restore_falls_back_from_each_damaged_item(trained, tmp_path, damage, tiny_train_config):
  workdir = _copy(trained, tmp_path)
  step2 = os.path.join(workdir, checkpoints.CHECKPOINT_DIR, "2")
  files = {
    "state": glob.glob(os.path.join(step2, "state", "ocdbt.process_0", "d", "*")),
    "config": [os.path.join(step2, "config", "metadata")],
    "iterator": [os.path.join(step2, "content_iter", "process_0-of-1.json")],
  }[damage]
  for f in files:
    _truncate(f)
  cfg = tiny_train_config()
  setup = train_lib.make_setup(cfg, sharding.make_mesh(cfg.mesh))
  mngr = checkpoints.make_manager(workdir, cfg.ckpt)
  streams = data.build_streams(cfg.data, data.open_sources(cfg.data), int(cfg.seed), 0, 1)
  iterators = [iter(ds) for ds in streams]
  try:
    state, step = checkpoints.restore_newest(
      mngr, setup.abstract_with_shardings(), setup.model, setup.disc, cfg, *iterators
    )
    assert step == 1 and int(state.step) == 1
    assert mngr.all_steps() == [1]
  finally:
    mngr.close()
    for it in iterators:
      it.close()
  # Nothing readable: one line naming every checkpoint tried.
  for f in glob.glob(os.path.join(workdir, checkpoints.CHECKPOINT_DIR, "1", "config", "metadata")):
    _truncate(f)
  mngr = checkpoints.make_manager(workdir, cfg.ckpt)
  try:
    with pytest.raises(InputError, match=r"no readable checkpoint \(1: .*unreadable config") as e:
      checkpoints.restore_newest(
        mngr, setup.abstract_with_shardings(), setup.model, setup.disc, cfg
      )
    assert "\n" not in str(e.value)
  finally:
    mngr.close()


def test_metrics_log_drops_a_torn_last_line_and_appends(tmp_path):
  path = tmp_path / logger.METRICS_FILE
  lines = [json.dumps({"step": s, "loss/d": s / 10}) + "\n" for s in (1, 2, 3)]
  path.write_text("".join(lines) + '{"step": 4, "loss/d": 0.')
  inode = os.stat(path).st_ino
  log = logger.MetricLogger(str(tmp_path), start=3, total=5, enabled=True)
  try:
    assert log.last_record == {"step": 3, "loss/d": 0.3}
    log.scalars(4, {"loss/total": 1.0})
  finally:
    log.close()
  assert path.read_text() == "".join(lines) + json.dumps({"step": 4, "loss/total": 1.0}) + "\n"
  assert os.stat(path).st_ino == inode  # appended in place, not rewritten
  # steps after the checkpoint
  log = logger.MetricLogger(str(tmp_path), start=2, total=5, enabled=True)
  log.close()
  assert path.read_text() == "".join(lines[:2])


# ----------------------------------------------------------------------------- 7. disk full


def test_full_disk_during_a_save_is_one_error_and_a_rerun_resumes(
  trained, tmp_path, monkeypatch, tiny_train_config, metric_steps
):
  import orbax.checkpoint as ocp

  workdir = _copy(trained, tmp_path)
  original = ocp.JsonCheckpointHandler._save_fn

  async def full_disk(self, x, directory):
    if ".orbax-checkpoint-tmp" in str(directory) and "/3." in str(directory):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await original(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)
  cfg = tiny_train_config(train__steps=3, log__image_every=0)
  with pytest.raises(SaveError, match="no space left") as e:
    train_lib.train(cfg, workdir)
  assert "\n" not in str(e.value) and os.path.join(workdir, checkpoints.CHECKPOINT_DIR) in str(
    e.value
  )
  assert _all_steps(workdir, tiny_train_config) == [1, 2]
  assert not glob.glob(os.path.join(workdir, checkpoints.CHECKPOINT_DIR, "*tmp*"))
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", original)
  train_lib.train(cfg, workdir)  # space freed: the same command resumes
  assert _all_steps(workdir, tiny_train_config) == [2, 3]
  assert metric_steps(workdir) == [1, 2, 3]
  with open(os.path.join(workdir, logger.METRICS_FILE)) as f:
    last = json.loads(f.readlines()[-1])
  # step 3 is no D step: the latest D metrics (11)
  assert "loss/d" in last and "grad_norm/d" in last


def test_save_error_exits_1_with_one_line(capsys, gen, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp

  async def full_disk(self, x, directory):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", full_disk)
  rc, io = run(capsys, "init", "--output", tmp_path / "g")
  assert rc == 1 and "no space left" in one_error_line(io) and str(tmp_path / "g") in io.err
  assert os.listdir(tmp_path) == []  # no temporary left behind


# ----------------------------------------------------------------------------- 8. damaged generator


def _params_files(ckpt):
  return sorted(
    glob.glob(os.path.join(ckpt, "params", "ocdbt.process_0", "d", "*")), key=os.path.getsize
  )


def test_damaged_generator_is_one_line(capsys, gen, tmp_path):
  Image.fromarray(skdata.astronaut()[::8, ::8]).save(tmp_path / "a.png")
  common = ("stylize", "--content", tmp_path / "a.png", "--style", tmp_path / "a.png", "--size", 32)
  truncated = shutil.copytree(gen, tmp_path / "truncated")
  _truncate(_params_files(truncated)[-1])
  rc, io = run(capsys, *common, "--output", tmp_path / "o.png", "--checkpoint", truncated)
  assert rc == 2 and str(truncated) in one_error_line(io)
  # One flipped byte in the middle of the largest array file: today's zarr chunks are not
  # checksummed, so only the generator's own checksum catches it.
  flipped = shutil.copytree(gen, tmp_path / "flipped")
  target = _params_files(flipped)[-1]
  raw = bytearray(open(target, "rb").read())
  raw[len(raw) // 2] ^= 0x01
  open(target, "wb").write(bytes(raw))
  with pytest.raises(InputError, match=f"{flipped}: .*(checksum|unreadable)"):
    artifacts.load_generator(str(flipped))
  assert not (tmp_path / "o.png").exists()


def test_a_checkpoint_without_a_checksum_is_refused(tmp_path):
  old = tmp_path / "old"
  artifacts.save_generator(str(old), sk_jax.init_params(SMALL, jax.random.key(0)), SMALL)
  meta = old / "meta" / "metadata"
  record = json.loads(meta.read_text())
  assert len(record.pop("sha256")) == 64
  # as written before checksums existed
  meta.write_text(json.dumps(record))
  with pytest.raises(InputError, match="no parameter checksum") as e:
    artifacts.load_generator(str(old))
  assert str(old) in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- 9. unwritable output


def test_unwritable_output_directory_fails_before_computing(capsys, gen, tmp_path, monkeypatch):
  monkeypatch.setattr(Stylizer, "load", lambda *a, **k: pytest.fail("computed before the check"))
  Image.fromarray(skdata.astronaut()[::8, ::8]).save(tmp_path / "a.png")
  if os.geteuid() == 0:  # root writes through permissions; the kernel's /proc refuses it
    out_dir = "/proc/sk-jax-test"
  else:
    (tmp_path / "ro").mkdir(mode=0o555)
    out_dir = str(tmp_path / "ro" / "sub")
  rc, io = run(
    capsys,
    "stylize",
    "--checkpoint",
    gen,
    "--content",
    tmp_path / "a.png",
    "--style",
    tmp_path / "a.png",
    "--size",
    32,
    "--output",
    os.path.join(out_dir, "o.png"),
  )
  assert rc == 2 and "cannot write output" in one_error_line(io)
  (tmp_path / "file").write_text("")
  rc, io = run(
    capsys,
    "stylize",
    "--checkpoint",
    gen,
    "--content",
    tmp_path / "a.png",
    "--style",
    tmp_path / "a.png",
    "--size",
    32,
    "--output",
    tmp_path / "file" / "o.png",
  )
  assert rc == 2 and "is not a directory" in one_error_line(io)


# ----------------------------------------------------------------------------- 10, 11. train.py


def _train_py(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, "train.py"), *args],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=cwd,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def _one_line_exit_2(proc, needle):
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("train.py: error:") and needle in last, proc.stderr[-2000:]


def test_train_py_config_errors_are_one_line(tmp_path):
  workdir = str(tmp_path / "w")
  _one_line_exit_2(
    _train_py("--config", "missing.py", "--workdir", workdir), "missing.py: no such config file"
  )
  # From another directory without --config: configs/default.py is found (and checked).
  _one_line_exit_2(
    _train_py("--workdir", workdir, "--config.train.steps=0", cwd=str(tmp_path)),
    "train.steps must be >= 1",
  )
  nomodel = tmp_path / "nomodel.py"
  nomodel.write_text(
    "import ml_collections\ndef get_config():\n  return ml_collections.ConfigDict({'seed': 0})\n"
  )
  _one_line_exit_2(_train_py("--config", str(nomodel), "--workdir", workdir), "no 'model'")
  _one_line_exit_2(_train_py("--workdir", workdir, "--config.foo=1"), "unknown config field 'foo'")
  _one_line_exit_2(
    _train_py("--workdir", workdir, "--config.opt.lrr=1"),
    "unknown config field 'opt.lrr'; close matches: opt.lr",
  )
  assert not os.path.exists(os.path.join(workdir, checkpoints.CHECKPOINT_DIR))


def test_random_bytes_are_not_a_pytorch_checkpoint(tmp_path):
  junk = tmp_path / "random.pth"
  junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(InputError, match="not a PyTorch checkpoint") as e:
    torch_io.read_torch_file(str(junk))
  assert "would run code" not in str(e.value)


def test_a_killed_export_leaves_no_temporary_for_good(gen, tmp_path):
  stale = tmp_path / ".gen.tmp-0badf00d"
  shutil.copytree(gen, stale)  # what a SIGKILL between the write and the swap leaves
  (tmp_path / ".other.tmp-12345678").mkdir()  # another target's: not ours to remove
  artifacts.save_generator(
    str(tmp_path / "gen"), sk_jax.init_params(SMALL, jax.random.key(0)), SMALL
  )
  assert sorted(os.listdir(tmp_path)) == [".other.tmp-12345678", "gen"]


# ----------------------------------------------------------------------------- fuzzing the loader

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# A few seconds in CI; SK_JAX_FUZZ_EXAMPLES=5000 for a longer local run (then also random).
_FUZZ_EXAMPLES = int(os.environ.get("SK_JAX_FUZZ_EXAMPLES", "60"))


def _seed_files() -> dict:
  rgb = skdata.astronaut()[::16, ::16]  # 32 x 32
  out = {}
  for fmt, img in (
    ("PNG", Image.fromarray(rgb)),
    ("JPEG", Image.fromarray(rgb)),
    ("GIF", Image.fromarray(rgb).convert("P")),
    ("PNG", Image.fromarray(rgb).convert("LA")),
  ):
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out[f"{fmt}-{img.mode}"] = buf.getvalue()
  return out


_SEEDS = _seed_files()


@st.composite
def _mutated(draw):
  name = draw(st.sampled_from(sorted(_SEEDS)))
  raw = bytearray(_SEEDS[name])
  for _ in range(draw(st.integers(1, 8))):
    if not raw:
      break
    kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
    # half of the edits in the headers, where the decoders' bookkeeping is
    pos = draw(st.one_of(st.integers(0, min(63, len(raw) - 1)), st.integers(0, len(raw) - 1)))
    if kind == "flip":
      raw[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "set":
      raw[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
    elif kind == "truncate":
      del raw[pos:]
    elif kind == "insert":
      raw[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    else:
      del raw[pos : pos + draw(st.integers(1, 16))]
  return name, bytes(raw)


@settings(
  max_examples=_FUZZ_EXAMPLES,
  deadline=None,
  derandomize="SK_JAX_FUZZ_EXAMPLES" not in os.environ,
  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=_mutated())
def test_mutated_image_files_decode_or_are_one_line_errors(case, tmp_path):
  name, raw = case
  path = tmp_path / f"fuzz.{name.split('-')[0].lower()}"
  path.write_bytes(raw)
  try:
    image = images.load_image(str(path), max_pixels=1_000_000)
  except InputError as e:
    assert str(e).startswith(str(path)) and "\n" not in str(e), str(e)
  else:
    assert isinstance(image, np.ndarray) and image.dtype == np.float32
    assert image.ndim == 3 and image.shape[-1] == 3 and min(image.shape[:2]) >= images.MIN_SIDE


# ----------------------------------------------------------------------------- issue 16: outputs


def _png(path, size=32, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
  return str(path)


def _gif(path, side=32, frames=3):
  rng = np.random.default_rng(1)
  pil = [
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(frames)
  ]
  pil[0].save(path, save_all=True, append_images=pil[1:], duration=100)
  return str(path)


@pytest.fixture
def no_compute(monkeypatch):
  """Any generator load fails the test: every refusal must come before compute."""
  monkeypatch.setattr(Stylizer, "load", lambda *a, **k: pytest.fail("computed before refusing"))


def test_stylize_video_never_writes_over_its_input_or_foreign_frames(
  capsys, tiny_checkpoint, tmp_path, no_compute
):
  frames = tmp_path / "frames"
  for t in range(3):
    _png(frames / f"f{t}.png", seed=t)
  before = {n: (frames / n).read_bytes() for n in os.listdir(frames)}
  style = _png(tmp_path / "s.png", seed=9)
  common = ("stylize-video", "--checkpoint", tiny_checkpoint, "--style", style, "--size", 16)
  rc, io = run(capsys, *common, "--input", frames, "--output", frames)
  assert rc == 2 and "refusing to overwrite an input" in one_error_line(io)
  # a video input, and an output directory that already holds the user's own frame_00000.png
  userout = tmp_path / "userout"
  mine = _png(userout / "frame_00000.png", seed=5)
  kept = open(mine, "rb").read()
  rc, io = run(capsys, *common, "--input", _gif(tmp_path / "a.gif"), "--output", userout)
  assert rc == 2 and "sk-jax did not write" in one_error_line(io)
  assert open(mine, "rb").read() == kept and os.listdir(userout) == ["frame_00000.png"]
  assert {n: (frames / n).read_bytes() for n in os.listdir(frames)} == before


def test_stylize_video_rewrites_its_own_frames_directory(capsys, tiny_checkpoint, tmp_path):
  gif, style = _gif(tmp_path / "a.gif"), _png(tmp_path / "s.png", seed=9)
  out = tmp_path / "out"
  common = ("stylize-video", "--checkpoint", tiny_checkpoint, "--style", style, "--size", 16)
  assert run(capsys, *common, "--input", gif, "--output", out)[0] == 0
  # ours: written again, and a shorter clip leaves none of the earlier frames behind
  rc, io = run(capsys, *common, "--input", gif, "--output", out, "--max-frames", 2)
  assert rc == 0, io.err
  assert sorted(os.listdir(out)) == [".sk-jax-outputs", "frame_00000.png", "frame_00001.png"]
  # a file the user added to our directory under a name this run writes is not replaced
  _png(out / "frame_00002.png", seed=3)
  shutil.copy(out / "frame_00002.png", tmp_path / "copy.png")
  rc, io = run(capsys, *common, "--input", gif, "--output", out)
  assert rc == 2 and "frame_00002.png: exists and was not written by sk-jax" in one_error_line(io)
  assert (out / "frame_00002.png").read_bytes() == (tmp_path / "copy.png").read_bytes()


def test_export_torch_replaces_only_its_own_export(capsys, tiny_checkpoint, tmp_path):
  precious = tmp_path / "user_precious.pth"
  precious.write_bytes(b"not ours")
  photo = _png(tmp_path / "c.png")
  photo_bytes = open(photo, "rb").read()
  common = ("export-torch", "--checkpoint", tiny_checkpoint)
  for target, needle in ((precious, "not an sk-jax export-torch file"), (photo, "not an sk-jax")):
    for extra in ((), ("--overwrite",)):
      rc, io = run(capsys, *common, "--output", target, *extra)
      assert rc == 2 and needle in one_error_line(io), (target, extra)
  assert precious.read_bytes() == b"not ours" and open(photo, "rb").read() == photo_bytes
  for name in ("g.pth", "g.safetensors"):
    out = tmp_path / name
    assert run(capsys, *common, "--output", out)[0] == 0
    assert torch_io.is_export(str(out))
    rc, io = run(capsys, *common, "--output", out)
    assert rc == 2 and "--overwrite" in one_error_line(io)
    assert run(capsys, *common, "--output", out, "--overwrite")[0] == 0
  # the checkpoint directory itself, and an input inside a checkpoint that would be replaced
  rc, io = run(capsys, *common, "--output", tiny_checkpoint)
  assert rc == 2 and "is the input" in one_error_line(io)
  rc, io = run(
    capsys, "import-torch", tmp_path / "g.pth", tmp_path / "ck", "--vgg-output", tmp_path / "ck"
  )
  assert rc == 2 and "two outputs of this run" in one_error_line(io)
  os.makedirs(tmp_path / "ck")
  shutil.copy(tmp_path / "g.pth", tmp_path / "ck" / "g.pth")
  assert (
    run(capsys, "import-torch", tmp_path / "ck" / "g.pth", tmp_path / "ck", "--overwrite")[0] == 2
  )
  assert os.listdir(tmp_path / "ck") == ["g.pth"]


def test_export_model_files_replace_only_their_own_kind(capsys, tiny_checkpoint, tmp_path):
  photo = _png(tmp_path / "c.png")
  photo_bytes = open(photo, "rb").read()
  for fmt in ("stablehlo", "onnx"):
    rc, io = run(
      capsys,
      "export-model",
      "--checkpoint",
      tiny_checkpoint,
      "--format",
      fmt,
      "--output",
      photo,
      "--overwrite",
    )
    assert rc == 2 and f"not an sk-jax {fmt} stylizer" in one_error_line(io)
  assert open(photo, "rb").read() == photo_bytes


def test_directory_mode_keeps_each_contents_subdirectory(capsys, tiny_checkpoint, tmp_path):
  coll = tmp_path / "coll"
  for rel, seed in (("a/x.png", 1), ("b/x.png", 2), ("x.jpg", 3)):
    _png(coll / rel, seed=seed)
  style = _png(tmp_path / "s.png", seed=9)
  out = tmp_path / "out"
  common = ("stylize", "--checkpoint", tiny_checkpoint, "--style", style, "--size", 16)
  rc, io = run(capsys, *common, "--content", coll, "--output", out)
  assert rc == 0, io.err
  written = sorted(
    os.path.relpath(os.path.join(r, n), out) for r, _, ns in os.walk(out) for n in ns
  )
  assert written == [
    ".sk-jax-outputs",
    "a/x_stylized_s.png",
    "b/x_stylized_s.png",
    "x_stylized_s.png",
  ]
  a, b = (np.asarray(Image.open(out / d / "x_stylized_s.png")) for d in "ab")
  assert not np.array_equal(a, b)  # two results, not one written twice
  # ours: written again; x.png beside x.jpg would give one name twice: refused before compute
  assert run(capsys, *common, "--content", coll, "--output", out)[0] == 0
  _png(coll / "x.png", seed=4)
  rc, io = run(capsys, *common, "--content", coll, "--output", tmp_path / "out2")
  assert rc == 2 and "two outputs of this run" in one_error_line(io)
  assert "x.jpg" in io.err and "x.png" in io.err and not os.path.exists(tmp_path / "out2")


def test_directory_outputs_go_only_into_empty_or_own_directories(capsys, gen, tmp_path, no_compute):
  style, content = _png(tmp_path / "s.png", seed=9), _png(tmp_path / "c" / "c.png")
  _png(tmp_path / "c" / "d.png", seed=2)
  foreign = tmp_path / "foreign"
  (foreign / "notes.txt").parent.mkdir()
  (foreign / "notes.txt").write_text("mine")
  rc, io = run(
    capsys,
    "stylize",
    "--checkpoint",
    gen,
    "--content",
    tmp_path / "c",
    "--style",
    style,
    "--output",
    foreign,
  )
  assert rc == 2 and "sk-jax did not write" in one_error_line(io)
  rc, io = run(
    capsys,
    "eval",
    "--checkpoint",
    gen,
    "--content-dir",
    content,
    "--style-dir",
    style,
    "--output-dir",
    foreign,
  )
  assert rc == 2 and "sk-jax did not write" in one_error_line(io)
  assert os.listdir(foreign) == ["notes.txt"]


@pytest.mark.parametrize(
  "output, needle",
  [
    ("o.h5", "cannot write images with the extension '.h5'"),
    ("o.psd", "cannot write images with the extension '.psd'"),
    ("o.xyz", "cannot write images with the extension '.xyz'"),
    ("notes.png", "exists and is not an image or video"),
  ],
)
def test_image_outputs_are_checked_before_compute(
  capsys, gen, tmp_path, no_compute, output, needle
):
  content = _png(tmp_path / "c.png")
  (tmp_path / "notes.png").write_text("a text file named like an image")
  rc, io = run(
    capsys,
    "stylize",
    "--checkpoint",
    gen,
    "--content",
    content,
    "--style",
    content,
    "--output",
    tmp_path / output,
  )
  assert rc == 2 and needle in one_error_line(io)
  assert (tmp_path / "notes.png").read_text().startswith("a text file")


def test_a_single_image_output_may_replace_an_image(tmp_path):
  """The rule image tools follow (unchanged from before; here through the new check)."""
  from sk_jax.io import files

  assert files.MARKER == ".sk-jax-outputs"  # the name the directory tests above use
  photo = _png(tmp_path / "old.png")
  files.check_outputs([files.image(photo)], [str(tmp_path / "c.png")])  # no error
  with pytest.raises(InputError, match="is the input"):
    files.check_outputs([files.image(photo)], [photo])


@pytest.mark.parametrize(
  "flags, needle",
  [
    (("--max-frames", -1), "--max-frames must be at least 1"),
    (("--fps", "nan"), "--fps must be a positive number, got nan"),
    (("--fps", "inf", "--output", "{tmp}/o.gif"), "--fps must be a positive number, got inf"),
    (("--size", 0, "--input", "{tmp}/tiny.gif"), "8x8 frames are smaller than 16 pixels"),
  ],
)
def test_stylize_video_bad_arguments_are_refused_up_front(
  capsys, gen, tmp_path, no_compute, flags, needle
):
  _gif(tmp_path / "a.gif")
  _gif(tmp_path / "tiny.gif", side=8)
  argv = ["stylize-video", "--checkpoint", gen, "--style", _png(tmp_path / "s.png")]
  argv += [str(f).format(tmp=tmp_path) for f in flags]
  if "--input" not in argv:
    argv += ["--input", tmp_path / "a.gif"]
  if "--output" not in argv:
    argv += ["--output", tmp_path / "out"]
  rc, io = run(capsys, *argv)
  assert rc == 2 and needle in one_error_line(io)
  assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "o.gif")


def test_negative_style_weights_are_one_line(capsys, gen, tmp_path, no_compute):
  a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", seed=1)
  rc, io = run(
    capsys,
    "stylize",
    "--checkpoint",
    gen,
    "--content",
    a,
    "--style",
    f"{a},{b}",
    "--style-weights",
    "-1,2",
    "--output",
    tmp_path / "o.png",
  )
  assert rc == 2 and "--style-weights" in one_error_line(io) and "usage" not in io.err


def test_a_bad_workdir_is_one_line(tmp_path, tiny_train_config):
  (tmp_path / "afile").write_text("x")
  with pytest.raises(InputError, match="afile: --workdir exists and is not a directory"):
    train_lib.train(tiny_train_config(), str(tmp_path / "afile"))
  with pytest.raises(InputError, match="/proc/sk-jax-x: cannot use it as --workdir"):
    train_lib.train(tiny_train_config(), "/proc/sk-jax-x")
  assert (tmp_path / "afile").read_text() == "x"


def test_train_py_names_a_bad_workdir_and_a_raising_config(tmp_path):
  (tmp_path / "afile").write_text("x")
  _one_line_exit_2(_train_py("--workdir", str(tmp_path / "afile")), "is not a directory")
  raising = tmp_path / "raise.py"
  raising.write_text("def get_config():\n  raise ValueError('boom')\n")
  _one_line_exit_2(
    _train_py("--config", str(raising), "--workdir", str(tmp_path / "w")),
    f"{raising}: malformed config (ValueError: boom)",
  )


def test_a_truncated_generator_is_one_line_without_an_asyncio_traceback(tmp_path):
  # The default model's size: with the tiny one, Orbax's other reads were done before it failed.
  config = sk_jax.ModelConfig()
  truncated = artifacts.save_generator(
    str(tmp_path / "truncated"), sk_jax.init_params(config, jax.random.key(0)), config
  )
  _truncate(_params_files(truncated)[-1])
  content = _png(tmp_path / "a.png")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sk_jax.cli",
      "stylize",
      "--checkpoint",
      str(truncated),
      "--content",
      content,
      "--style",
      content,
      "--size",
      "16",
      "--output",
      str(tmp_path / "o.png"),
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.count("\n") == 1 and str(truncated) in proc.stderr, proc.stderr[-2000:]
  assert "Event loop is closed" not in proc.stderr and not (tmp_path / "o.png").exists()


def test_a_bad_model_config_in_a_checkpoint_names_the_checkpoint(gen, tmp_path):
  bad = shutil.copytree(gen, tmp_path / "three")
  meta = bad / "model_config" / "metadata"
  record = json.loads(meta.read_text())
  record["kernel_size"] = "three"
  meta.write_text(json.dumps(record))
  with pytest.raises(InputError, match=f"^{bad}: model_config: model.kernel_size") as e:
    artifacts.load_generator(str(bad))
  assert "three" in str(e.value)


def test_devices_fifos_and_link_loops_are_named(capsys, tmp_path):
  fifo = tmp_path / "pipe.png"
  os.mkfifo(fifo)
  os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
  for path, needle in (
    (fifo, "a FIFO, not a regular file"),
    ("/dev/zero", "a character device, not a regular file"),
    (tmp_path / "loop.png", "symbolic link loop"),
  ):
    for read in (images.load_image, images.list_images):
      with pytest.raises(InputError, match=needle):  # a FIFO is never opened: this would block
        read(str(path))
    with pytest.raises(InputError, match=needle):
      from sk_jax.io import video

      video.read_frames(str(path))
  rc, io = run(
    capsys, "stylize", "--content", fifo, "--style", fifo, "--output", tmp_path / "o.png"
  )
  assert rc == 2 and "FIFO" in one_error_line(io)
