"""The one inference path: `Stylizer` keeps weights on the device and reuses encoded styles."""

import jax
import numpy as np

from sk_jax.inference.stylizer import Stylizer


def _images(photo, texture):
  return photo[::16, ::16], texture[100:140, 60:108]  # 32 x 32 content, 40 x 48 style


def test_encoded_style_reused_equals_images_in_image_out(
  tiny_generator, vgg_params, photo, texture
):
  st = Stylizer(*tiny_generator, vgg_params)
  content, style = _images(photo, texture)
  z_s = st.encode_style(style)
  out, kept = st.apply(content, z_s, alpha=0.7)
  np.testing.assert_allclose(np.asarray(out), np.asarray(st(content, style, alpha=0.7)), atol=1e-6)
  assert out.shape == (1, 32, 32, 3) and kept.shape == (1,) and 0 < float(kept[0]) <= 1
  # The same encoded style serves a batch of other contents.
  batch = np.stack([content, content[::-1]])
  outs, _ = st.apply(batch, z_s)
  np.testing.assert_allclose(
    np.asarray(outs[1]), np.asarray(st(content[::-1], style)[0]), atol=1e-6
  )
  exact = Stylizer(*tiny_generator, vgg_params, buckets=False)
  np.testing.assert_array_equal(
    exact.stylize(content, style, size=None), np.asarray(st(content, style)[0])
  )
  # In a size bucket (the default) the same up to float32 rounding (tests/test_buckets.py).
  np.testing.assert_allclose(
    st.stylize(content, style, size=None), np.asarray(st(content, style)[0]), atol=1e-6
  )


def test_no_hidden_host_to_device_copies(tiny_generator, vgg_params, photo, texture):
  """Weights live on the device; every call moves only its inputs, explicitly."""
  st = Stylizer(*tiny_generator, vgg_params)
  content, style = _images(photo, texture)
  c, s = jax.device_put(content), jax.device_put(style)
  z_s = st.encode_style(s)
  st.apply(c, z_s), st(c, s)  # compile outside the guard
  with jax.transfer_guard("disallow"):
    z_s = st.encode_style(s)
    out, _ = st.apply(c, z_s)
    st(c, s).block_until_ready()
    st.stylize(content, style, size=None)  # host arrays in: explicit device_put only
  assert np.isfinite(np.asarray(out)).all()


def test_aux_carries_every_module_output(tiny_generator, vgg_params, photo, texture):
  st = Stylizer(*tiny_generator, vgg_params)
  content, style = _images(photo, texture)
  out, aux = st.apply(content, st.encode_style(style), return_aux=True)
  for key in ("attention", "mask", "z_cs", "f_v", "f_h", "bias", "z_bar", "decoded"):
    assert key in aux, key
  np.testing.assert_array_equal(np.asarray(out), np.clip(np.asarray(aux["decoded"]), 0, 1))
