"""Clips: reading and writing, synthesised pan and zoom, and `sk-jax stylize-video`."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from sk_jax import cli, images, video
from sk_jax.errors import InputError
from sk_jax.models.generator import stylize_images
from sk_jax.stylizer import Stylizer


def test_pan_zoom_is_smooth_seeded_and_moves(photo):
  clip = video.pan_zoom_clip(photo[::8, ::8], num_frames=6, seed=3)
  assert clip.shape == (6, 64, 64, 3) and clip.dtype == np.uint8
  np.testing.assert_array_equal(clip, video.pan_zoom_clip(photo[::8, ::8], num_frames=6, seed=3))
  assert not np.array_equal(clip, video.pan_zoom_clip(photo[::8, ::8], num_frames=6, seed=4))
  f = clip.astype(np.float64)
  steps = [np.abs(f[t + 1] - f[t]).mean() for t in range(5)]
  assert 0 < max(steps) < np.abs(f[-1] - f[0]).mean()   # consecutive frames are closer than the ends
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


def test_stylize_frames_encodes_the_style_once(tiny_generator, vgg_params, photo, texture, monkeypatch):
  params, config = tiny_generator
  frames = video.pan_zoom_clip(photo[::16, ::16], num_frames=3, seed=0)
  style = texture[::12, ::12]
  calls = []
  stylizer = Stylizer(params, config, vgg_params)
  encode = stylizer.encode_style
  monkeypatch.setattr(stylizer, "encode_style", lambda *a: calls.append(1) or encode(*a))
  out, kept = video.stylize_frames(frames, style, stylizer)
  assert len(calls) == 1 and out.shape == frames.shape and out.dtype == np.uint8 and kept.shape == (3,)
  # The per-frame path equals the image API's (which encodes the style with every call).
  want, aux = jax.jit(stylize_images, static_argnums=2)(params, vgg_params, config,
                                                        frames[1:2].astype(np.float32) / 255.0, style[None])
  np.testing.assert_array_equal(out[1], images.to_uint8(want[0]))
  np.testing.assert_allclose(kept[1], float(aux["kept_fraction"][0]), rtol=1e-6)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory, photo, texture):
  root = tmp_path_factory.mktemp("clip")
  video.write_frames(video.pan_zoom_clip(photo[::16, ::16], num_frames=3, seed=1), str(root / "in.gif"))
  images.save_image(texture[::12, ::12], str(root / "style.png"))
  return root


def test_stylize_video_cli_to_gif_and_directory(tiny_checkpoint, clip_files, tmp_path, capsys):
  argv = ["stylize-video", "--input", clip_files / "in.gif", "--style", clip_files / "style.png",
          "--checkpoint", tiny_checkpoint, "--size", 32]
  assert cli.main([str(a) for a in argv + ["--output", tmp_path / "out.gif"]]) == 0
  frames, _ = video.read_frames(str(tmp_path / "out.gif"))
  assert frames.shape == (3, 32, 32, 3)
  assert cli.main([str(a) for a in argv + ["--output", tmp_path / "frames", "--fps", 4]]) == 0
  assert sorted(os.listdir(tmp_path / "frames")) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
  pngs = video.read_frames(str(tmp_path / "frames"))[0]
  assert np.abs(pngs.astype(float) - frames).mean() < 8  # the same frames; the GIF has a palette


@pytest.mark.parametrize("case, message", [
    ("missing_input", "no such file or directory"),
    ("still_image", "a single still image, not a video"),
    ("corrupt_gif", "not a video or image file"),
    ("bad_extension", "unknown video extension"),
    ("no_checkpoint", "--checkpoint is required"),
    ("bad_checkpoint", "no such generator checkpoint directory"),
])
def test_stylize_video_bad_inputs_exit_2_and_write_nothing(case, message, tiny_checkpoint, clip_files,
                                                           tmp_path, capsys):
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
  argv = ["stylize-video", "--input", inp, "--style", clip_files / "style.png", "--output", out, "--size", 32]
  if case != "no_checkpoint":
    argv += ["--checkpoint", ck]
  assert cli.main([str(a) for a in argv]) == 2
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
  assert not (tmp_path / "out").exists()
