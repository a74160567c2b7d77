"""Size buckets: images zero-padded up to a bucket, with their true size, give the results of
the unpadded images (docs/method.md, "Size buckets"), and sizes in one bucket share one program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_events import compile_events

import sk_jax
from sk_jax.inference.programs import Programs
from sk_jax.nn.generator import encode, generate

# Relative error: max |bucketed - unbucketed| / max |unbucketed| over the true region. float32
# rounding of these sums is about 1e-6 relative; summation order differs with the padding.
TOL = 1e-5
# Gate decisions may differ only where A - T is within this of 0, in units of 1/Ns (float32
# rounding of A and T, which are O(1/Ns), is a few 1e-7 of that unit).
BAND = 1e-4
CONTENT_HW, STYLE_HW, BUCKET = (40, 56), (48, 32), (64, 64)
FEATURE_BUCKET = (8, 8)


def _pad(x, hw):
  return jnp.pad(x, ((0, 0), (0, hw[0] - x.shape[1]), (0, hw[1] - x.shape[2]), (0, 0)))


def _rel(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.fixture(scope="module")
def features(vgg_params, photo, texture):
  """relu4_1 of a 40 x 56 content and a 48 x 32 style, unpadded and padded to 64 x 64."""
  c = jnp.asarray(photo[100 : 100 + CONTENT_HW[0], 200 : 200 + CONTENT_HW[1]][None])
  s = jnp.asarray(texture[: STYLE_HW[0], : STYLE_HW[1]][None])
  run = jax.jit(encode)
  padded = jax.jit(lambda v, x, hw: encode(v, x, hw=hw))
  z_c, z_s = run(vgg_params, c), run(vgg_params, s)
  zb_c = padded(vgg_params, _pad(c, BUCKET), jnp.array(CONTENT_HW))
  zb_s = padded(vgg_params, _pad(s, BUCKET), jnp.array(STYLE_HW))
  return z_c, z_s, zb_c, zb_s


def test_encoder_inside_a_bucket_equals_unpadded(features):
  z_c, z_s, zb_c, zb_s = features
  h, w = z_c.shape[1:3]
  assert _rel(zb_c[:, :h, :w], z_c) < TOL
  assert (
    float(jnp.max(jnp.abs(zb_c[:, h:]))) == 0.0 and float(jnp.max(jnp.abs(zb_c[:, :, w:]))) == 0
  )
  assert _rel(zb_s[:, : z_s.shape[1], : z_s.shape[2]], z_s) < TOL


@pytest.mark.parametrize("attention", ["full", "topk", "cgm", "quantile"])
def test_bucketed_generator_equals_unbucketed(features, attention):
  z_c, z_s, zb_c, zb_s = features
  config = sk_jax.ModelConfig(
    gate_hidden=8,
    kernel_hidden=16,
    attention=attention,
    topk=5,
    gate_target=0.3 if attention == "quantile" else None,
  )
  params = sk_jax.init_params(config, jax.random.key(1))
  (h, w), (hs, ws) = z_c.shape[1:3], z_s.shape[1:3]
  ref_image, ref = jax.jit(lambda p, a, b: generate(p, config, a, b))(params, z_c, z_s)
  image, aux = jax.jit(
    lambda p, a, b, ch, sh: generate(p, config, a, b, content_hw=ch, style_hw=sh)
  )(params, zb_c, zb_s, jnp.array((h, w)), jnp.array((hs, ws)))
  assert _rel(image[:, : 8 * h, : 8 * w], ref_image) < TOL
  if attention == "cgm":
    # Padding without the true sizes is far off: the masks are what make this exact.
    naive, _ = jax.jit(lambda p, a, b: generate(p, config, a, b))(params, zb_c, zb_s)
    assert _rel(naive[:, : 8 * h, : 8 * w], ref_image) > 1e-3
  for name in ("z_cs", "z_bar", "f_v", "f_h", "bias"):
    assert _rel(aux[name][:, :h, :w], ref[name]) < TOL, name
  # The gate's decisions, position by position, outside float32's band around the threshold.
  crop = lambda a: (
    np.asarray(a)
    .reshape(1, *FEATURE_BUCKET, *FEATURE_BUCKET)[:, :h, :w, :hs, :ws]
    .reshape(1, h * w, hs * ws)
  )
  mask, ref_mask = crop(aux["mask"]), np.asarray(ref["mask"])
  assert _rel(crop(aux["attention"]), ref["attention"]) < TOL
  if attention == "cgm":
    diff = (np.asarray(ref["attention"]) - np.asarray(ref["threshold"])[..., None]) * hs * ws
    decided = np.abs(diff) > BAND
    assert 0.05 < ref_mask.mean() < 0.95, "the gate should select for this test to mean much"
  else:
    decided = np.ones_like(ref_mask, bool)
  np.testing.assert_array_equal(mask[decided], ref_mask[decided])
  # Padded style positions are never kept.
  assert float(np.asarray(aux["mask"]).reshape(1, -1, *FEATURE_BUCKET)[..., hs:, :].max()) == 0.0
  np.testing.assert_allclose(aux["kept_fraction"], ref["kept_fraction"], rtol=TOL)


@pytest.fixture(scope="module")
def stylizers(tiny_generator, vgg_params):
  params, config = tiny_generator
  make = lambda buckets: sk_jax.Stylizer(params, config, vgg_params, buckets=buckets)
  return make(True), make(False)


def test_stylize_in_buckets_equals_exact_shapes(stylizers, photo, texture):
  bucketed, exact = stylizers
  content, style = photo[:44, :70], texture[:50, :36]
  mask = np.zeros((44, 70, 3), np.float32)
  mask[:, 35:] = 1.0
  for kwargs in (
    {"style": style},
    {"style": [style, texture[:40, :60]], "mask": mask, "preserve_color": True},
  ):
    want, want_kept = exact.stylize(content, size=None, return_kept=True, **kwargs)
    got, kept = bucketed.stylize(content, size=None, return_kept=True, **kwargs)
    assert got.shape == want.shape
    assert _rel(got, want) < TOL, kwargs.keys()
    assert abs(kept - want_kept) < TOL


@pytest.mark.parametrize("cache", ["off", "on"])
def test_sizes_in_one_bucket_share_one_program(
  tiny_generator, vgg_params, photo, texture, cache, tmp_path
):
  """Nothing is traced or compiled for a new size inside a bucket, with the programs kept on
  disk (on: `sk_jax.inference.programs`, in a fresh directory) or held by jit alone (off).
  compile_cache=None leaves the suite's JAX cache as it is."""
  params, config = tiny_generator
  bucketed = sk_jax.Stylizer(params, config, vgg_params, compile_cache=None)
  assert bucketed._programs.directory is None
  if cache == "on":
    bucketed._programs = Programs(str(tmp_path))
  style = texture[:64, :48]
  with compile_events() as first:
    bucketed.stylize(photo[:48, :40], style, size=None)
  assert ("jaxpr_trace_duration", "_apply") in first, "the first size should trace _apply"
  encoded = list(bucketed._styles)
  with compile_events() as later:
    for hw in ((56, 64), (40, 24), (64, 49)):
      out = bucketed.stylize(photo[: hw[0], : hw[1]], style, size=None)
      assert out.shape == (*hw, 3)
  assert not [e for e in later if e[1] in ("_apply", "_encode", "call")], later
  # ... and the style was encoded once: a directory of contents reuses it.
  assert list(bucketed._styles) == encoded
  assert len(list(tmp_path.iterdir())) == (2 if cache == "on" else 0)


def test_bucketed_chunked_cgm_equals_unbucketed(features):
  """The chunked attention (4K images) in a bucket: A_r's first pass skips padded rows."""
  z_c, z_s, zb_c, zb_s = features
  config = sk_jax.ModelConfig(gate_hidden=8, kernel_hidden=16)
  params = sk_jax.init_params(config, jax.random.key(1))
  (h, w), (hs, ws) = z_c.shape[1:3], z_s.shape[1:3]
  ref_image, ref = jax.jit(lambda p, a, b: generate(p, config, a, b))(params, z_c, z_s)
  image, aux = jax.jit(
    lambda p, a, b, ch, sh: generate(p, config, a, b, query_chunk=24, content_hw=ch, style_hw=sh)
  )(params, zb_c, zb_s, jnp.array((h, w)), jnp.array((hs, ws)))
  assert _rel(image[:, : 8 * h, : 8 * w], ref_image) < TOL
  assert _rel(aux["z_cs"][:, :h, :w], ref["z_cs"]) < TOL
  np.testing.assert_allclose(aux["kept_fraction"], ref["kept_fraction"], rtol=TOL)
