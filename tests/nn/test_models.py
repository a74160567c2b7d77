"""The encoder, the generator modules and the generator checkpoint format."""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sk_jax
from sk_jax.errors import InputError
from sk_jax.io import artifacts, weights
from sk_jax.nn import generator, ops, spatial, vgg
from sk_jax.nn.alignment import StyleAlignment


def test_bundled_vgg16_has_torchvision_layout(vgg_params):
  assert list(vgg_params) == list(vgg.CONVS)
  for name, shapes in vgg.param_shapes().items():
    assert vgg_params[name]["kernel"].shape == shapes["kernel"]
    assert vgg_params[name]["bias"].shape == shapes["bias"]
  # ImageNet weights, not a random init: conv1_1 filters are smooth colour detectors
  # whose biases are far from an initializer's zeros.
  assert np.abs(vgg_params["conv1_1"]["bias"]).max() > 0.1


def _reference_relu4_1(params, image):
  """VGG-16 up to relu4_1 written independently: NCHW/OIHW layout, explicit padding, lax.conv."""
  x = (np.transpose(image, (0, 3, 1, 2)) - vgg.IMAGENET_MEAN[:, None, None]) / vgg.IMAGENET_STD[
    :, None, None
  ]
  x = jnp.asarray(x)
  for name in (
    "conv1_1",
    "conv1_2",
    "M",
    "conv2_1",
    "conv2_2",
    "M",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "M",
    "conv4_1",
  ):
    if name == "M":
      n, c, h, w = x.shape
      x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
      continue
    w_oihw = jnp.asarray(np.transpose(params[name]["kernel"], (3, 2, 0, 1)))
    x = jax.lax.conv(jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), w_oihw, (1, 1), "VALID")
    x = jax.nn.relu(x + params[name]["bias"][None, :, None, None])
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


def test_encoder_relu4_1_matches_plain_lax_conv(vgg_params, photo):
  image = photo[None, ::8, ::8]  # 64 x 64
  got = np.asarray(vgg.vgg16_features(vgg_params, image, taps=("relu4_1",))["relu4_1"])
  ref = _reference_relu4_1(vgg_params, image)
  assert got.shape == (1, 8, 8, 512)
  assert ref.max() > 1.0  # a real photo lights up the ImageNet features
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.max())


def test_encoder_taps_and_stops_early(vgg_params, photo):
  feats = vgg.vgg16_features(vgg_params, photo[None, :64, :96])
  assert {k: v.shape for k, v in feats.items()} == {
    "relu1_1": (1, 64, 96, 64),
    "relu2_1": (1, 32, 48, 128),
    "relu3_1": (1, 16, 24, 256),
    "relu4_1": (1, 8, 12, 512),
    "relu5_1": (1, 4, 6, 512),
  }
  assert set(vgg.vgg16_features(vgg_params, photo[None, :32, :32], taps=("relu2_1",))) == {
    "relu2_1"
  }
  with pytest.raises(ValueError):
    vgg.vgg16_features(vgg_params, photo[None, :32, :32], taps=("relu9_9",))


class _Payload:
  def __reduce__(self):
    return (os.system, ("touch /tmp/sk_jax_pwned_by_pickle",))


def test_tampered_vgg_pickle_is_refused_and_never_run(tmp_path):
  marker = "/tmp/sk_jax_pwned_by_pickle"
  if os.path.exists(marker):
    os.unlink(marker)
  bad = tmp_path / "vgg16.ckpt"
  bad.write_bytes(pickle.dumps({"VGG16_0": {"Conv_0": _Payload()}}))
  with pytest.raises(InputError, match="refusing to load"):
    weights.load_vgg16(str(bad))
  assert not os.path.exists(marker)


def test_vgg_pickle_with_a_wrong_shape_names_the_layer(tmp_path, vgg_params):
  tree = {f"Conv_{i}": dict(vgg_params[n]) for i, n in enumerate(vgg.CONVS)}
  tree["Conv_3"] = {
    "kernel": np.zeros((3, 3, 64, 64), np.float32),
    "bias": np.zeros(128, np.float32),
  }
  path = tmp_path / "vgg16.ckpt"
  path.write_bytes(pickle.dumps({"VGG16_0": tree}))
  with pytest.raises(
    InputError, match=r"conv2_2\.kernel has shape \(3, 3, 64, 64\), expected \(3, 3, 128, 128\)"
  ):
    weights.load_vgg16(str(path))


@pytest.fixture(scope="module")
def small_config():
  return sk_jax.ModelConfig(gate_hidden=8, kernel_hidden=16)


@pytest.fixture(scope="module")
def small_params(small_config):
  return sk_jax.init_params(small_config, jax.random.key(0))


