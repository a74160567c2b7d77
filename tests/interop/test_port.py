"""Porting VGG-16 from PyTorch and exporting back: layouts, exactness, and bad checkpoints."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch  # the optional extra [torch]; CI installs it (torch==2.13.0, CPU build)
from torch import nn

import sk_jax
from sk_jax import cli
from sk_jax.errors import InputError
from sk_jax.interop import port, torch_io
from sk_jax.io import artifacts, weights
from sk_jax.nn import vgg
from sk_jax.nn.generator import ModelConfig, init_params

# torchvision's vgg16().features layout, written out so that no torchvision is needed.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_TAP_RELU = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 18, "relu5_1": 25}


class TorchVGG16(nn.Module):
  """Plain torch.nn VGG-16 with torchvision's key names; a tiny classifier (its keys are ignored)."""

  def __init__(self):
    super().__init__()
    layers, cin = [], 3
    for v in _CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
        cin = v
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Sequential(nn.Linear(8, 4))
    for m in self.features:
      if isinstance(m, nn.Conv2d):  # torchvision's init, plus non-zero biases so they are tested
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.uniform_(m.bias, -0.1, 0.1)

  def taps(self, images_nchw):
    """The reference: ImageNet normalisation, then torchvision's layers, read at every tap."""
    mean = torch.tensor(vgg.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(vgg.IMAGENET_STD).view(1, 3, 1, 1)
    x, out = (images_nchw - mean) / std, {}
    for i, layer in enumerate(self.features[:26]):
      x = layer(x)
      for tap, idx in _TAP_RELU.items():
        if idx == i:
          out[tap] = x.clone()  # the next ReLU is in place
    return out


@pytest.fixture(scope="module")
def torch_vgg():
  torch.manual_seed(0)
  return TorchVGG16().eval()


@pytest.fixture(scope="module")
def vgg_files(torch_vgg, tmp_path_factory):
  from safetensors.torch import save_file

  d = tmp_path_factory.mktemp("vgg")
  sd = torch_vgg.state_dict()
  torch.save(sd, d / "vgg16.pth")
  save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "vgg16.safetensors"))
  return {"pth": str(d / "vgg16.pth"), "safetensors": str(d / "vgg16.safetensors")}


@pytest.fixture(scope="module")
def small_image(photo):
  from skimage.transform import resize

  return resize(photo, (32, 32), anti_aliasing=True).astype(np.float32)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_ported_encoder_matches_torch_tap_by_tap(fmt, vgg_files, torch_vgg, small_image):
  import jax

  params = torch_io.vgg16_from_torch(vgg_files[fmt])
  with torch.no_grad():
    ref = torch_vgg.taps(torch.from_numpy(small_image.transpose(2, 0, 1)[None].copy()))
  with jax.default_matmul_precision("highest"):
    ours = sk_jax.vgg16_features(params, small_image[None])
  for tap in vgg.TAPS:
    expected = ref[tap].numpy().transpose(0, 2, 3, 1)
    assert float(np.abs(expected).max()) > 0, (
      f"{tap}: reference is all zeros, the test would be vacuous"
    )
    _, rel = port.relative_error(ours[tap], expected)
    assert rel < 1e-4, f"{tap}: relative error {rel:.2e} against PyTorch"


def test_pth_and_safetensors_port_identically(vgg_files):
  a = torch_io.vgg16_from_torch(vgg_files["pth"])
  b = torch_io.vgg16_from_torch(vgg_files["safetensors"])
  for name in vgg.CONVS:
    np.testing.assert_array_equal(a[name]["kernel"], b[name]["kernel"])
    np.testing.assert_array_equal(a[name]["bias"], b[name]["bias"])


@pytest.mark.parametrize("layout", ["state_dict", "model", "module_prefix", "sequential", "fp16"])
def test_checkpoint_layouts(layout, torch_vgg, tmp_path):
  sd = torch_vgg.state_dict()
  obj = {
    "state_dict": lambda: {"state_dict": sd, "epoch": 90, "arch": "vgg16"},
    "model": lambda: {"model": sd, "optimizer_step": 7},
    "module_prefix": lambda: {f"module.{k}": v for k, v in sd.items()},
    "sequential": lambda: torch_vgg.features.state_dict(),
    "fp16": lambda: {k: v.half() for k, v in sd.items()},
  }[layout]()
  path = tmp_path / "ckpt.pth"
  torch.save(obj, path)
  params = torch_io.vgg16_from_torch(str(path))
  w = sd["features.17.weight"]
  if layout == "fp16":
    w = w.half().float()
  np.testing.assert_array_equal(params["conv4_1"]["kernel"], w.numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
    params["conv5_3"]["bias"],
    sd["features.28.bias"].half().float().numpy()
    if layout == "fp16"
    else sd["features.28.bias"].numpy(),
  )


