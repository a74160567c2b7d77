"""Training, JAX vs the plain-PyTorch mirror (sk_jax.torch_train): losses, the straight-through
gate, the discriminator, Adam, one train step's gradients per group and 10 steps' losses.

Loss terms are compared with float64 PyTorch on the same float32 inputs, so the tolerances
cover JAX's float32 rounding only, whatever the thread count."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from sk_jax import cli
from sk_jax.config import validate_config
from sk_jax.interop import port, torch_losses, torch_train, train_parity, train_report, tree_errors
from sk_jax.nn import losses, ops
from sk_jax.nn.discriminator import (
  DiscriminatorConfig,
  MultiScaleDiscriminator,
  init_discriminator,
)
from sk_jax.train import step as train


def _feats(rng, b=2, size=16, shift=0.0):
  """Random ReLU-like features {tap: (B, H, W, C)} at VGG's strides, float32."""
  out = {}
  for tap, stride in train_parity.TAP_STRIDE.items():
    hw, c = max(size // stride, 2), min(64 * stride, 512) // 8
    out[tap] = np.maximum(rng.normal(shift, 1.0, (b, hw, hw, c)), 0).astype(np.float32)
  return out


def _t64(feats):
  return {k: torch.from_numpy(v.transpose(0, 3, 1, 2).copy()).double() for k, v in feats.items()}


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_every_loss_term_matches_its_mirror():
  rng = np.random.default_rng(0)
  f_cs, f_c, f_s = _feats(rng), _feats(rng, shift=0.3), _feats(rng, shift=-0.2)
  t_cs, t_c, t_s = _t64(f_cs), _t64(f_c), _t64(f_s)
  checks = {
    "content": (losses.content_loss(f_cs, f_c), torch_losses.content_loss(t_cs, t_c)),
    "style mean_std": (losses.style_loss(f_cs, f_s), torch_losses.style_loss(t_cs, t_s)),
    "style gram": (
      losses.style_loss(f_cs, f_s, form="gram"),
      torch_losses.style_loss(t_cs, t_s, form="gram"),
    ),
  }
  imgs = [rng.uniform(0, 1, (2, 32, 32, 3)).astype(np.float32) for _ in range(4)]
  t_imgs = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double() for x in imgs]
  total, parts = losses.reconstruction_loss(*imgs, f_cs, f_c, f_s, f_c, 20.0, 0.5)
  t_total, pixel, feature = torch_losses.reconstruction_loss(
    *t_imgs, t_cs, t_c, t_s, t_c, 20.0, 0.5
  )
  checks.update(
    rec=(total, t_total), rec_pixel=(parts["pixel"], pixel), rec_feature=(parts["feature"], feature)
  )
  d_real = [rng.normal(0.5, 1, (2, s, s, 1)).astype(np.float32) for s in (5, 4, 3)]
  d_fake = [rng.normal(-0.5, 1, (2, s, s, 1)).astype(np.float32) for s in (5, 4, 3)]
  t_real = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double() for x in d_real]
  t_fake = [torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double() for x in d_fake]
  for kind in ("lsgan", "hinge"):
    checks[f"D {kind}"] = (
      losses.discriminator_loss(d_real, d_fake, kind),
      torch_losses.discriminator_loss(t_real, t_fake, kind),
    )
    checks[f"G adv {kind}"] = (
      losses.generator_adv_loss(d_fake, kind),
      torch_losses.generator_adv_loss(t_fake, kind),
    )
  # REMD with subsampling at relu3_1 (8 x 8 = 64 positions, 24 drawn) and all 16 at relu4_1.
  key = jax.random.key(3)
  idx = train_parity.remd_indices(key, 2, 32, 24)
  assert idx["relu3_1"][0].shape == (2, 24) and idx["relu4_1"] == (None, None)
  f32 = {k: _feats(np.random.default_rng(1), size=32)[k] for k in losses.REMD_LAYERS}
  s32 = {k: _feats(np.random.default_rng(2), size=32, shift=0.2)[k] for k in losses.REMD_LAYERS}
  t_idx = {l: tuple(None if i is None else torch.from_numpy(i) for i in p) for l, p in idx.items()}
  checks["remd"] = (
    losses.remd_loss(f32, s32, key, 24),
    torch_losses.remd_loss(_t64(f32), _t64(s32), t_idx),
  )
  # The indices are the ones losses.remd_loss draws: the same gathered positions.
  k_cs, _ = jax.random.split(jax.random.fold_in(key, 0))
  picked = losses.subsample_positions(f32["relu3_1"], k_cs, 24)
  gathered = torch_losses.positions(_t64(f32)["relu3_1"], torch.from_numpy(idx["relu3_1"][0]))
  np.testing.assert_array_equal(np.asarray(picked), gathered.float().numpy())
  for name, (ours, ref) in checks.items():
    ours, ref = np.asarray(ours, np.float64), ref.detach().numpy()
    assert ours.shape == ref.shape, name
    rel = np.max(np.abs(ours - ref) / np.abs(ref))
    assert rel < train_parity.LOSS_TOLERANCE, f"{name}: {ours} vs {ref} (rel {rel:.1e})"