def test_generator_any_size_batches_and_different_style_size(
  small_config, small_params, vgg_params
):
  rng = np.random.default_rng(0)
  content = rng.random((2, 37, 53, 3), np.float32)
  style = rng.random((2, 24, 40, 3), np.float32)
  out, aux = sk_jax.stylize_images(small_params, vgg_params, small_config, content, style)
  assert out.shape == (2, 37, 53, 3)
  assert np.isfinite(np.asarray(out)).all() and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
  assert aux["attention"].shape == (2, 5 * 7, 3 * 5)
  assert aux["f_v"].shape == (2, 5, 7, 512, 3)
  assert np.all((np.asarray(aux["kept_fraction"]) > 0) & (np.asarray(aux["kept_fraction"]) < 1))


def test_kernels_start_as_deltas_so_content_passes_through(
  small_config, small_params, vgg_params, photo, texture
):
  z_c = generator.encode(vgg_params, photo[None, :64, :64])
  z_s = generator.encode(vgg_params, texture[None, :64, :64])
  _, aux = generator.Generator(small_config).apply({"params": small_params}, z_c, z_s)
  expected = spatial.instance_norm(spatial.channel_shuffle(z_c, small_config.shuffle_groups))
  err = np.abs(np.asarray(aux["z_bar"]) - np.asarray(expected)).max()
  assert err < 0.05 * np.abs(np.asarray(expected)).max(), err
  centre = np.asarray(aux["f_v"])[..., 1]
  assert np.abs(centre - 1).max() < 0.1 and np.abs(np.asarray(aux["f_v"])[..., 0]).max() < 0.1


def test_gate_network_receives_finite_nonzero_gradients(vgg_params, photo, texture):
  z_c = generator.encode(vgg_params, photo[None, :64, :64])
  z_s = generator.encode(vgg_params, texture[None, :64, :64])
  module = StyleAlignment(10.0, False, "cgm", False, 1.0, 8)
  params = module.init(jax.random.key(1), z_c, z_s)["params"]
  target = jax.random.normal(jax.random.key(2), z_c.shape)

  def loss(p):
    z_cs, _ = module.apply({"params": p}, z_c, z_s)
    return jnp.mean((z_cs - target) ** 2)

  grads = jax.grad(loss)(params)["gate"]
  for name, layer in grads.items():
    for leaf in layer.values():
      leaf = np.asarray(leaf)
      assert np.isfinite(leaf).all(), name
      assert np.abs(leaf).max() > 0, (
        f"E_f layer {name} got no gradient through the straight-through gate"
      )


def test_gate_off_is_plain_attention(vgg_params, photo, texture):
  z_c = generator.encode(vgg_params, photo[None, :32, :32])
  z_s = generator.encode(vgg_params, texture[None, :32, :32])
  module = StyleAlignment(10.0, False, "full", False, 1.0, 8)
  (z_cs, aux), _ = module.init_with_output(jax.random.key(0), z_c, z_s)
  attn = ops.cosine_attention(z_c, z_s, 10.0)
  np.testing.assert_allclose(
    np.asarray(z_cs).reshape(1, 16, 512),
    np.asarray(attn @ z_s.reshape(1, 16, 512)),
    rtol=1e-5,
    atol=1e-5,
  )
  assert float(aux["kept_fraction"][0]) == 1.0


def test_bfloat16_compute_is_close_to_float32(vgg_params, photo, texture):
  cfg32 = sk_jax.ModelConfig(attention="full", gate_hidden=8, kernel_hidden=16)
  cfg16 = sk_jax.ModelConfig(attention="full", gate_hidden=8, kernel_hidden=16, dtype="bfloat16")
  params = sk_jax.init_params(cfg32, jax.random.key(0))
  a, _ = sk_jax.stylize_images(
    params, vgg_params, cfg32, photo[None, :32, :32], texture[None, :32, :32]
  )
  b, _ = sk_jax.stylize_images(
    params, vgg_params, cfg16, photo[None, :32, :32], texture[None, :32, :32]
  )
  assert b.dtype == jnp.float32
  assert float(jnp.abs(a - b).max()) < 0.1


def test_model_config_rejects_bad_values():
  with pytest.raises(InputError, match="kernel_size"):
    sk_jax.ModelConfig(kernel_size=4)
  with pytest.raises(InputError, match="unknown model field"):
    sk_jax.ModelConfig.from_dict({"kernel_sise": 3})
  assert sk_jax.ModelConfig().diff(sk_jax.ModelConfig(kernel_size=5)) == [
    "model.kernel_size: 3 != 5"
  ]


def test_generator_checkpoint_round_trip_and_refusals(tmp_path, small_config, small_params):
  path = artifacts.save_generator(str(tmp_path / "gen"), small_params, small_config)
  params, config = artifacts.load_generator(path)
  assert config == small_config
  jax.tree.map(
    lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, small_params
  )
  with pytest.raises(InputError, match="another model config"):
    artifacts.load_generator(path, expected=sk_jax.ModelConfig())
  # Saving over an existing checkpoint is refused, and with overwrite=True replaces it whole.
  with pytest.raises(InputError, match="--overwrite"):
    artifacts.save_generator(path, small_params, small_config)
  artifacts.save_generator(path, small_params, small_config, overwrite=True)
  assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".")) == ["gen"]
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