def test_bundled_weights_round_trip_bit_exact(vgg_params, tmp_path):
  sd = port.vgg16_to_torch(vgg_params)
  assert sorted(sd) == sorted(port._torch_shapes())
  torch.save(sd, tmp_path / "bundled.pth")
  back = torch_io.vgg16_from_torch(str(tmp_path / "bundled.pth"))
  for name in vgg.CONVS:
    for key in ("kernel", "bias"):
      assert back[name][key].dtype == np.float32
      assert np.array_equal(back[name][key], vgg_params[name][key]), (
        f"{name}.{key} changed in the round trip"
      )


def test_generator_export_import_round_trip(tmp_path):
  import jax

  config = ModelConfig(learn_sharpness=True, kernel_size=5, gate_hidden=16, kernel_hidden=16)
  params = jax.tree.map(np.asarray, init_params(config, jax.random.key(3)))
  sd = port.generator_to_torch(params)
  assert sd["alignment.gate.conv1.weight"].shape == (16, 512, 3, 3)  # OIHW
  assert sd["kernel_head.conv2.weight"].shape == (512 * 11, 16, 1, 1)
  back = port.generator_from_state_dict(sd, config)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, back)

  vgg_small = {
    n: {k: np.random.default_rng(0).normal(size=s).astype(np.float32) for k, s in shapes.items()}
    for n, shapes in vgg.param_shapes().items()
  }
  for name in ("model.pth", "model.safetensors"):
    path = torch_io.export_torch(params, config, vgg_small, str(tmp_path / name))
    got, got_config, got_vgg = torch_io.read_export(path)
    assert got_config == config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params, got)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), vgg_small, got_vgg)

  model = torch_io.load_torch_model(str(tmp_path / "model.pth"))  # strict load: every key maps
  assert torch.equal(
    model.generator.alignment.log_sharpness,
    torch.tensor(float(params["alignment"]["log_sharpness"])),
  )


def test_generator_state_dict_errors():
  import jax

  config = ModelConfig(gate_hidden=8, kernel_hidden=8)
  sd = port.generator_to_torch(jax.tree.map(np.asarray, init_params(config, jax.random.key(0))))
  missing = {k: v for k, v in sd.items() if k != "decoder.dec1_1.bias"}
  with pytest.raises(InputError, match=r"missing decoder\.dec1_1\.bias \(expected shape \(3,\)\)"):
    port.generator_from_state_dict(missing, config)
  wrong = dict(sd, **{"kernel_head.conv1.weight": torch.zeros(8, 512, 1, 1)})
  with pytest.raises(
    InputError,
    match=r"kernel_head\.conv1\.weight has shape \(8, 512, 1, 1\), "
    r"expected \(8, 512, 3, 3\)",
  ):
    port.generator_from_state_dict(wrong, config)
  with pytest.raises(InputError, match=r"unexpected tensor alignment\.log_sharpness"):
    port.generator_from_state_dict(
      dict(sd, **{"alignment.log_sharpness": torch.tensor(2.3)}), config
    )


# --- the command line --------------------------------------------------------------------


def test_port_vgg16_cli_verify_writes_a_dir_that_load_vgg16_reads(vgg_files, tmp_path, capsys):
  out = tmp_path / "ported"
  rc = cli.main(
    ["port-vgg16", vgg_files["safetensors"], str(out), "--verify", "--verify-size", "32"]
  )
  stdout = capsys.readouterr().out
  assert rc == 0
  for tap in vgg.TAPS:
    assert f"\n{tap} " in stdout and "pass" in stdout.split(f"\n{tap} ")[1].splitlines()[0]
  loaded = weights.load_vgg16(str(out))  # what --vgg and model.vgg_weights accept
  direct = torch_io.vgg16_from_torch(vgg_files["pth"])
  for name in vgg.CONVS:
    np.testing.assert_array_equal(loaded[name]["kernel"], direct[name]["kernel"])


def test_port_vgg16_verify_fails_on_a_wrong_conversion(vgg_files, tmp_path, capsys, monkeypatch):
  real = torch_io.vgg16_from_torch

  def swapped(path):  # a converter bug: kernels read as (kh, kw, O, I) -> spatially transposed
    params = real(path)
    params["conv2_1"]["kernel"] = np.ascontiguousarray(
      params["conv2_1"]["kernel"].transpose(1, 0, 2, 3)
    )
    return params

  monkeypatch.setattr(torch_io, "vgg16_from_torch", swapped)
  out = tmp_path / "ported"
  rc = cli.main(["port-vgg16", vgg_files["pth"], str(out), "--verify", "--verify-size", "32"])
  captured = capsys.readouterr()
  assert rc == 2
  assert (
    "--verify failed at relu2_1" in captured.err
    and "relu1_1" not in captured.err.split("failed at")[1]
  )
  assert "relu1_1" in captured.out and "FAIL" in captured.out
  assert not out.exists()


