"""The gate's restoring forces (docs/method.md, "The gate's equilibrium"): the beta-offset
controller, the budget term, the non-saturating surrogate and the fixed-quantile control."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sk_jax.errors import InputError
from sk_jax.interop import parity, port
from sk_jax.io import artifacts
from sk_jax.nn import ops
from sk_jax.nn.generator import Generator, ModelConfig, init_params
from sk_jax.train import step as train_lib

CONTROLLED = dict(gate_hidden=8, kernel_hidden=16, gate_target=0.25)


def _features(seed=0, nc=(6, 6), ns=(5, 7), c=16):
  rng = np.random.default_rng(seed)
  z_c = jnp.asarray(rng.normal(size=(2, *nc, c)), jnp.float32)
  z_s = jnp.asarray(rng.normal(size=(2, *ns, c)), jnp.float32)
  return z_c, z_s


def test_controller_steps_toward_the_target_and_settles():
  params = {"alignment": {"beta_offset": jnp.float32(0.0)}, "decoder": {"w": jnp.ones(3)}}
  up = train_lib.control_gate_offset(params, jnp.float32(0.4), 0.25, 0.01)
  down = train_lib.control_gate_offset(params, jnp.float32(0.1), 0.25, 0.01)
  assert float(up["alignment"]["beta_offset"]) == pytest.approx(0.01)
  assert float(down["alignment"]["beta_offset"]) == pytest.approx(-0.01)
  assert up["decoder"] is params["decoder"]
  # A synthetic gate whose kept fraction falls as the threshold rises, starting fully open:
  # the controller walks the offset to the target's threshold and then stays within a step.
  kept_of = lambda offset: 1.0 / (1.0 + np.exp(2.0 * (offset - 1.0)))
  p, history = params, []
  for _ in range(400):
    kept = kept_of(float(p["alignment"]["beta_offset"]))
    history.append(kept)
    p = train_lib.control_gate_offset(p, jnp.float32(kept), 0.25, 0.02)
  assert history[0] > 0.85
  assert np.all(np.abs(np.array(history[200:]) - 0.25) < 0.02)


def _gap_loss(z_c, z_s, beta, lam=0.0, **kw):
  """Z_cs and aux of a CGM with constant lambda and beta (units of 1/Ns)."""
  b, h, w, _ = z_c.shape
  ns = z_s.shape[1] * z_s.shape[2]
  lam = jnp.full((b, h, w), lam)
  out, aux = ops.aligned_style_features(
    z_c,
    z_s,
    lam,
    jnp.full((b, h, w), beta / ns),
    10.0,
    attention="cgm",
    temperature=1.0,
    return_aux=True,
    **kw,
  )
  return out, aux


def test_budget_term_has_a_gradient_when_the_gate_is_fully_open():
  z_c, z_s = _features()

  def budget(beta):
    _, aux = _gap_loss(z_c, z_s, beta)
    return jnp.mean((aux["kept_st"] - 0.25) ** 2), aux["kept_fraction"]

  (value, kept), grad = jax.value_and_grad(budget, has_aux=True)(-200.0)
  np.testing.assert_array_equal(kept, 1.0)  # the threshold is below every weight
  assert float(value) == pytest.approx(0.75**2)
  # Raising the threshold lowers the kept fraction: the force points the right way.
  assert float(grad) < 0 and abs(float(grad)) > 1e-3
  # The sigmoid surrogate of the task path has nothing left to say there.
  sig = jax.grad(lambda beta: jnp.sum(_gap_loss(z_c, z_s, beta)[0]))(-200.0)
  assert float(sig) == 0.0


def test_linear_surrogate_does_not_saturate():
  z_c, z_s = _features(1)
  loss = lambda beta, s: jnp.sum(_gap_loss(z_c, z_s, beta, surrogate=s)[0] ** 2)
  assert float(jax.grad(loss)(-200.0, "sigmoid")) == 0.0
  assert abs(float(jax.grad(loss)(-200.0, "linear"))) > 1e-3
  # Forward passes are identical: only the backward differs.
  np.testing.assert_array_equal(
    _gap_loss(z_c, z_s, 0.5, surrogate="linear")[0], _gap_loss(z_c, z_s, 0.5)[0]
  )


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 1.0])
def test_quantile_gate_keeps_its_share_of_every_row(fraction):
  z_c, z_s = _features(2)
  ns = z_s.shape[1] * z_s.shape[2]
  zeros = jnp.zeros(z_c.shape[:3])
  args = (z_c, z_s, zeros, zeros, 10.0)
  out, aux = ops.aligned_style_features(
    *args, attention="quantile", fraction=fraction, return_aux=True
  )
  k = ops.quantile_k(fraction, ns)
  assert k == max(1, round(fraction * ns))
  np.testing.assert_array_equal(np.sum(aux["mask"], axis=-1), k)
  ref = ops.aligned_style_features(*args, attention="topk", topk=k)
  np.testing.assert_array_equal(out, ref)
  np.testing.assert_allclose(aux["kept_std"], 0.0, atol=1e-7)


def test_kept_std_is_the_spread_over_content_positions():
  z_c, z_s = _features(3)
  _, aux = _gap_loss(z_c, z_s, 0.0, lam=1.0)
  rows = np.mean(np.asarray(aux["mask"], np.float64), axis=-1)
  np.testing.assert_allclose(aux["kept_std"], rows.std(axis=1), rtol=1e-5)
  assert float(np.min(aux["kept_std"])) > 0.01
  _, chunked = _gap_loss(z_c, z_s, 0.0, lam=1.0, query_chunk=7)
  for k in ("kept_fraction", "kept_std"):
    np.testing.assert_allclose(chunked[k], aux[k], rtol=1e-5, atol=1e-7)


def test_model_config_checks_the_gate_fields():
  with pytest.raises(InputError, match="gate_target must be in"):
    ModelConfig(gate_target=1.5)
  with pytest.raises(InputError, match="quantile.*needs model.gate_target"):
    ModelConfig(attention="quantile")
  with pytest.raises(InputError, match="gate_force"):
    ModelConfig(gate_target=0.3, gate_force="magic")
  with pytest.raises(InputError, match="gate_surrogate"):
    ModelConfig(gate_surrogate="tanh")
  assert ModelConfig(gate_target=0.3).gate_controlled
  assert ModelConfig(gate_target=0.3, gate_force="budget").gate_budgeted
  assert not ModelConfig().gate_controlled and not ModelConfig(attention="full").gate_budgeted


def test_offset_shifts_the_threshold_and_gets_no_gradient():
  config = ModelConfig(**CONTROLLED)
  params = init_params(config, jax.random.key(0))
  assert float(params["alignment"]["beta_offset"]) == 0.0
  plain = init_params(ModelConfig(gate_hidden=8, kernel_hidden=16), jax.random.key(0))
  assert "beta_offset" not in plain["alignment"]
  z_c, z_s = _features(4, nc=(4, 4), ns=(4, 4), c=512)
  gen = Generator(config)

  def run(p):
    out, aux = gen.apply({"params": p}, z_c, z_s)
    return jnp.mean(out**2), aux["kept_fraction"]

  raised = jax.tree.map(lambda x: x, params)
  raised["alignment"] = {**params["alignment"], "beta_offset": jnp.float32(2.0)}
  # One compiled program for both parameter sets (op by op, the decoder's backward pass
  # dispatches and caches hundreds of small programs).
  value_and_grad = jax.jit(jax.value_and_grad(run, has_aux=True))
  (_, kept0), grads = value_and_grad(params)
  (_, kept1), _ = value_and_grad(raised)
  assert float(jnp.mean(kept1)) < float(jnp.mean(kept0))
  assert float(grads["alignment"]["beta_offset"]) == 0.0


def test_checkpoints_exports_and_torch_carry_the_offset(tmp_path, vgg_params):
  config = ModelConfig(**CONTROLLED)
  params = jax.tree.map(np.asarray, init_params(config, jax.random.key(1)))
  params["alignment"]["beta_offset"] = np.float32(0.37)
  path = artifacts.save_generator(str(tmp_path / "gen"), params, config)
  loaded, loaded_config = artifacts.load_generator(path)
  assert loaded_config == config
  assert float(loaded["alignment"]["beta_offset"]) == pytest.approx(0.37)
  back = port.generator_from_state_dict(port.generator_to_torch(params), config)
  assert float(back["alignment"]["beta_offset"]) == pytest.approx(0.37)
  # The PyTorch reference applies the offset too: its forward matches with a nonzero one.
  rng = np.random.default_rng(0)
  content = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  style = rng.uniform(size=(32, 40, 3)).astype(np.float32)
  rows = parity.compare(params, vgg_params, config, content, style)
  assert all(r.ok for r in rows), parity.format_table(rows)


def test_centred_gate_ignores_ef_level_and_matches_torch(vgg_params):
  """model.gate_center: moving E_f's output biases (the level Adam drifted in the long runs)
  changes neither Z_cs nor the kept fraction; the offset still moves the level; the PyTorch
  reference centres the same way."""
  config = ModelConfig(**CONTROLLED, gate_center=True)
  params = init_params(config, jax.random.key(2))
  z_c, z_s = _features(5, nc=(4, 4), ns=(4, 4), c=512)
  gen = jax.jit(lambda p: Generator(config).apply({"params": p}, z_c, z_s))

  def with_alignment(**changes):
    p = jax.tree.map(lambda x: x, params)
    p["alignment"] = {**params["alignment"], **changes}
    return p

  gate = params["alignment"]["gate"]
  drifted = with_alignment(
    gate={
      **gate,
      "conv2": {**gate["conv2"], "bias": gate["conv2"]["bias"] + jnp.array([-3.0, -5.0])},
    }
  )
  (out0, aux0), (out1, aux1) = gen(params), gen(drifted)
  np.testing.assert_array_equal(
    np.asarray(aux0["kept_fraction"]), np.asarray(aux1["kept_fraction"])
  )
  np.testing.assert_allclose(np.asarray(out1), np.asarray(out0), rtol=1e-4, atol=1e-4)
  _, aux2 = gen(with_alignment(beta_offset=jnp.float32(2.0)))
  assert float(jnp.mean(aux2["kept_fraction"])) < float(jnp.mean(aux0["kept_fraction"]))
  rng = np.random.default_rng(1)
  content = rng.uniform(size=(32, 32, 3)).astype(np.float32)
  style = rng.uniform(size=(32, 40, 3)).astype(np.float32)
  # the drifted biases: uncentred, torch's gate would sit 5 / Ns lower and keep more
  np_params = jax.tree.map(np.asarray, drifted)
  np_params["alignment"]["beta_offset"] = np.float32(0.4)
  rows = parity.compare(np_params, vgg_params, config, content, style)
  assert all(r.ok for r in rows), parity.format_table(rows)


def test_train_step_moves_only_the_offset_by_the_controller(
  vgg_params, tiny_train_config, random_batches
):
  """Two steps of the real train step: the offset moves by exactly one controller step each,
  in the direction of kept - k*, and Adam leaves it alone; the budget variant logs its term."""

  from sk_jax.train import sharding

  rate = 0.03
  cfg = tiny_train_config(
    model__gate_target=0.05, opt__gate_offset_rate=rate, data__batch_size=2, data__crop=32
  )
  mesh = sharding.make_mesh(cfg.mesh)
  setup = train_lib.make_setup(cfg, mesh)
  state = setup.init(0)
  vgg_dev = jax.device_put(vgg_params, sharding.replicated(mesh))
  offsets, kept = [0.0], []
  for b in random_batches(2, batch=2, crop=32):
    state, m = setup.step_fn(state, vgg_dev, sharding.global_batch(mesh, b))
    m = jax.device_get(m)
    kept.append(float(m["gate/kept_fraction"]))
    offsets.append(float(m["gate/beta_offset"]))
    assert 0.0 < float(m["gate/kept_std"]) < 0.5
  for before, after, k in zip(offsets, offsets[1:], kept):
    assert after - before == pytest.approx(rate * np.sign(k - 0.05), abs=1e-7)
  assert offsets[-1] == pytest.approx(2 * rate)  # the fresh gate keeps more than 5 %
