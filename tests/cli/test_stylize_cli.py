"""`sk-jax stylize` / `sk-jax init`, the Python API, and every bad input the core issue lists."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from skimage import data

import sk_jax
from sk_jax import cli
from sk_jax.errors import InputError
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import artifacts, files, images

SMALL = sk_jax.ModelConfig(gate_hidden=8, kernel_hidden=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  path = tmp_path_factory.mktemp("ckpt") / "gen"
  return artifacts.save_generator(str(path), sk_jax.init_params(SMALL, jax.random.key(0)), SMALL)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  (root / "content").mkdir()
  (root / "style").mkdir()
  Image.fromarray(data.astronaut()[::8, ::8]).save(root / "content" / "astronaut.png")
  Image.fromarray(data.coffee()[::8, ::8]).save(root / "content" / "coffee.jpg")
  Image.fromarray(data.brick()[::8, ::8]).save(root / "style" / "brick.png")
  Image.fromarray(data.chelsea()[::8, ::8]).save(root / "style" / "chelsea.png")
  return root


def run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  return rc, capsys.readouterr()


def test_stylize_one_pair_to_a_file(capsys, ckpt, inputs, tmp_path):
  out = tmp_path / "result.png"
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    inputs / "content" / "astronaut.png",
    "--style",
    inputs / "style" / "brick.png",
    "--output",
    out,
    "--checkpoint",
    ckpt,
    "--size",
    32,
  )
  assert rc == 0, io.err
  assert Image.open(out).size == (32, 32)
  # Whether the gate selects, on one line of stderr.
  kept = re.search(r"^cgm kept fraction of the style positions: (\d\.\d{3})$", io.err, re.M)
  assert kept and 0.0 < float(kept.group(1)) <= 1.0, io.err
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # a normal file, not the temp file's 0600


def test_stylize_directories_writes_every_pair(capsys, ckpt, inputs, tmp_path):
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    inputs / "content",
    "--style",
    inputs / "style",
    "--output",
    tmp_path / "out",
    "--checkpoint",
    ckpt,
    "--size",
    32,
    "--alpha",
    0.5,
  )
  assert rc == 0, io.err
  assert sorted(os.listdir(tmp_path / "out")) == [
    files.MARKER,  # the list of files sk-jax wrote there, so that a rerun may replace them
    "astronaut_stylized_brick.png",
    "astronaut_stylized_chelsea.png",
    "coffee_stylized_brick.png",
    "coffee_stylized_chelsea.png",
  ]
  coffee = Image.open(tmp_path / "out" / "coffee_stylized_brick.png")
  assert coffee.size == (48, 32)  # 400 x 600 / 8, short side resized to 32
  kept = re.search(r"^cgm kept fraction per pair, mean: (\S+) \((\S+)-(\S+)\)$", io.err, re.M)
  mean, low, high = map(float, kept.groups())
  assert 0.0 < low <= mean <= high <= 1.0, io.err


def test_python_api_accepts_paths_and_arrays(ckpt, inputs):
  st = Stylizer.load(ckpt)
  a = st.stylize(
    str(inputs / "content" / "astronaut.png"), str(inputs / "style" / "brick.png"), size=32
  )
  b = st.stylize(
    images.load_image(str(inputs / "content" / "astronaut.png")),
    images.load_image(str(inputs / "style" / "brick.png")),
    size=32,
  )
  assert a.shape == (32, 32, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  c = st.stylize(
    str(inputs / "content" / "astronaut.png"),
    str(inputs / "style" / "brick.png"),
    size=32,
    alpha=0.0,
  )
  assert np.abs(a - c).max() > 1e-3  # alpha moves the result


def test_init_writes_a_loadable_checkpoint(capsys, tmp_path):
  config_file = tmp_path / "cfg.py"
  config_file.write_text(
    "import ml_collections\n"
    "def get_config():\n"
    "  return ml_collections.ConfigDict({'model': {'kernel_size': 5, 'gate_hidden': 8}})\n"
  )
  rc, io = run(capsys, "init", "--output", tmp_path / "gen", "--seed", 3, "--config", config_file)
  assert rc == 0, io.err
  _, config = artifacts.load_generator(str(tmp_path / "gen"))
  assert config.kernel_size == 5 and config.gate_hidden == 8


def _bad_files(root):
  """name -> path of each bad input the core issue lists."""
  (root / "empty.png").write_bytes(b"")
  (root / "text.jpg").write_text("this is not a JPEG\n")
  Image.fromarray(data.astronaut()[::4, ::4]).save(root / "whole.jpg")
  raw = (root / "whole.jpg").read_bytes()
  (root / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
  Image.fromarray(np.zeros((10, 40, 3), np.uint8)).save(root / "tiny.png")
  return {
    "missing": root / "missing.png",
    "empty": root / "empty.png",
    "text": root / "text.jpg",
    "truncated": root / "truncated.jpg",
    "tiny": root / "tiny.png",
  }


@pytest.mark.parametrize(
  "case,message",
  [
    ("missing", "no such file"),
    ("empty", "empty file"),
    ("text", "not an image"),
    ("truncated", "truncated"),
    ("tiny", "smaller than 16 pixels"),
  ],
)
@pytest.mark.parametrize("role", ["content", "style"])
def test_bad_images_are_one_line_errors(capsys, ckpt, inputs, tmp_path, case, message, role):
  bad = _bad_files(tmp_path)[case]
  good = inputs / ("style/brick.png" if role == "content" else "content/astronaut.png")
  args = {"content": bad, "style": good} if role == "content" else {"content": good, "style": bad}
  out = tmp_path / "out.png"
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    args["content"],
    "--style",
    args["style"],
    "--output",
    out,
    "--checkpoint",
    ckpt,
    "--size",
    32,
  )
  assert rc == 2
  assert io.err.count("\n") == 1 and str(bad) in io.err and message in io.err, io.err
  assert "Traceback" not in io.err
  assert not out.exists()


def test_a_bad_file_in_a_directory_stops_before_any_output(capsys, ckpt, inputs, tmp_path):
  content = tmp_path / "content"
  content.mkdir()
  Image.fromarray(data.astronaut()[::8, ::8]).save(content / "a.png")
  (content / "b.jpg").write_text("not an image")
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    content,
    "--style",
    inputs / "style",
    "--output",
    tmp_path / "out",
    "--checkpoint",
    ckpt,
    "--size",
    32,
  )
  assert rc == 2 and "b.jpg" in io.err
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_max_pixels_names_the_flag(capsys, ckpt, inputs, tmp_path):
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    inputs / "content" / "astronaut.png",
    "--style",
    inputs / "style" / "brick.png",
    "--output",
    tmp_path / "o.png",
    "--checkpoint",
    ckpt,
    "--max-pixels",
    1000,
  )
  assert rc == 2 and "--max-pixels" in io.err and "astronaut.png" in io.err


def test_bad_checkpoints(capsys, inputs, tmp_path, generator_with_config_json):
  common = [
    "stylize",
    "--content",
    inputs / "content" / "astronaut.png",
    "--style",
    inputs / "style" / "brick.png",
    "--output",
    tmp_path / "o.png",
    "--size",
    32,
  ]
  # (none given: the bundled one)
  rc, io = run(capsys, *common, "--checkpoint", tmp_path / "missing")
  assert rc == 2 and "no such generator checkpoint directory" in io.err and "sk-jax init" in io.err
  (tmp_path / "empty").mkdir()
  rc, io = run(capsys, *common, "--checkpoint", tmp_path / "empty")
  assert rc == 2 and "empty directory" in io.err and str(tmp_path / "empty") in io.err
  # Parameters of one model config under the JSON of another.
  other = sk_jax.ModelConfig(kernel_size=5, gate_hidden=8, kernel_hidden=16)
  generator_with_config_json(
    tmp_path / "mixed", sk_jax.init_params(other, jax.random.key(0)), SMALL.to_dict()
  )
  rc, io = run(capsys, *common, "--checkpoint", tmp_path / "mixed")
  assert rc == 2 and "kernel_head" in io.err and "(5632,)" in io.err and "(3584,)" in io.err
  # A config JSON with fields this model does not have.
  generator_with_config_json(
    tmp_path / "foreign",
    sk_jax.init_params(SMALL, jax.random.key(0)),
    {**SMALL.to_dict(), "num_heads": 8},
  )
  rc, io = run(capsys, *common, "--checkpoint", tmp_path / "foreign")
  assert rc == 2 and "num_heads" in io.err
  assert not (tmp_path / "o.png").exists()


def test_malformed_config_for_init(capsys, tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  rc, io = run(capsys, "init", "--output", tmp_path / "gen", "--config", bad)
  assert rc == 2 and "bad.py" in io.err and "malformed config" in io.err
  assert not (tmp_path / "gen").exists()


def test_console_script_exit_code_and_no_traceback(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sk_jax.cli",
      "stylize",
      "--content",
      str(tmp_path / "nope.png"),
      "--style",
      str(tmp_path / "nope.png"),
      "--output",
      str(tmp_path / "o.png"),
      "--checkpoint",
      str(tmp_path),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert (
    proc.stderr.strip().count("\n") == 0
    and "nope.png" in proc.stderr
    and "Traceback" not in proc.stderr
  )


# Image modes that must be converted, not refused.


def _save(tmp_path, name, img, **kw):
  path = tmp_path / name
  img.save(path, **kw)
  return str(path)


def test_greyscale_palette_cmyk_and_16_bit_are_converted(tmp_path):
  rgb = Image.fromarray(data.astronaut()[::16, ::16])
  for name, img in [
    ("grey.png", rgb.convert("L")),
    ("palette.png", rgb.convert("P")),
    ("cmyk.jpg", rgb.convert("CMYK")),
    ("la.png", rgb.convert("LA")),
  ]:
    out = images.load_image(_save(tmp_path, name, img))
    assert (
      out.shape == (32, 32, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    ), name
  grey16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
  out = images.load_image(_save(tmp_path, "g16.png", Image.fromarray(grey16)))
  np.testing.assert_allclose(out[..., 0], grey16 / 65535.0, atol=1e-6)


def test_rgba_is_composited_on_white(tmp_path):
  rgba = np.zeros((20, 20, 4), np.uint8)
  rgba[..., 0] = 255  # red ...
  rgba[:10, :, 3] = 255  # ... opaque in the top half, fully transparent below
  out = images.load_image(_save(tmp_path, "rgba.png", Image.fromarray(rgba, "RGBA")))
  np.testing.assert_allclose(out[0, 0], [1, 0, 0])
  np.testing.assert_allclose(out[-1, -1], [1, 1, 1])


def test_exif_rotation_is_applied(tmp_path):
  img = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # 40 wide, 20 tall
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display
  out = images.load_image(_save(tmp_path, "rot.jpg", img, exif=exif))
  assert out.shape == (40, 20, 3)


def test_input_error_messages_name_the_file(tmp_path):
  with pytest.raises(InputError, match="nope.png: no such file"):
    images.load_image(str(tmp_path / "nope.png"))
  with pytest.raises(InputError, match="no images found"):
    images.list_images(str(tmp_path))