def test_a_wrong_loss_is_caught():
  """The comparison has teeth: std without eps or a Gram normalised by H W only are caught."""
  rng = np.random.default_rng(0)
  f_cs, f_s = _feats(rng), _feats(rng, shift=0.3)
  ours = np.asarray(losses.style_loss(f_cs, f_s, form="gram"), np.float64)
  t_cs, t_s = _t64(f_cs), _t64(f_s)
  wrong = sum(
    (
      torch.bmm(a.flatten(2), a.flatten(2).transpose(1, 2)) / a[0, 0].numel()
      - torch.bmm(b.flatten(2), b.flatten(2).transpose(1, 2)) / b[0, 0].numel()
    )
    .square()
    .sum((1, 2))
    for a, b in ((t_cs[l], t_s[l]) for l in losses.STYLE_LAYERS)
  )
  assert np.max(np.abs(ours - wrong.numpy()) / wrong.numpy()) > 1e-2


def test_straight_through_gate_matches_jax():
  rng = np.random.default_rng(0)
  b, nc, ns = 2, 12, 20
  attn = jax.nn.softmax(rng.normal(0, 2, (b, nc, ns)).astype(np.float32), axis=-1)
  attn = np.asarray(attn)
  lam = rng.normal(1, 0.5, (b, nc)).astype(np.float32)
  beta = rng.normal(0, 0.5, (b, nc)).astype(np.float32) / ns
  w = rng.normal(0, 1, (b, nc, ns)).astype(np.float32)
  for temperature, surrogate in ((1.0, "sigmoid"), (0.3, "sigmoid"), (0.3, "linear")):

    def jax_loss(a, l_, be):
      gated, _, _ = ops.gated_attention(a, l_, be, temperature, surrogate=surrogate)
      return jnp.sum(gated * w)

    j_grads = jax.grad(jax_loss, argnums=(0, 1, 2))(attn, lam, beta)
    ta, tl, tb = (
      torch.from_numpy(x.copy()).double().requires_grad_(True) for x in (attn, lam, beta)
    )
    thresh = ta.bmm(ta.mean(1).unsqueeze(-1)).squeeze(-1) * tl + tb
    diff = (ta - thresh.unsqueeze(-1)) * ns
    gate = torch_train.StraightThroughGate.apply(diff, temperature, None, surrogate)
    assert 0 < float(gate.detach().mean()) < 1
    t_grads = torch.autograd.grad((ta * gate * torch.from_numpy(w).double()).sum(), (ta, tl, tb))
    for name, j, t in zip(("A", "lambda", "beta"), j_grads, t_grads):
      assert _rel(j, t.numpy()) < 1e-5, (name, temperature, surrogate, _rel(j, t.numpy()))
  # Forward: exact {0, 1} decisions, and given decisions are used as they are.
  diff = torch.tensor([-1.0, 0.0, 2.0], requires_grad=True)
  assert torch_train.StraightThroughGate.apply(diff, 1.0).tolist() == [0.0, 0.0, 1.0]
  hard = torch.tensor([1.0, 1.0, 0.0])
  out = torch_train.StraightThroughGate.apply(diff, 1.0, hard)
  assert out.tolist() == hard.tolist()
  (g,) = torch.autograd.grad(out.sum(), diff)
  s = torch.sigmoid(diff.detach())
  torch.testing.assert_close(g, s * (1 - s))


