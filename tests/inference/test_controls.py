"""The bundled generator (integrity, loading, a plausible stylization) and the controls of
`sk-jax stylize`: style mixing, masks, alpha strips, colour preservation and --style-size.

The controls are tested on the bundled generator at 64 px: a random-init generator's kernels
start near the identity, so its output barely depends on the style and mixing tests could
not fail.
"""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from sk_jax import cli
from sk_jax.errors import InputError
from sk_jax.inference import bundled, controls
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import files, images
from sk_jax.nn.generator import init_params

CONTENT, STYLE_A, STYLE_B = "skimage:astronaut", "skimage:immunohistochemistry", "skimage:gravel"
SIZE = 64


@pytest.fixture(scope="module")
def st():
  return Stylizer.load()


@pytest.fixture(scope="module")
def singles(st):
  """The plain single-style outputs for STYLE_A and STYLE_B, (64, 64, 3) each."""
  return st.stylize(CONTENT, STYLE_A, size=SIZE), st.stylize(CONTENT, STYLE_B, size=SIZE)


def run(capsys, *argv):
  rc = cli.main([str(a) for a in argv])
  return rc, capsys.readouterr()


# ----------------------------------------------------------------------------- the bundled generator


def test_bundled_generator_matches_its_config_and_is_bfloat16_on_disk():
  params, config = bundled.load()
  want = jax.eval_shape(lambda: init_params(config, jax.random.key(0)))
  assert jax.tree.structure(params) == jax.tree.structure(want)
  for got, expected in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
    assert got.shape == expected.shape and got.dtype == np.float32
  with open(os.path.join(bundled.DIRECTORY, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["dtype"] == "bfloat16" and manifest["name"] == bundled.NAME
  size = sum(
    os.path.getsize(os.path.join(bundled.DIRECTORY, n)) for n in os.listdir(bundled.DIRECTORY)
  )
  assert size < 20e6
  # bfloat16 storage: every weight's low 16 bits are zero once widened to float32.
  assert all(not np.any(leaf.view(np.uint32) & 0xFFFF) for leaf in jax.tree.leaves(params))


def test_a_flipped_byte_fails_the_integrity_check(damaged_bundle):
  with pytest.raises(InputError, match="params.npz fails its integrity check"):
    bundled.load(str(damaged_bundle))
  with pytest.raises(InputError, match="integrity"):
    bundled.resolve("bundled")  # the fixture made the damaged copy the package's bundle


def test_damaged_bundle_is_one_line_exit_2_and_writes_nothing(damaged_bundle, tmp_path, capsys):
  out = tmp_path / "out.png"
  rc, io = run(
    capsys, "stylize", "--content", CONTENT, "--style", STYLE_A, "--output", out, "--size", 32
  )
  assert rc == 2 and "integrity" in io.err and len(io.err.strip().splitlines()) == 1
  assert not out.exists()


def test_missing_manifest_is_an_input_error(tmp_path):
  with pytest.raises(InputError, match="no manifest.json"):
    bundled.load(str(tmp_path))


def test_bundled_output_is_a_plausible_stylization(st, singles):
  content, style = images.prepare(CONTENT, SIZE), images.prepare(STYLE_A, SIZE)
  out = singles[0]
  # The colours move toward the style's ...
  assert (
    np.abs(out.mean((0, 1)) - style.mean((0, 1))).sum()
    < 0.5 * np.abs(content.mean((0, 1)) - style.mean((0, 1))).sum()
  )
  # ... while the content's layout stays (luminance correlates with the content's, not with
  # the content upside down).
  y = lambda im: controls.rgb_to_yiq(im)[..., 0].ravel()
  corr = np.corrcoef(y(out), y(content))[0, 1]
  assert corr > 0.2 and corr > np.corrcoef(y(out), y(content[::-1]))[0, 1] + 0.2
  # A random-init generator of the same config does neither as well.
  random = Stylizer(init_params(st.config, jax.random.key(0)), st.config, st.vgg_params)
  assert np.abs(random.stylize(CONTENT, STYLE_A, size=SIZE) - out).mean() > 0.05


def test_cli_without_checkpoint_uses_the_bundled_generator(st, singles, tmp_path, capsys):
  out = tmp_path / "out.png"
  rc, io = run(
    capsys, "stylize", "--content", CONTENT, "--style", STYLE_A, "--output", out, "--size", SIZE
  )
  assert rc == 0, io.err
  written = np.asarray(Image.open(out), np.float32) / 255
  assert np.abs(written - singles[0]).max() <= 1 / 255 + 1e-6


# ----------------------------------------------------------------------------- the controls


def test_style_weights_one_zero_equal_the_single_style(st, singles):
  a, b = singles
  np.testing.assert_allclose(
    st.stylize(CONTENT, [STYLE_A, STYLE_B], size=SIZE, style_weights=[1, 0]), a, atol=1e-5
  )
  np.testing.assert_allclose(
    st.stylize(CONTENT, [STYLE_A, STYLE_B], size=SIZE, style_weights=[0, 3]), b, atol=1e-5
  )
  half = st.stylize(CONTENT, [STYLE_A, STYLE_B], size=SIZE, style_weights=[0.5, 0.5])
  assert min(np.abs(half - a).mean(), np.abs(half - b).mean()) > 0.02  # a mix is neither
  # Mixed in feature space (Z_cs), not a blend of the two output images.
  assert np.abs(half - (a + b) / 2).mean() > 0.005


def test_one_label_mask_equals_the_unmasked_result(st, singles):
  white = np.ones((32, 32, 3), np.float32)  # any size of the content's aspect ratio
  np.testing.assert_allclose(
    st.stylize(CONTENT, [STYLE_A], size=SIZE, mask=white), singles[0], atol=1e-5
  )


def test_two_label_mask_gives_each_region_its_style(st, singles):
  a, b = singles
  mask = np.zeros((SIZE, SIZE, 3), np.float32)
  mask[:, SIZE // 2 :] = 1.0  # black (the first style) on the left, white on the right
  out = st.stylize(CONTENT, [STYLE_A, STYLE_B], size=SIZE, mask=mask)
  left, right = np.s_[:, : SIZE // 4], np.s_[:, -SIZE // 4 :]
  assert np.abs(out[left] - a[left]).mean() < 0.25 * np.abs(out[left] - b[left]).mean()
  assert np.abs(out[right] - b[right]).mean() < 0.25 * np.abs(out[right] - a[right]).mean()


def test_mask_weights_follow_the_labels_at_feature_resolution():
  mask = np.zeros((20, 40, 3), np.float32)
  mask[:, 20:] = 1.0
  w = controls.mask_weights(mask, (20, 40), 2)
  assert w.shape == (3, 5, 2)  # ceil(20 / 8), ceil(40 / 8)
  np.testing.assert_allclose(w.sum(-1), 1.0)
  np.testing.assert_allclose(w[:, 0], [[1, 0]] * 3)
  np.testing.assert_allclose(w[:, 2], [[0.5, 0.5]] * 3)  # columns 16..23 straddle the border
  with pytest.raises(InputError, match="2 distinct colour"):
    controls.mask_weights(mask, (20, 40), 3)
  with pytest.raises(InputError, match="aspect ratio"):
    controls.mask_weights(mask, (40, 40), 2)


def test_alpha_strip_equals_separate_calls(st):
  alphas = [0.0, 0.25, 1.0]
  strip = st.stylize(CONTENT, STYLE_A, size=SIZE, alpha=alphas)
  assert strip.shape == (3, SIZE, SIZE, 3)
  for frame, alpha in zip(strip, alphas):
    np.testing.assert_allclose(
      frame, st.stylize(CONTENT, STYLE_A, size=SIZE, alpha=alpha), atol=1e-5
    )
  assert np.abs(strip[0] - strip[2]).mean() > 0.02


def test_alpha_strip_is_one_compiled_call_with_the_kernels_computed_once(st):
  from sk_jax.inference import stylizer as module

  z = (st.encode_style(images.prepare(STYLE_A, SIZE)),)
  content = images.prepare(CONTENT, SIZE)[None]
  jaxpr = jax.make_jaxpr(module._apply, static_argnums=(2,))(
    st.params,
    st.vgg_params,
    st.config,
    z,
    content,
    np.ones(1, np.float32),
    np.array([0.0, 1.0], np.float32),
  )
  assert len(jaxpr.eqns) == 1  # one compiled program for the whole strip
  text = str(jaxpr)
  # Under vmap only the alpha-dependent part gains the alpha axis: the (B, h, w, 512) Z_cs
  # feeding the kernel head has no leading 2, the decoder's input does.
  assert (
    "f32[2,1,8,8,512]" in text and "f32[1,8,8,3584]" in text and "f32[2,1,8,8,3584]" not in text
  )


def test_preserve_color_keeps_the_content_chroma(st, singles):
  content = images.prepare(CONTENT, SIZE)
  out = st.stylize(CONTENT, STYLE_A, size=SIZE, preserve_color=True)
  iq = lambda im: controls.rgb_to_yiq(im)[..., 1:]
  assert np.abs(iq(out) - iq(content)).mean() < 0.002
  assert np.abs(iq(singles[0]) - iq(content)).mean() > 0.02  # without it the chroma moves
  # The luminance is the stylized one.
  y = lambda im: controls.rgb_to_yiq(im)[..., 0]
  assert np.abs(y(out) - y(singles[0])).mean() < 0.01


def test_style_size_changes_the_style_resolution(st, singles, tmp_path, capsys):
  small = st.stylize(CONTENT, STYLE_A, size=SIZE, style_size=32)
  assert small.shape == singles[0].shape and np.abs(small - singles[0]).mean() > 0.01
  style = images.prepare(STYLE_A, 32)
  # 0: as given
  np.testing.assert_allclose(small, st.stylize(CONTENT, style, size=SIZE, style_size=0), atol=1e-6)
  out = tmp_path / "s.png"
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    CONTENT,
    "--style",
    STYLE_A,
    "--output",
    out,
    "--size",
    SIZE,
    "--style-size",
    32,
  )
  assert rc == 0, io.err
  assert np.abs(np.asarray(Image.open(out), np.float32) / 255 - small).max() <= 1 / 255 + 1e-6


def test_cli_controls_write_one_image_each(st, singles, tmp_path, capsys):
  styles = f"{STYLE_A},{STYLE_B}".replace(",skimage:", ",")  # skimage:a,b
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    CONTENT,
    "--style",
    styles,
    "--style-weights",
    "1,0",
    "--output",
    tmp_path / "mix.png",
    "--size",
    SIZE,
  )
  assert rc == 0, io.err
  mixed = np.asarray(Image.open(tmp_path / "mix.png"), np.float32) / 255
  assert np.abs(mixed - singles[0]).max() <= 1 / 255 + 1e-6
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    CONTENT,
    "--style",
    STYLE_A,
    "--alpha",
    "0,0.5,1",
    "--output",
    tmp_path / "strip.png",
    "--size",
    SIZE,
    "--preserve-color",
  )
  assert rc == 0, io.err
  assert Image.open(tmp_path / "strip.png").size == (3 * SIZE, SIZE)
  mask = np.zeros((SIZE, SIZE, 3), np.uint8)
  mask[SIZE // 2 :] = 255
  Image.fromarray(mask).save(tmp_path / "mask.png")
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    CONTENT,
    "--style",
    styles,
    "--mask",
    tmp_path / "mask.png",
    "--output",
    tmp_path / "out",
    "--size",
    SIZE,
  )
  assert rc == 0, io.err
  assert sorted(os.listdir(tmp_path / "out")) == [
    files.MARKER,
    "astronaut_stylized_immunohistochemistry+gravel.png",
  ]


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--style-weights", "0.7,-0.3"], "--style-weights must be non-negative"),
    (["--style-weights", "0,0"], "all weights are zero"),
    (["--style-weights", "1,1,1"], "3 weight(s) for 2 style(s)"),
    (["--style-weights", "1,x"], "--style-weights: expected comma-separated numbers"),
    (["--alpha", "0,x"], "--alpha: expected comma-separated numbers"),
    (["--alpha", "0,1.5"], "--alpha must be in [0, 1], got 1.5"),
    (["--style-size", "-1"], "--style-size must be 0"),
    (["--mask", "WIDE"], "has another aspect ratio than the content"),
    (["--mask", "THREE"], "has 3 distinct colour(s) but 2 style(s)"),
    (["--mask", "TWO", "--style-weights", "1,1"], "--mask excludes style weights"),
  ],
)
def test_bad_control_values_exit_2_one_line_nothing_written(extra, message, tmp_path, capsys):
  wide = np.zeros((16, 64, 3), np.uint8)
  wide[:, 32:] = 255
  Image.fromarray(wide).save(tmp_path / "WIDE.png")
  three = np.zeros((32, 32, 3), np.uint8)
  three[:, 10:] = 128
  three[:, 20:] = 255
  Image.fromarray(three).save(tmp_path / "THREE.png")
  Image.fromarray(
    np.concatenate([np.zeros((32, 16, 3), np.uint8), np.full((32, 16, 3), 255, np.uint8)], 1)
  ).save(tmp_path / "TWO.png")
  extra = [str(tmp_path / f"{e}.png") if e in ("WIDE", "THREE", "TWO") else e for e in extra]
  out = tmp_path / "out.png"
  rc, io = run(
    capsys,
    "stylize",
    "--content",
    CONTENT,
    "--style",
    "skimage:immunohistochemistry,gravel",
    "--output",
    out,
    "--size",
    32,
    *extra,
  )
  err = io.err.strip()
  assert rc == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
  assert not out.exists()


def test_library_checks():
  with pytest.raises(InputError, match="non-negative"):
    controls.style_weights([1, -1], 2)
  with pytest.raises(InputError, match="in \\[0, 1\\]"):
    controls.check_alphas([0.5, -0.1])
  np.testing.assert_allclose(controls.style_weights([3, 1], 2), [0.75, 0.25])
  rgb = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
  np.testing.assert_allclose(controls.yiq_to_rgb(controls.rgb_to_yiq(rgb)), rgb, atol=1e-5)
