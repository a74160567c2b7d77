"""Clips: reading and writing, synthesised pan and zoom, and `sk-jax stylize-video`."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from sk_jax import cli
from sk_jax.errors import InputError
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import files, images, video
from sk_jax.nn.generator import stylize_images


def test_pan_zoom_is_smooth_seeded_and_moves(photo):
  clip = video.pan_zoom_clip(photo[::8, ::8], num_frames=6, seed=3)
  assert clip.shape == (6, 64, 64, 3) and clip.dtype == np.uint8
  np.testing.assert_array_equal(clip, video.pan_zoom_clip(photo[::8, ::8], num_frames=6, seed=3))
  assert not np.array_equal(clip, video.pan_zoom_clip(photo[::8, ::8], num_frames=6, seed=4))
  f = clip.astype(np.float64)
  steps = [np.abs(f[t + 1] - f[t]).mean() for t in range(5)]
  assert 0 < max(steps) < np.abs(f[-1] - f[0]).mean()  # consecutive frames are closer than the ends
  with pytest.raises(InputError, match="at least 2 frames"):
    video.pan_zoom_clip(photo, num_frames=1)


def test_frames_directory_natural_order_and_gif_round_trip(tmp_path, photo):
  clip = video.pan_zoom_clip(photo[::8, ::8], num_frames=11, seed=0)
  for t in range(11):  # frame_2 must come before frame_10
    Image.fromarray(clip[t]).save(tmp_path / f"frame_{t}.png")
  frames, _ = video.read_frames(str(tmp_path))
  np.testing.assert_array_equal(frames, clip)
  small, _ = video.read_frames(str(tmp_path), size=32, max_frames=3)
  assert small.shape == (3, 32, 32, 3)
  gif = str(tmp_path / "out" / "clip.gif")
  assert video.write_frames(clip[:4], gif, fps=5) == [gif]
  back, fps = video.read_frames(gif)
  assert back.shape == (4, 64, 64, 3) and fps == pytest.approx(5.0)
  assert np.abs(back.astype(float) - clip[:4]).mean() < 8  # GIF palette quantisation only


def test_stylize_frames_encodes_the_style_once(
  tiny_generator, vgg_params, photo, texture, monkeypatch
):
  params, config = tiny_generator
  frames = video.pan_zoom_clip(photo[::16, ::16], num_frames=3, seed=0)
  style = texture[::12, ::12]
  calls = []
  stylizer = Stylizer(params, config, vgg_params)
  encode = stylizer.encode_style
  monkeypatch.setattr(stylizer, "encode_style", lambda *a: calls.append(1) or encode(*a))
  out, kept = video.stylize_frames(frames, style, stylizer)
  assert (
    len(calls) == 1 and out.shape == frames.shape and out.dtype == np.uint8 and kept.shape == (3,)
  )
  # The per-frame path equals the image API's (which encodes the style with every call).
  want, aux = jax.jit(stylize_images, static_argnums=2)(
    params, vgg_params, config, frames[1:2].astype(np.float32) / 255.0, style[None]
  )
  np.testing.assert_array_equal(out[1], images.to_uint8(want[0]))
  np.testing.assert_allclose(kept[1], float(aux["kept_fraction"][0]), rtol=1e-6)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory, photo, texture):
  root = tmp_path_factory.mktemp("clip")
  video.write_frames(
    video.pan_zoom_clip(photo[::16, ::16], num_frames=3, seed=1), str(root / "in.gif")
  )
  images.save_image(texture[::12, ::12], str(root / "style.png"))
  return root


def test_stylize_video_cli_to_gif_and_directory(tiny_checkpoint, clip_files, tmp_path, capsys):
  argv = [
    "stylize-video",
    "--input",
    clip_files / "in.gif",
    "--style",
    clip_files / "style.png",
    "--checkpoint",
    tiny_checkpoint,
    "--size",
    32,
  ]
  assert cli.main([str(a) for a in argv + ["--output", tmp_path / "out.gif"]]) == 0
  frames, _ = video.read_frames(str(tmp_path / "out.gif"))
  assert frames.shape == (3, 32, 32, 3)
  assert cli.main([str(a) for a in argv + ["--output", tmp_path / "frames", "--fps", 4]]) == 0
  assert sorted(os.listdir(tmp_path / "frames")) == [
    files.MARKER,
    "frame_00000.png",
    "frame_00001.png",
    "frame_00002.png",
  ]
  pngs = video.read_frames(str(tmp_path / "frames"))[0]
  assert np.abs(pngs.astype(float) - frames).mean() < 8  # the same frames; the GIF has a palette


@pytest.mark.parametrize(
  "case, message",
  [
    ("missing_input", "no such file or directory"),
    ("still_image", "a single still image, not a video"),
    ("corrupt_gif", "not a video or image file"),
    ("bad_extension", "unknown video extension"),
    ("damaged_bundled_generator", "params.npz fails its integrity check"),
    ("bad_smooth", "--smooth must be in [0, 1)"),
    ("alpha_list", "stylize-video takes one value"),
    ("bad_checkpoint", "no such generator checkpoint directory"),
  ],
)
def test_stylize_video_bad_inputs_exit_2_and_write_nothing(
  case, message, tiny_checkpoint, clip_files, tmp_path, capsys, request
):
  inp, out, ck = clip_files / "in.gif", tmp_path / "out" / "x.gif", tiny_checkpoint
  if case == "missing_input":
    inp = tmp_path / "nope.gif"
  elif case == "still_image":
    inp = clip_files / "style.png"
  elif case == "corrupt_gif":
    inp = tmp_path / "bad.gif"
    inp.write_bytes(b"GIF8 not really")
  elif case == "bad_extension":
    out = tmp_path / "out" / "x.xyz"
  elif case == "bad_checkpoint":
    ck = tmp_path / "missing_ckpt"
  argv = [
    "stylize-video",
    "--input",
    inp,
    "--style",
    clip_files / "style.png",
    "--output",
    out,
    "--size",
    32,
  ]
  if case == "damaged_bundled_generator":  # no --checkpoint: the bundled generator
    request.getfixturevalue("damaged_bundle")
  else:
    argv += ["--checkpoint", ck]
  argv += {"bad_smooth": ["--smooth", 1], "alpha_list": ["--alpha", "0,1"]}.get(case, [])
  assert cli.main([str(a) for a in argv]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "out").exists()


def test_mp4_round_trip_keeps_frame_rate_and_frames(tmp_path, photo):
  clip = video.pan_zoom_clip(photo[::8, ::8], num_frames=5, seed=2)  # 64 x 64
  path = str(tmp_path / "clip.mp4")
  assert video.write_frames(clip, path, fps=12.5) == [path]
  frames, fps = video.read_frames(path)
  assert fps == pytest.approx(12.5) and frames.shape == clip.shape
  assert np.abs(frames.astype(float) - clip).mean() < 6  # lossy (H.264 at crf 18, yuv420p)
  odd = str(tmp_path / "odd.mp4")  # yuv420p needs even sides: the last row/column is repeated
  video.write_frames(clip[:, :63, :61], odd, fps=7)
  frames, fps = video.read_frames(odd)
  assert fps == pytest.approx(7) and frames.shape == (5, 64, 62, 3)


def test_kernel_smoothing_off_is_unchanged_and_on_steadies_the_clip(photo, texture):
  st = Stylizer.load()  # the bundled generator: a random one's kernels barely depend on the frame
  clip = video.pan_zoom_clip(photo[::8, ::8], num_frames=4, seed=3)
  style = texture[::8, ::8]
  plain, _ = video.stylize_frames(clip, style, st)
  same, _ = video.stylize_frames(clip, style, st, smooth=1e-12)  # the smoothed path, ~no smoothing
  assert np.abs(same.astype(int) - plain).max() <= 1
  smooth, _ = video.stylize_frames(clip, style, st, smooth=0.8)
  np.testing.assert_array_equal(smooth[0], plain[0])  # the first frame has nothing to average with
  assert np.abs(smooth[1:].astype(int) - plain[1:]).mean() > 0.5
  flicker = lambda f: np.abs(np.diff(f.astype(float), axis=0)).mean()
  assert flicker(smooth) < flicker(plain)
  with pytest.raises(InputError, match="smooth must be in"):
    video.stylize_frames(clip, style, st, smooth=1.0)


def test_stylize_video_mp4_with_the_bundled_generator(clip_files, tmp_path, capsys):
  inp = str(tmp_path / "in.mp4")
  video.write_frames(video.read_frames(str(clip_files / "in.gif"))[0], inp, fps=9)
  out = tmp_path / "out.mp4"
  assert (
    cli.main(
      [
        "stylize-video",
        "--input",
        inp,
        "--style",
        str(clip_files / "style.png"),
        "--output",
        str(out),
        "--size",
        "32",
        "--smooth",
        "0.5",
      ]
    )
    == 0
  )
  frames, fps = video.read_frames(str(out))
  assert fps == pytest.approx(9) and frames.shape == (3, 32, 32, 3)