def _gate_model(**kw):
  from sk_jax.nn.generator import ModelConfig

  return ModelConfig(gate_hidden=8, kernel_hidden=16, gate_target=0.3, **kw)


@pytest.mark.parametrize("center", [False, True])
def test_budget_kept_fraction_and_offset_match_jax(center):
  """The budget term's soft kept fraction (its gradient reaches E_f through T alone) and the
  controller's offset on beta, in the Flax alignment and the mirror's TrainAlignment; with
  model.gate_center, E_f's outputs centred per image (its biases moved off their init, so
  that the centring matters)."""
  from sk_jax.nn.generator import Generator, init_params

  config = _gate_model(gate_force="controller", gate_center=center)
  params = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
  params["alignment"]["beta_offset"] = np.float32(0.7)
  if center:
    conv2 = params["alignment"]["gate"]["conv2"]
    conv2["bias"] = conv2["bias"] + np.array([-2.0, -3.0], np.float32)
  rng = np.random.default_rng(0)
  z_c, z_s = (np.maximum(rng.normal(0, 1, (2, 4, 4, 512)), 0).astype(np.float32) for _ in "cs")
  gen = Generator(config)

  def budget(p):
    _, aux = gen.apply({"params": p}, z_c, z_s, method="align")
    return jnp.mean((aux["kept_st"] - 0.3) ** 2), aux

  (j_val, j_aux), j_grads = jax.value_and_grad(budget, has_aux=True)(params)
  net = torch_train.TrainGenerator(config)
  net.load_state_dict(port.generator_to_torch(params))
  nchw = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  _, t_aux = net.alignment(nchw(z_c), nchw(z_s))
  t_val = (t_aux["kept_st"] - 0.3).square().mean()
  named = {f"alignment.{k}": v for k, v in net.alignment.named_parameters() if v.requires_grad}
  t_grads = dict(zip(named, torch.autograd.grad(t_val, list(named.values()))))
  # Without the offset the threshold differs (it is 0.7 / Ns higher with it).
  np.testing.assert_allclose(t_aux["threshold"].numpy(), j_aux["threshold"], rtol=1e-5)
  assert abs(float(t_val.detach()) - float(j_val)) <= 1e-6 + 1e-5 * abs(float(j_val))
  assert 0 < float(j_aux["kept_fraction"].mean()) < 1
  errs = tree_errors.group_errors(
    tree_errors.flat(j_grads), {k: v.double().numpy() for k, v in t_grads.items()}
  )
  assert errs["gate"]["norm"] > 0 and errs["gate"]["rel"] < train_parity.GRAD_TOLERANCE, errs
  np.testing.assert_allclose(t_aux["kept_std"].numpy(), j_aux["kept_std"], rtol=1e-5, atol=1e-7)


def test_mirror_controller_moves_the_offset_as_jax(vgg_params):
  """Trainer.train_step moves beta_offset by rate sign(kept - k*) (train.control_gate_offset),
  Adam leaves it alone, and a budget model's loss carries the budget term."""
  from sk_jax.nn.generator import init_params

  batch = train_parity.parity_batches(1, 2, 32)[0]
  vgg_sd = port.vgg16_to_torch(vgg_params)
  for force in ("controller", "budget"):
    config = _gate_model(gate_force=force)
    cfg = train_parity.train_config(config, 2, 32)
    cfg.disc.features, cfg.disc.num_layers = 8, 2
    _, disc = validate_config(cfg)
    g = jax.tree.map(np.asarray, init_params(config, jax.random.key(0)))
    d = init_discriminator(disc, jax.random.key(1))
    trainer = torch_train.Trainer(
      cfg, config, disc, port.generator_to_torch(g), port.discriminator_to_torch(d), vgg_sd
    )
    c, s = trainer.to_unit(batch["content"]), trainer.to_unit(batch["style"])
    idx = {l: (None, None) for l in losses.REMD_LAYERS}
    if force == "budget":
      total, terms, _, aux = trainer.generator_loss(c, s, idx)
      budget = float((aux["kept_st"][:2] - 0.3).square().mean().detach())
      assert terms["gate_budget"].item() == pytest.approx(budget, rel=1e-6)
      continue
    offsets = [0.0]
    for _ in range(3):
      m = trainer.train_step(c, s, idx)
      jax_offset = train.control_gate_offset(
        {"alignment": {"beta_offset": jnp.float32(offsets[-1])}},
        m["gate/kept_fraction"],
        0.3,
        float(cfg.opt.gate_offset_rate),
      )["alignment"]["beta_offset"]
      offsets.append(float(trainer.gen.alignment.beta_offset))
      assert offsets[-1] == float(jax_offset) and offsets[-1] != offsets[-2], offsets


