"""The three aggregations of the Style Alignment Encoding (full, topK, CGM) against numpy oracles,
the CGM's readings, and the migration of configs written before `model.attention` existed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sk_jax.errors import InputError
from sk_jax.io import artifacts
from sk_jax.nn import ops
from sk_jax.nn.alignment import GateNet, StyleAlignment
from sk_jax.nn.generator import ModelConfig, init_params, stylize_images


def np_softmax_attention(q, k, sharpness):
  cos = (q @ k.T) / (np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(k, axis=1)[None])
  logits = sharpness * cos
  a = np.exp(logits - logits.max(1, keepdims=True))
  return a / a.sum(1, keepdims=True)


def np_attention(z_c, z_s, sharpness, attention, lam=None, beta=None, k=None, renormalize=False):
  """Eq. 1, then "full" (Eq. 2), "topk" (the k largest per row) or "cgm" (Eqs. 3-5), then Eq. 2; float64."""
  b, h, w, c = z_c.shape
  q = z_c.reshape(b, -1, c).astype(np.float64)
  kv = z_s.reshape(b, -1, c).astype(np.float64)
  out, masks = np.zeros_like(q), []
  for n in range(b):
    a = np_softmax_attention(q[n], kv[n], sharpness)
    if attention == "full":
      mask = np.ones_like(a)
    elif attention == "topk":
      mask = np.zeros_like(a)
      for u in range(a.shape[0]):
        mask[u, np.argsort(-a[u])[:k]] = 1.0
    else:
      a_r = a.mean(axis=0)  # Eq. 3: mean attention per style position
      # Eq. 4: one threshold per content position
      t = lam[n].reshape(-1) * (a @ a_r) + beta[n].reshape(-1)
      mask = (a - t[:, None] > 0).astype(np.float64)  # Eq. 5
    a = a * mask
    if renormalize and attention != "full":
      a = a / (a.sum(1, keepdims=True) + 1e-12)
    out[n] = a @ kv[n]
    masks.append(mask)
  return out.reshape(b, h, w, c), np.stack(masks)


def _features(seed, hw_c=(3, 4), hw_s=(5, 3), c=8):
  rng = np.random.default_rng(seed)
  z_c = np.abs(rng.normal(size=(2, *hw_c, c))).astype(np.float32)
  z_s = np.abs(rng.normal(size=(2, *hw_s, c))).astype(np.float32)
  lam = rng.uniform(0.5, 1.5, size=(2, *hw_c)).astype(np.float32)
  beta = rng.uniform(-0.02, 0.02, size=(2, *hw_c)).astype(np.float32)
  return z_c, z_s, lam, beta


@pytest.mark.parametrize(
  "attention,k,renormalize",
  [
    ("full", None, False),
    ("topk", 1, False),
    ("topk", 4, False),
    ("topk", 4, True),
    ("topk", 15, False),
    ("topk", 99, False),
    ("cgm", None, False),
    ("cgm", None, True),
  ],
)
def test_each_attention_matches_its_numpy_oracle(attention, k, renormalize):
  z_c, z_s, lam, beta = _features(1)
  got, aux = ops.aligned_style_features(
    z_c, z_s, lam, beta, 5.0, attention=attention, topk=k, renormalize=renormalize, return_aux=True
  )
  expected, mask = np_attention(z_c, z_s, 5.0, attention, lam, beta, k, renormalize)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(aux["mask"]), mask)
  np.testing.assert_allclose(np.asarray(aux["kept_fraction"]), mask.mean(axis=(1, 2)), rtol=1e-6)
  if attention == "topk":  # exactly min(k, Ns) per row; k >= Ns is Eq. 2
    assert np.all(np.asarray(aux["mask"]).sum(-1) == min(k, 15))


def test_an_unknown_attention_is_refused():
  z_c, z_s, lam, beta = _features(2)
  with pytest.raises(ValueError, match="attention"):
    ops.aligned_style_features(z_c, z_s, lam, beta, 5.0, attention="sparse")


def test_topk_passes_gradient_to_the_kept_weights_only():
  attn = jnp.array([[[0.5, 0.3, 0.15, 0.05]]])
  grad = jax.grad(lambda a: jnp.sum(ops.topk_attention(a, 2)[0] * jnp.arange(1.0, 5.0)))(attn)
  np.testing.assert_array_equal(np.asarray(grad), [[[1.0, 2.0, 0.0, 0.0]]])


def test_unrenormalised_masking_shrinks_z_cs_and_renormalising_restores_the_scale():
  # The mechanism behind the drift (docs/method.md): without renormalisation every dropped
  # weight removes mass from Z_cs, so a loss that wants Z_cs's magnitude pushes the gate open.
  z_c, z_s, lam, beta = _features(3)
  full = np.linalg.norm(ops.aligned_style_features(z_c, z_s, lam, beta, 5.0, attention="full"))
  for attention in ("topk", "cgm"):
    plain, aux = ops.aligned_style_features(
      z_c, z_s, lam, beta, 5.0, attention=attention, topk=3, return_aux=True
    )
    renorm = ops.aligned_style_features(
      z_c, z_s, lam, beta, 5.0, attention=attention, topk=3, renormalize=True
    )
    assert 0 < float(np.mean(aux["kept_fraction"])) < 1
    assert np.linalg.norm(plain) < 0.9 * full
    assert np.linalg.norm(renorm) > 0.9 * full


def test_cgm_surrogate_sends_gradient_to_lambda_and_beta():
  z_c, z_s, lam, beta = _features(4)

  def loss(lam, beta):
    return jnp.sum(
      ops.aligned_style_features(z_c, z_s, lam, beta, 5.0, attention="cgm", temperature=1.0)
    )

  g_lam, g_beta = jax.grad(loss, argnums=(0, 1))(lam, beta)
  assert np.all(np.isfinite(g_lam)) and np.abs(g_lam).sum() > 0 and np.abs(g_beta).sum() > 0
  # A higher threshold removes weight from Z_cs, whose entries are all positive here: the loss falls.
  assert float(np.sum(g_beta)) < 0 and float(np.sum(g_lam)) < 0


@pytest.mark.parametrize("form", ["linear", "softplus"])
def test_gate_net_starts_at_lambda_one_beta_zero(form):
  z = jnp.asarray(np.abs(np.random.default_rng(5).normal(size=(1, 4, 4, 16))), jnp.float32)
  net = GateNet(8, lambda_form=form)
  params = net.init(jax.random.key(0), z)
  lam, beta = net.apply(params, z)
  np.testing.assert_allclose(np.asarray(lam), 1.0, atol=0.05)
  np.testing.assert_allclose(np.asarray(beta), 0.0, atol=0.05)
  if form == "softplus":  # kept positive whatever the output layer learns
    params = jax.tree.map(lambda p: p - 3.0, params)
    assert float(jnp.min(net.apply(params, z)[0])) > 0


def test_alignment_aux_reports_gate_statistics():
  z_c, z_s, _, _ = _features(6, c=16)
  for attention in ("full", "topk", "cgm"):
    mod = StyleAlignment(10.0, False, attention, False, 1.0, 8, topk=3)
    (_, aux), _ = mod.init_with_output(jax.random.key(0), jnp.asarray(z_c), jnp.asarray(z_s))
    for k in ("gate_lambda", "gate_beta_ns", "gate_threshold_ns", "kept_fraction"):
      assert aux[k].shape == (2,), k
    if (
      attention == "cgm"
    ):  # lambda 1, beta 0 at init: T * Ns is the A-weighted mean of A_r * Ns, about 1
      np.testing.assert_allclose(np.asarray(aux["gate_lambda"]), 1.0, atol=0.05)
      assert 0.5 < float(np.mean(aux["gate_threshold_ns"])) < 3.0


def test_model_config_attention_is_checked():
  assert ModelConfig.from_dict(ModelConfig(attention="topk", topk=4).to_dict()) == ModelConfig(
    attention="topk", topk=4
  )
  with pytest.raises(InputError, match="model.attention"):
    ModelConfig(attention="sparse")
  with pytest.raises(InputError, match="topk"):
    ModelConfig(attention="topk", topk=0)
  with pytest.raises(InputError, match="gate_lambda"):
    ModelConfig(gate_lambda="relu")


def _old_style_dict(gate: bool) -> dict:
  """A model config as sk-jax 0.1 wrote it before `attention` existed (the one migration)."""
  d = ModelConfig(gate_hidden=8, kernel_hidden=16).to_dict()
  for k in ("attention", "topk", "gate_lambda"):
    d.pop(k)
  d["gate"] = gate
  return d


def test_old_config_dicts_keep_their_meaning():
  on, off = (
    ModelConfig.from_dict(_old_style_dict(True)),
    ModelConfig.from_dict(_old_style_dict(False)),
  )
  # the old gate reading, whatever the new default
  assert on.attention == "cgm" and on.gate_lambda == "linear"
  assert off.attention == "full"
  # Written with `attention`, 0.1 also wrote `gate`, which only repeated it.
  both = {**ModelConfig(attention="topk", topk=4).to_dict(), "gate": False}
  assert ModelConfig.from_dict(both) == ModelConfig(attention="topk", topk=4)


def test_old_checkpoint_loads_and_reproduces_the_old_reading(
  tmp_path, photo, vgg_params, generator_with_config_json
):
  legacy = ModelConfig(attention="cgm", gate_lambda="linear", gate_hidden=8, kernel_hidden=16)
  params = init_params(legacy, jax.random.key(0))
  path = generator_with_config_json(tmp_path / "old", params, _old_style_dict(True))
  loaded_params, config = artifacts.load_generator(path)
  assert config == legacy
  img = jnp.asarray(photo[None, ::16, ::16])
  ours, _ = stylize_images(loaded_params, vgg_params, config, img, img[:, ::-1])
  ref, _ = stylize_images(params, vgg_params, legacy, img, img[:, ::-1])
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))


def test_gate_lr_scale_scales_only_e_f_updates():
  import ml_collections

  from sk_jax.train import step as train

  params = {"alignment": {"gate": {"conv2": {"bias": jnp.ones(2)}}}, "decoder": {"w": jnp.ones(3)}}
  grads = jax.tree.map(jnp.ones_like, params)
  opt = ml_collections.ConfigDict(dict(grad_clip=0.0, b1=0.9, b2=0.999, eps=1e-8))
  base, tx = train.make_optimizer(opt, 1e-3), train.make_optimizer(opt, 1e-3, gate_lr_scale=0.01)
  updates, _ = tx.update(grads, tx.init(params), params)
  ref, _ = base.update(grads, base.init(params), params)
  np.testing.assert_allclose(
    updates["alignment"]["gate"]["conv2"]["bias"],
    0.01 * ref["alignment"]["gate"]["conv2"]["bias"],
    rtol=1e-6,
  )
  np.testing.assert_allclose(updates["decoder"]["w"], ref["decoder"]["w"], rtol=1e-6)
  # Adam's state sits where it did without the option (checkpoints, sharding specs).
  assert jax.tree.structure(tx.init(params)[1]) == jax.tree.structure(base.init(params)[1])


def test_gate_net_center_fixes_each_images_level():
  """model.gate_center: whatever E_f's weights, each image's lambda averages 1 and its beta 0
  over the true content positions (a bucket's padding excluded), so E_f cannot move the level."""
  rng = np.random.default_rng(6)
  z = jnp.asarray(np.abs(rng.normal(size=(2, 5, 6, 16))), jnp.float32)
  net = GateNet(8, center=True)
  params = net.init(jax.random.key(0), z)
  # weights far from their init: uncentred, lambda and beta would be far from (1, 0)
  params = jax.tree.map(lambda p: p + 0.02 * jnp.ones_like(p), params)
  lam, beta = net.apply(params, z)
  raw_lam, raw_beta = GateNet(8).apply(params, z)
  # the shift the centring removes (the map's entries are of this size: 1e-4 is float32's
  # rounding of their mean with room)
  assert 1.0 < float(jnp.abs(jnp.mean(raw_beta))) < 100.0
  assert float(jnp.abs(jnp.mean(raw_lam) - 1.0)) > 1.0
  np.testing.assert_allclose(np.mean(np.asarray(lam), axis=(1, 2)), 1.0, atol=1e-4)
  np.testing.assert_allclose(np.mean(np.asarray(beta), axis=(1, 2)), 0.0, atol=1e-4)
  # per position it is E_f's own map, shifted: the spread across positions is kept
  np.testing.assert_allclose(np.asarray(beta - raw_beta).std(axis=(1, 2)), 0.0, atol=1e-4)
  assert float(np.asarray(beta).std()) > 0.01
  # padded to 8 x 8 with the true size 5 x 6: the padding takes no part in the mean
  z_pad = jnp.pad(z, ((0, 0), (0, 3), (0, 2), (0, 0)))
  lam_p, beta_p = net.apply(params, z_pad, jnp.array([5, 6]))
  np.testing.assert_allclose(np.asarray(lam_p[:, :5, :6]), np.asarray(lam), atol=1e-5)
  np.testing.assert_allclose(np.asarray(beta_p[:, :5, :6]), np.asarray(beta), atol=1e-5)
