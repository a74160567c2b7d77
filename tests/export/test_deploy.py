"""`sk-jax export-model`: StableHLO and ONNX stylizers against the live JAX forward pass, and Orbax interop.

The loaders run in subprocesses that import jax, numpy, onnxruntime or orbax only, and
assert that no sk_jax module was imported: the artifacts need none of its code.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import onnx  # the optional extra [onnx]; the README's test command installs it
import onnxruntime  # noqa: F401
import pytest

from sk_jax import cli
from sk_jax.export import function as export_fn
from sk_jax.export import onnx as onnx_export
from sk_jax.export import stablehlo
from sk_jax.interop import port
from sk_jax.interop.parity import GATE_BAND
from sk_jax.io import artifacts
from sk_jax.nn.generator import stylize_images

# (content H, W; style H, W; batch): two sizes from one artifact, content and style independent.
SIZES = [((32, 48), (40, 32), 2), ((48, 32), (32, 32), 1)]

STABLEHLO_LOADER = """
import sys
import jax
import numpy as np

# The documented loader: jax only.
with open(sys.argv[1], "rb") as f:
  exported = jax.export.deserialize(f.read())
data = np.load(sys.argv[2])
out = {}
for i in range(len(data.files) // 2):
  out[f"out{i}"] = np.asarray(exported.call(data[f"content{i}"], data[f"style{i}"]))
np.savez(sys.argv[3], **out)
assert not [m for m in sys.modules if m.startswith("sk_jax")], "the loader imported sk_jax"
print(",".join(exported.platforms))
"""

ONNX_LOADER = """
import sys
import numpy as np
import onnxruntime as ort

sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
data = np.load(sys.argv[2])
out = {f"out{i}": sess.run(["stylized"], {"content": data[f"content{i}"], "style": data[f"style{i}"]})[0]
       for i in range(len(data.files) // 2)}
np.savez(sys.argv[3], **out)
assert not [m for m in sys.modules if m.startswith("sk_jax")], "the loader imported sk_jax"
print(",".join(i.name for i in sess.get_inputs()), ",".join(o.name for o in sess.get_outputs()))
"""

ORBAX_LOADER = """
import json
import os
import sys
import numpy as np
import orbax.checkpoint as ocp

# The documented plain-Orbax read of a generator checkpoint.
ckpt = os.path.abspath(sys.argv[1])
params = ocp.StandardCheckpointer().restore(os.path.join(ckpt, "params"))
with open(os.path.join(ckpt, "model_config", "metadata")) as f:
  model_config = json.load(f)
flat, dtypes = {}, set()
def walk(prefix, tree):
  for k, v in tree.items():
    if isinstance(v, dict):
      walk(f"{prefix}/{k}", v)
    else:
      flat[f"{prefix}/{k}"] = np.asarray(v).astype(np.float32)
      dtypes.add(str(np.asarray(v).dtype))
walk("", params)
np.savez(sys.argv[2], **flat)
assert not [m for m in sys.modules if m.startswith("sk_jax")], "the loader imported sk_jax"
print(json.dumps({"model_config": model_config, "dtypes": sorted(dtypes)}))
"""


def run_cli(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  return rc, capsys.readouterr()


def run_script(script, *args):
  proc = subprocess.run(
    [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip().splitlines()[-1]


def flat_params(params):
  return {
    jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)
  }


def dir_size(path):
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


@pytest.fixture(scope="module")
def pairs(photo, texture):
  """Content/style batches at the SIZES: crops of the astronaut and the bricks at 1/8 scale."""
  small_c, small_s = photo[::8, ::8], texture[::8, ::8]
  out = []
  for (hc, wc), (hs, ws), b in SIZES:
    c = np.stack([small_c[i * 8 : i * 8 + hc, :wc] for i in range(b)])
    s = np.stack([small_s[:hs, i * 8 : i * 8 + ws] for i in range(b)])
    out.append((np.ascontiguousarray(c), np.ascontiguousarray(s)))
  return out


@pytest.fixture(scope="module")
def pairs_file(pairs, tmp_path_factory):
  path = tmp_path_factory.mktemp("pairs") / "pairs.npz"
  np.savez(
    path,
    **{f"{k}{i}": x for i, pair in enumerate(pairs) for k, x in zip(("content", "style"), pair)},
  )
  return path


@pytest.fixture(scope="module")
def reference(tiny_generator, vgg_params, pairs):
  """The live JAX forward pass at every size."""
  params, config = tiny_generator
  return [np.asarray(stylize_images(params, vgg_params, config, c, s)[0]) for c, s in pairs]


@pytest.fixture(scope="module")
def stablehlo_file(tiny_checkpoint, tmp_path_factory):
  out = tmp_path_factory.mktemp("hlo") / "model.stablehlo"
  assert (
    cli.main(
      [
        "export-model",
        "--checkpoint",
        tiny_checkpoint,
        "--format",
        "stablehlo",
        "--platforms",
        "cpu,cuda,tpu",
        "--output",
        str(out),
      ]
    )
    == 0
  )
  return out


# ----------------------------------------------------------------------------- StableHLO


def test_stablehlo_artifact_equals_jax_at_two_sizes_without_sk_jax(
  stablehlo_file, pairs_file, reference, tmp_path
):
  platforms = run_script(STABLEHLO_LOADER, stablehlo_file, pairs_file, tmp_path / "out.npz")
  assert platforms == "cpu,cuda,tpu"
  got = np.load(tmp_path / "out.npz")
  for i, ref in enumerate(reference):
    assert got[f"out{i}"].shape == ref.shape
    assert port.relative_error(got[f"out{i}"], ref)[1] < 1e-5


def test_stablehlo_calling_convention(stablehlo_file):
  exported = stablehlo.load_stablehlo(str(stablehlo_file))
  content, style = exported.in_avals
  assert str(content.shape) == "(b, 8*hc, 8*wc, 3)" and str(style.shape) == "(b, 8*hs, 8*ws, 3)"
  assert content.dtype == style.dtype == np.float32
  assert str(exported.out_avals[0].shape) == "(b, 8*hc, 8*wc, 3)"


def test_stablehlo_refuses_a_size_that_is_not_a_multiple_of_8(stablehlo_file):
  with open(stablehlo_file, "rb") as f:
    exported = jax.export.deserialize(f.read())
  ok = np.zeros((1, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match="Division had remainder 4 when computing the value of 'hc'"):
    exported.call(np.zeros((1, 36, 32, 3), np.float32), ok)
  with pytest.raises(ValueError, match="when computing the value of 'ws'"):
    exported.call(ok, np.zeros((1, 32, 30, 3), np.float32))
  # 8 px is a multiple of 8 but too small for the reflection padding (hc >= 2); jax's message
  # is less specific there.
  with pytest.raises(ValueError, match="Error refining shapes"):
    exported.call(np.zeros((1, 8, 32, 3), np.float32), ok)


# ----------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_with_gate(tiny_generator, vgg_params):
  params, config = tiny_generator
  return onnx_export.onnx_session(
    onnx_export.export_onnx(params, vgg_params, config, gate_output=True)
  )


def test_onnx_equals_jax_and_gate_decisions_agree(
  onnx_with_gate, tiny_generator, vgg_params, pairs, reference
):
  params, config = tiny_generator
  for (c, s), ref in zip(pairs, reference):
    out, mask = onnx_with_gate.run(["stylized", "gate_mask"], {"content": c, "style": s})
    assert out.shape == ref.shape
    assert port.relative_error(out, ref)[1] < 1e-4
    jax_mask, gap = export_fn.reference_gate(params, vgg_params, config, c, s)
    flipped = mask != jax_mask
    assert 0 < jax_mask.mean() < 1  # the gate does decide something here
    assert not flipped.any() or gap[flipped].max() < GATE_BAND["float32"], (
      f"{flipped.sum()} gate decisions flipped, largest gap {gap[flipped].max():.2e}"
    )


def test_onnx_carries_the_default_gate(vgg_params, pairs):
  """configs/default.py's gate (the controller's offset on a centred E_f) survives the ONNX
  export: E_f's biases moved far from their init (centring then matters) and a nonzero offset."""
  from sk_jax.nn.generator import ModelConfig, init_params

  config = ModelConfig(gate_hidden=8, kernel_hidden=16, gate_target=0.25, gate_center=True)
  params = jax.tree.map(np.asarray, init_params(config, jax.random.key(3)))
  params["alignment"]["beta_offset"] = np.float32(0.6)
  conv2 = params["alignment"]["gate"]["conv2"]
  conv2["bias"] = conv2["bias"] + np.array([-2.0, -3.0], np.float32)
  session = onnx_export.onnx_session(
    onnx_export.export_onnx(params, vgg_params, config, gate_output=True)
  )
  c, s = pairs[0]
  out, mask = session.run(["stylized", "gate_mask"], {"content": c, "style": s})
  ref = np.asarray(stylize_images(params, vgg_params, config, c, s)[0])
  assert port.relative_error(out, ref)[1] < 1e-4
  jax_mask, gap = export_fn.reference_gate(params, vgg_params, config, c, s)
  assert 0 < jax_mask.mean() < 1
  flipped = mask != jax_mask
  assert not flipped.any() or gap[flipped].max() < GATE_BAND["float32"]


def test_onnx_cli_export_runs_with_plain_onnxruntime(
  tiny_checkpoint, pairs_file, reference, tmp_path, capsys
):
  out = tmp_path / "model.onnx"
  rc, io = run_cli(
    capsys, "export-model", "--checkpoint", tiny_checkpoint, "--format", "onnx", "--output", out
  )
  assert rc == 0, io.err
  assert io.out.strip() == str(out)
  assert run_script(ONNX_LOADER, out, pairs_file, tmp_path / "out.npz") == "content,style stylized"
  got = np.load(tmp_path / "out.npz")
  for i, ref in enumerate(reference):
    assert port.relative_error(got[f"out{i}"], ref)[1] < 1e-4
  model = onnx.load(str(out))
  dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
  assert [dims(v) for v in model.graph.input] == [
    ["b", "8*hc", "8*wc", 3],
    ["b", "8*hs", "8*ws", 3],
  ]
  assert [v.name for v in model.graph.output] == ["stylized"]


def test_onnx_refuses_a_size_that_is_not_a_multiple_of_8(onnx_with_gate):
  ok = np.zeros((1, 32, 32, 3), np.float32)
  with pytest.raises(Exception, match="content_height_must_be_a_multiple_of_8"):
    onnx_with_gate.run(None, {"content": np.zeros((1, 36, 32, 3), np.float32), "style": ok})
  with pytest.raises(Exception, match="style_width_must_be_a_multiple_of_8"):
    onnx_with_gate.run(None, {"content": ok, "style": np.zeros((1, 32, 44, 3), np.float32)})


# ----------------------------------------------------------------------------- Orbax


def test_plain_orbax_reads_a_generator_checkpoint(tiny_checkpoint, tmp_path):
  result = json.loads(run_script(ORBAX_LOADER, tiny_checkpoint, tmp_path / "p.npz"))
  params, config = artifacts.load_generator(tiny_checkpoint)
  assert result == {"model_config": config.to_dict(), "dtypes": ["float32"]}
  plain = np.load(tmp_path / "p.npz")
  ours = {"/" + "/".join(k.strip("[]'").split("']['")): v for k, v in flat_params(params).items()}
  assert sorted(plain.files) == sorted(ours)
  for k, v in ours.items():
    np.testing.assert_array_equal(plain[k], v)


def test_bfloat16_checkpoint_halves_the_size(
  tiny_checkpoint, tiny_generator, vgg_params, pairs, reference, tmp_path, capsys
):
  out = tmp_path / "gen_bf16"
  rc, io = run_cli(
    capsys,
    "export-model",
    "--checkpoint",
    tiny_checkpoint,
    "--format",
    "orbax",
    "--dtype",
    "bfloat16",
    "--output",
    out,
  )
  assert rc == 0, io.err
  assert dir_size(out) < 0.6 * dir_size(tiny_checkpoint)
  params16, config = artifacts.load_generator(str(out))
  assert config == tiny_generator[1]
  ref = flat_params(tiny_generator[0])
  for k, v in flat_params(params16).items():
    assert v.dtype == np.float32
    np.testing.assert_allclose(v, ref[k], rtol=2**-8, atol=1e-30)
  # Plain Orbax sees bfloat16 arrays.
  assert json.loads(run_script(ORBAX_LOADER, out, tmp_path / "p.npz"))["dtypes"] == ["bfloat16"]
  (c, s), image = pairs[0], reference[0]
  image16 = np.asarray(stylize_images(params16, vgg_params, config, c, s)[0])
  assert np.abs(image16 - image).mean() * 255 < 1.0


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
  "argv, message",
  [
    (
      ["--checkpoint", "{tmp}/nope", "--format", "stablehlo"],
      "no such generator checkpoint directory",
    ),
    (["--format", "tflite"], "--format must be one of stablehlo, onnx, orbax, got 'tflite'"),
    (["--format", "stablehlo", "--platforms", "cpu,gpu"], "--platforms: unknown platform 'gpu'"),
    (
      ["--format", "stablehlo", "--dtype", "bfloat16"],
      "--dtype bfloat16 applies to --format orbax",
    ),
    (["--format", "orbax", "--dtype", "float16"], "--dtype must be float32 or bfloat16"),
    (
      ["--format", "stablehlo", "--output", "{tmp}/afile/model.stablehlo"],
      "is not a directory",
    ),
    (["--format", "onnx", "--output", "{tmp}"], "is a directory, expected a file name"),
  ],
)
def test_bad_inputs_are_one_line_and_write_nothing(
  argv, message, tiny_checkpoint, tmp_path, capsys
):
  (tmp_path / "afile").write_text("x")
  argv = [a.format(tmp=tmp_path) for a in argv]
  if "--checkpoint" not in argv:
    argv += ["--checkpoint", tiny_checkpoint]
  if "--output" not in argv:
    argv += ["--output", str(tmp_path / "out")]
  rc, io = run_cli(capsys, "export-model", *argv)
  assert rc == 2
  assert io.err.count("\n") == 1 and message in io.err, io.err
  assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_onnx_without_the_extra_is_an_input_error(monkeypatch, tiny_checkpoint, tmp_path, capsys):
  monkeypatch.setattr(onnx_export, "onnx_available", lambda: False)
  rc, io = run_cli(
    capsys,
    "export-model",
    "--checkpoint",
    tiny_checkpoint,
    "--format",
    "onnx",
    "--output",
    tmp_path / "m.onnx",
  )
  assert rc == 2 and "pip install 'sk-jax[onnx]'" in io.err
  assert os.listdir(tmp_path) == []