def test_discriminator_and_its_weights_match_jax():
  disc = DiscriminatorConfig(features=8, num_layers=2)
  params = jax.tree.map(np.asarray, init_discriminator(disc, jax.random.key(0)))
  net = torch_losses.MultiScaleDiscriminator(disc).double()
  net.load_state_dict(port.discriminator_to_torch(params))
  back = port.discriminator_from_state_dict(port.discriminator_to_torch(params), disc)
  jax.tree.map(np.testing.assert_array_equal, back, params)  # the round trip is exact
  x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype(np.float32)
  dnet = MultiScaleDiscriminator(disc)
  j_loss = lambda p: losses.generator_adv_loss(dnet.apply({"params": p}, x))
  j_val, j_grad = jax.value_and_grad(j_loss)(params)
  t_val = torch_losses.generator_adv_loss(
    net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double())
  )
  t_grads = dict(zip(dict(net.named_parameters()), torch.autograd.grad(t_val, net.parameters())))
  assert abs(float(j_val) - float(t_val)) / float(t_val) < 1e-5
  errs = tree_errors.group_errors(
    tree_errors.flat(j_grad), {k: v.numpy() for k, v in t_grads.items()}
  )
  assert set(errs) == {"D scale0", "D scale1", "D scale2"}
  assert all(e["rel"] < 1e-4 for e in errs.values()), errs


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_adam_mirror_follows_optax(clip):
  """E_f's scale, bias correction, eps and the global-norm clip, 5 steps on random gradients."""
  rng = np.random.default_rng(0)
  params = {
    "alignment": {"gate": {"conv1": {"bias": rng.normal(0, 1, 4).astype(np.float32)}}},
    "decoder": {"bias": rng.normal(0, 1, 6).astype(np.float32)},
  }
  opt_cfg = _opt_config(clip)
  tx = train.make_optimizer(opt_cfg, 1e-2, gate_lr_scale=0.1)
  state = tx.init(params)
  t_params = port.generator_to_torch(params)
  adam = torch_train.Adam(
    t_params, 1e-2, opt_cfg.b1, opt_cfg.b2, opt_cfg.eps, clip, {"alignment.gate.conv1.bias": 0.1}
  )
  for step in range(5):
    grads = jax.tree.map(lambda p: rng.normal(0, 1, p.shape).astype(np.float32), params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    t_grads = {k: v.clone() for k, v in port.generator_to_torch(grads).items()}
    assert adam.step(t_grads, torch.tensor(1.0))[0]
  for k, v in port.generator_to_torch(params).items():
    np.testing.assert_allclose(t_params[k].numpy(), v.numpy(), rtol=1e-6, atol=1e-7)
  # A non-finite loss changes nothing, as sk_jax.train's _apply_if_finite.
  before = {k: v.clone() for k, v in t_params.items()}
  assert not adam.step(t_grads, torch.tensor(float("nan")))[0]
  assert all(torch.equal(before[k], t_params[k]) for k in before) and adam.count == 5


def _opt_config(clip):
  from sk_jax.nn.generator import ModelConfig

  cfg = train_parity.train_config(ModelConfig(), 2, 32)
  cfg.opt.grad_clip = clip
  return cfg.opt


@pytest.fixture(scope="module")
def tiny_result(tiny_generator, vgg_params):
  """compare_train on the tiny random generator: batch 2, 32 px crops, 10 steps."""
  params, config = tiny_generator
  cfg = train_parity.train_config(config, 2, 32)
  cfg.disc.features, cfg.disc.num_layers = 8, 2
  cfg.loss.remd_max_positions = 32  # relu3_1 subsampled (64 positions), relu4_1 not (16)
  validate_config(cfg)
  batches = train_parity.parity_batches(10, 2, 32)
  return train_parity.compare_train(params, config, vgg_params, cfg, batches)


def test_one_train_step_gradients_per_group(tiny_result):
  rows = {r["name"]: r for r in tiny_result["rows"]}
  for term in ("content", "style", "remd", "adv_g", "rec", "rec_pixel", "rec_feature", "d"):
    assert rows[term]["rel"] < train_parity.LOSS_TOLERANCE, rows[term]
  groups = ["gate", "kernel_head", "decoder"]
  for g in groups:
    r = rows[f"d(G total)/d {g}"]
    assert r["ok"] and r["norm"] > 0, r
    # The band only widens the tolerance where float32 itself is that uncertain.
    assert r["tol"] == max(train_parity.GRAD_TOLERANCE, train_parity.BAND_FACTOR * r["band"])
  for i in range(3):
    r = rows[f"d(D loss)/d D scale{i}"]
    assert r["ok"] and r["rel"] < train_parity.GRAD_TOLERANCE and r["norm"] > 0, r
  gate = tiny_result["gate"]
  assert gate["ok"] and gate["decisions"] == 3 * 2 * 16 * 16


def test_ten_steps_losses_side_by_side(tiny_result):
  steps = tiny_result["train_steps"]
  assert len(steps) == 10 and tiny_result["ok"], train_report.format_train_report(tiny_result)
  assert [("loss/d" in s["jax"]) for s in steps] == [t % 2 == 1 for t in range(10)]
  assert steps[0]["rel"]["loss/total"] < train_parity.LOSS_TOLERANCE  # same weights, same batch
  tol = tiny_result["tolerances"]["params"]
  assert tol < 1.0 and all(e["rel"] <= tol for e in tiny_result["divergence"].values())
  assert all(s["skipped"] == [0, 0] for s in steps)
  # Teacher-forced: every step from JAX's state; its losses as close as the one-batch table's,
  # its update within the first step's Adam bound, which does not grow with K.
  tols = tiny_result["tolerances"]
  assert tols["forced_update"] < tol / 2, tols
  for s in steps:
    f = s["forced"]
    assert max(f["rel"].values()) <= train_parity.LOSS_TOLERANCE, (s["step"], f["rel"])
    assert {"gate", "kernel_head", "decoder"} <= set(f["update"]), f["update"]
    assert all(e["rel"] <= tols["forced_update"] for e in f["update"].values()), f["update"]
    assert f["gate"]["ok"] and f["gate"]["flips"] == f["gate"]["flips_inside_band"]


def test_parity_train_cli(tmp_path, capsys, tiny_checkpoint, monkeypatch):
  cfg_path = tmp_path / "cfg.py"
  cfg_path.write_text(
    "import importlib.util, os\n"
    f"spec = importlib.util.spec_from_file_location('d', {train_parity.DEFAULT_CONFIG!r})\n"
    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
    "def get_config():\n"
    "  c = m.get_config()\n"
    "  c.disc.features, c.disc.num_layers = 8, 2\n"
    "  c.loss.remd_max_positions = 32\n"
    "  return c\n"
  )
  args = ["parity", "--train", "--checkpoint", tiny_checkpoint, "--size", "32"]
  args += ["--steps", "2", "--config", str(cfg_path)]
  out_json, out_png = tmp_path / "p.json", tmp_path / "p.png"
  assert cli.main([*args, "--json", str(out_json), "--plot", str(out_png)]) == 0
  out = capsys.readouterr().out
  assert "d(G total)/d gate" in out and "all within tolerance" in out
  assert out_json.stat().st_size > 0 and out_png.read_bytes()[:4] == b"\x89PNG"
  # A broken mirror (Eq. 6 without instance norm) is a failed check: exit 1, one line.
  monkeypatch.setattr(torch_train.torch_ref, "instance_norm", lambda x, eps=1e-5: x)
  assert cli.main(args) == 1
  captured = capsys.readouterr()
  assert "FAIL" in captured.out and captured.err.count("\n") == 1
  assert cli.main(["parity", "--train", "--checkpoint", tiny_checkpoint, "--size", "40"]) == 2
