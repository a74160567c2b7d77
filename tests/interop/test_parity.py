"""The whole generator, JAX vs the plain-PyTorch reference (sk_jax.interop.torch_ref), module by module."""

import numpy as np
import pytest
import torch  # the optional extra [torch]; CI installs it (torch==2.13.0, CPU build)

from sk_jax import cli
from sk_jax.interop import parity, torch_ref
from sk_jax.io import artifacts
from sk_jax.nn.generator import ModelConfig, init_params

EXPECTED_ROWS = [
  "encoder relu1_1",
  "encoder relu2_1",
  "encoder relu3_1",
  "encoder relu4_1",
  "encoder relu5_1",
  "encoder relu4_1",
  "attention A",
  "gate mask",
  "Z_cs",
  "kernel F1 (k x 1)",
  "kernel F2 (1 x k)",
  "kernel bias B",
  "Z_bar (Eq. 6)",
  "decoded image",
]


def random_params(config, seed):
  """init_params, with the two small-initialised output layers redrawn so that the kernels and
  the gate depend on their inputs (at init F1, F2 are nearly deltas and lambda nearly 1)."""
  import jax

  params = jax.tree.map(np.asarray, init_params(config, jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  head = params["kernel_head"]["conv2"]
  head["kernel"] = rng.normal(0, 0.02, head["kernel"].shape).astype(np.float32)
  if config.attention == "cgm":
    gate = params["alignment"]["gate"]["conv2"]
    gate["kernel"] = rng.normal(0, 0.02, gate["kernel"].shape).astype(np.float32)
  return params


@pytest.fixture(scope="module")
def pair(photo):
  """Packaged photos: the astronaut as content (64 x 64), scikit-image's coffee as style (64 x 96)."""
  from skimage import data

  style = data.coffee().astype(np.float32) / 255.0
  return parity.prepare_image(photo, 64), parity.prepare_image(style, 64)


@pytest.fixture(scope="module")
def default_model():
  config = ModelConfig()
  return config, random_params(config, seed=1)


def _by_name(rows):
  return {(r.name, r.note if r.name.startswith("encoder") else ""): r for r in rows}


def test_float32_generator_matches_torch_reference(default_model, pair, vgg_params):
  config, params = default_model
  rows = parity.compare(params, vgg_params, config, *pair)
  assert [r.name for r in rows] == EXPECTED_ROWS
  for r in rows:
    assert r.ok, (
      f"{r.name}: relative error {r.max_rel:.2e} above {r.tolerance:g}\n{parity.format_table(rows)}"
    )
    if r.name != "gate mask":
      assert r.tolerance == 1e-4 and r.max_rel < 1e-4
  # The comparison is not vacuous: the gate keeps some entries and drops others, the kernels
  # are not deltas, and the image is not flat.
  _, t_aux = _torch_run(config, params, vgg_params, pair)
  kept = float(t_aux["mask"].mean())
  assert 0.05 < kept < 0.95, kept
  assert float(t_aux["f_v"].std()) > 1e-2


def _torch_run(config, params, vgg_params, pair):
  from sk_jax.interop import port

  enc = torch_ref.VGGEncoder()
  enc.load_state_dict(port.vgg16_to_torch(vgg_params))
  gen = torch_ref.Generator(config)
  gen.load_state_dict(port.generator_to_torch(params))
  c, s = (torch.from_numpy(x.transpose(2, 0, 1)[None].copy()) for x in pair)
  with torch.no_grad():
    return gen(enc(c)["relu4_1"], enc(s)["relu4_1"])


@pytest.mark.parametrize(
  "variant",
  [
    dict(
      kernel_size=5,
      shuffle_groups=1,
      gate_renormalize=True,
      learn_sharpness=True,
      gate_hidden=32,
      kernel_hidden=32,
    ),
    dict(attention="full", kernel_size=1, shuffle_groups=8, gate_hidden=32, kernel_hidden=32),
    dict(attention="full", gate_hidden=32, kernel_hidden=32),
    dict(attention="topk", topk=5, gate_hidden=32, kernel_hidden=32),
    dict(attention="topk", topk=2, gate_renormalize=True, gate_hidden=32, kernel_hidden=32),
    dict(
      attention="cgm",
      gate_lambda="softplus",
      gate_renormalize=True,
      gate_hidden=32,
      kernel_hidden=32,
    ),
  ],
  ids=[
    "k5-renorm-learned-sharpness",
    "no-gate-k1",
    "full",
    "topk5",
    "topk2-renorm",
    "cgm-softplus-renorm",
  ],
)
def test_float32_variants_and_alpha(variant, pair, vgg_params):
  config = ModelConfig(**variant)
  params = random_params(config, seed=2)
  small = tuple(parity.prepare_image(x, 32) for x in pair)
  rows = parity.compare(params, vgg_params, config, *small, alpha=0.6)
  assert ("gate mask" in [r.name for r in rows]) == (config.attention != "full")
  bad = [r for r in rows if not r.ok]
  assert not bad, parity.format_table(rows)
  if config.attention == "topk":  # the selection is not vacuous: min(K, Ns) of Ns per row
    _, t_aux = _torch_run(config, params, vgg_params, small)
    ns = t_aux["mask"].shape[-1]
    assert torch.all(t_aux["mask"].sum(-1) == min(config.topk, ns)) and config.topk < ns


def test_bfloat16_within_documented_tolerance(pair, vgg_params):
  config = ModelConfig(dtype="bfloat16", gate_hidden=32, kernel_hidden=32)
  params = random_params(config, seed=3)
  rows = parity.compare(params, vgg_params, config, *pair)
  assert all(r.ok for r in rows), parity.format_table(rows)
  by = _by_name(rows)
  assert by[("encoder relu4_1", "content")].tolerance == parity.TOLERANCES["bfloat16"]["encoder"]
  # bfloat16 really was used: float32-level agreement would mean a dtype was dropped somewhere.
  assert by[("encoder relu4_1", "content")].max_rel > 1e-4
  gate = by[("gate mask", "")]
  assert gate.max_rel < parity.GATE_BAND["bfloat16"]  # every flip lies inside the band
  assert gate.max_abs < 0.01, "more than 1% of the gate decisions flipped"


def test_gate_flips_are_excused_only_inside_the_band():
  ns = 4
  attn = torch.tensor([[[0.50, 0.30, 0.10, 0.10], [0.25, 0.25, 0.25, 0.25]]])
  thresh = torch.tensor([[0.30 - 1e-7, 0.20]])
  own = ((attn - thresh.unsqueeze(-1)) * ns > 0).float()  # row 0 keeps 0.50 and the 0.30 tie
  t_aux = {"attention": attn, "threshold": thresh, "own_mask": own}
  near = own.clone()
  near[0, 0, 1] = 0.0  # JAX dropped the entry 1e-7 above its threshold: rounding noise
  row, adopted = parity._gate_agreement(near.numpy(), t_aux, band=1e-4)
  assert row.ok and row.max_abs == 1 / 8 and row.max_rel < 1e-4
  assert np.array_equal(adopted, near.numpy())  # the reference follows JAX inside the band
  far = own.clone()
  far[0, 1, 2] = 0.0  # 0.25 vs threshold 0.20 is a real disagreement
  row, adopted = parity._gate_agreement(far.numpy(), t_aux, band=1e-4)
  assert not row.ok and row.max_rel == pytest.approx(0.05 / max(0.20, 1 / ns))
  assert adopted[0, 1, 2] == 1.0  # not adopted: the disagreement stays visible downstream
  row, adopted = parity._gate_agreement(own.numpy(), t_aux, band=1e-4)
  assert row.ok and row.max_abs == 0 and adopted is None


def test_a_broken_module_fails_at_that_module(default_model, pair, vgg_params, monkeypatch):
  config, params = default_model
  monkeypatch.setattr(torch_ref, "channel_shuffle", lambda x, groups: x)  # a forgotten GS
  rows = parity.compare(params, vgg_params, config, *pair)
  failed = [r.name for r in rows if not r.ok]
  assert failed[0] == "Z_bar (Eq. 6)", parity.format_table(rows)
  assert set(failed) <= {"Z_bar (Eq. 6)", "decoded image"}


def test_parity_cli(tmp_path, capsys, monkeypatch):
  import jax

  config = ModelConfig(gate_hidden=32, kernel_hidden=32)
  ckpt = artifacts.save_generator(
    str(tmp_path / "g"), init_params(config, jax.random.key(0)), config
  )
  assert cli.main(["parity", "--checkpoint", ckpt, "--size", "32"]) == 0
  out = capsys.readouterr().out
  assert "matmul precision 'highest'" in out and "dtype float32" in out
  for name in EXPECTED_ROWS:
    assert f"\n{name} " in out
  assert f"all {len(EXPECTED_ROWS)} rows within tolerance" in out

  monkeypatch.setattr(torch_ref, "instance_norm", lambda x, eps=1e-5: x)  # IN dropped from Eq. 6
  # A numerical mismatch is a failed check (exit 1), not bad input (exit 2).
  assert cli.main(["parity", "--checkpoint", ckpt, "--size", "32"]) == 1
  captured = capsys.readouterr()
  assert "FAIL" in captured.out
  assert captured.err.startswith("sk-jax parity: parity failed (float32) at: Z_bar (Eq. 6)")
  assert captured.err.count("\n") == 1

  assert cli.main(["parity", "--checkpoint", str(tmp_path / "absent")]) == 2
  assert "no such generator checkpoint directory" in capsys.readouterr().err