def _bad(tmp_path, sd_edit):
  torch.manual_seed(1)
  sd = TorchVGG16().state_dict()
  sd_edit(sd)
  path = tmp_path / "bad.pth"
  torch.save(sd, path)
  return str(path)


@pytest.mark.parametrize(
  "edit, expected",
  [
    (lambda sd: sd.pop("features.28.bias"), "missing features.28.bias (expected shape (512,))"),
    (
      lambda sd: sd.update({"features.0.weight": torch.zeros(64, 3, 5, 5)}),
      "features.0.weight has shape (64, 3, 5, 5), expected (64, 3, 3, 3)",
    ),
    (
      lambda sd: sd.update({"features.30.weight": torch.zeros(512, 512, 3, 3)}),
      "unexpected layer features.30.weight with shape (512, 512, 3, 3)",
    ),
  ],
)
def test_bad_checkpoints_are_one_line_errors(edit, expected, tmp_path, capsys):
  path = _bad(tmp_path, edit)
  out = tmp_path / "out"
  rc = cli.main(["port-vgg16", path, str(out)])
  err = capsys.readouterr().err
  assert rc == 2
  assert expected in err and path in err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert not out.exists()


class _Payload:
  """Pickles as a call to open(marker, 'w'): loading it unsafely would create the marker file."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_code_running_pickle_is_refused_not_executed(legacy, tmp_path, capsys):
  marker = tmp_path / "payload-ran"
  path = tmp_path / "evil.pth"
  obj = {"features.0.weight": torch.zeros(64, 3, 3, 3), "hook": _Payload(str(marker))}
  if legacy:
    with open(path, "wb") as f:
      pickle.dump(obj, f, protocol=2)
  else:
    torch.save(obj, path)
  assert not marker.exists()
  rc = cli.main(["port-vgg16", str(path), str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert rc == 2
  assert "refused" in err and "nothing was executed" in err and err.count("\n") == 1
  assert not marker.exists(), "the pickle payload ran"
  assert not (tmp_path / "out").exists()


def test_not_a_checkpoint(tmp_path, capsys):
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"this is not a checkpoint at all")
  assert cli.main(["port-vgg16", str(junk), str(tmp_path / "o")]) == 2
  assert "not a PyTorch checkpoint" in capsys.readouterr().err
  assert cli.main(["port-vgg16", str(tmp_path / "absent.pth"), str(tmp_path / "o")]) == 2
  assert "no such file" in capsys.readouterr().err
  (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
  assert cli.main(["port-vgg16", str(tmp_path / "bad.safetensors"), str(tmp_path / "o")]) == 2
  assert "not a safetensors file" in capsys.readouterr().err


def test_export_and_import_torch_cli(tmp_path, capsys):
  import jax

  config = ModelConfig(gate_hidden=8, kernel_hidden=8)
  params = init_params(config, jax.random.key(5))
  ckpt = artifacts.save_generator(str(tmp_path / "g"), params, config)
  assert cli.main(["export-torch", "--checkpoint", ckpt, "--output", str(tmp_path / "g.pth")]) == 0
  assert (
    cli.main(
      [
        "import-torch",
        str(tmp_path / "g.pth"),
        str(tmp_path / "g2"),
        "--vgg-output",
        str(tmp_path / "vgg"),
      ]
    )
    == 0
  )
  capsys.readouterr()
  back, back_config = artifacts.load_generator(str(tmp_path / "g2"))
  assert back_config == config
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, back
  )
  bundled = weights.load_vgg16()
  np.testing.assert_array_equal(
    weights.load_vgg16(str(tmp_path / "vgg"))["conv1_1"]["kernel"], bundled["conv1_1"]["kernel"]
  )
  # a plain VGG-16 file is not an export
  torch.save(port.vgg16_to_torch(bundled), tmp_path / "vgg.pth")
  assert cli.main(["import-torch", str(tmp_path / "vgg.pth"), str(tmp_path / "g3")]) == 2
  assert "not an sk-jax export" in capsys.readouterr().err
  assert not (tmp_path / "g3").exists()


def test_subprocess_refuses_payload_without_traceback(tmp_path):
  marker = tmp_path / "payload-ran"
  torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pth")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "sk_jax.cli",
      "port-vgg16",
      str(tmp_path / "evil.pth"),
      str(tmp_path / "out"),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("sk-jax port-vgg16: error:") and proc.stderr.count("\n") == 1
  assert "Traceback" not in proc.stderr
  assert not marker.exists()
