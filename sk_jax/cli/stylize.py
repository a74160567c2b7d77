"""`sk-jax stylize`, `sk-jax stylize-video` and `sk-jax init`."""

from __future__ import annotations

import argparse
import os

import jax
from tqdm import tqdm

from sk_jax import checkpoint, images, video
from sk_jax.config import load_config
from sk_jax.errors import InputError
from sk_jax.models.generator import ModelConfig, init_params
from sk_jax.stylizer import DEFAULT_SIZE, Stylizer


def output_name(content_path: str, style_path: str) -> str:
  stem = lambda p: os.path.splitext(os.path.basename(p.split(":", 1)[-1] if images.is_packaged(p) else p))[0]
  return f"{stem(content_path)}_stylized_{stem(style_path)}.png"


def _plan_outputs(contents, styles, output: str, single: bool) -> list[tuple[str, str, str]]:
  """(content, style, output path) for every pair; a single pair may name an output file."""
  if single and os.path.splitext(output)[1] and not os.path.isdir(output):
    return [(contents[0], styles[0], output)]
  if os.path.exists(output) and not os.path.isdir(output):
    raise InputError(f"{output}: exists and is not a directory (several outputs go into a directory)")
  return [(c, s, os.path.join(output, output_name(c, s))) for c in contents for s in styles]


def _check_generator_args(args) -> None:
  """The --checkpoint and --alpha checks shared by `stylize` and `stylize-video`."""
  if not args.checkpoint:
    raise InputError("--checkpoint is required: train one (python train.py ...), or write a "
                     "random one to try the pipeline with `sk-jax init --output DIR`")
  if not 0.0 <= args.alpha <= 1.0:
    raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")


def run_stylize(args) -> None:
  _check_generator_args(args)
  images.check_size_args(args.size, args.max_pixels)
  contents, styles = images.list_images(args.content), images.list_images(args.style)
  single = (len(contents) == len(styles) == 1 and not os.path.isdir(args.content)
            and not os.path.isdir(args.style))
  jobs = _plan_outputs(contents, styles, args.output, single)
  images.check_outputs([out for _, _, out in jobs], contents + styles)
  stylizer = Stylizer.load(args.checkpoint, args.vgg)
  # Read every input before writing anything: a bad file stops the run with no output.
  loaded = {p: images.prepare(p, args.size, args.max_pixels) for p in dict.fromkeys(contents + styles)}
  for c, s, out in tqdm(jobs, desc="stylize", unit="pair", disable=len(jobs) < 2):
    images.save_image(stylizer.stylize(loaded[c], loaded[s], size=None, alpha=args.alpha), out)
    if len(jobs) < 2:
      print(out)


def run_stylize_video(args) -> None:
  _check_generator_args(args)
  if args.fps is not None and args.fps <= 0:
    raise InputError(f"--fps must be positive, got {args.fps}")
  images.check_size_args(args.size, None)
  video.check_output(args.output)
  # Everything is read and checked before anything is written.
  frames, fps = video.read_frames(args.input, args.size or None, args.max_frames)
  style = images.prepare(args.style, args.size or None)
  stylizer = Stylizer.load(args.checkpoint, args.vgg)
  out, _ = video.stylize_frames(frames, style, stylizer, args.alpha, progress=True)
  written = video.write_frames(out, args.output, args.fps or fps)
  print(args.output if len(written) == 1 else f"{args.output} ({len(written)} frames)")


def run_init(args) -> None:
  model = load_config(args.config).model.to_dict() if args.config else {}
  config = ModelConfig.from_dict(model, source=args.config or "defaults")
  params = init_params(config, jax.random.key(args.seed))
  print(checkpoint.save_generator(args.output, params, config, overwrite=args.overwrite))


def add_commands(subparsers) -> None:
  p = subparsers.add_parser("stylize", help="stylize images with a generator checkpoint",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--content", required=True, help="content image or directory (or skimage:NAME,...)")
  p.add_argument("--style", required=True, help="style image or directory (or skimage:NAME,...)")
  p.add_argument("--output", required=True, help="output image, or directory for many pairs")
  p.add_argument("--checkpoint", help="generator checkpoint directory")
  p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="short side to resize to; 0 keeps it")
  p.add_argument("--alpha", type=float, default=1.0, help="content-style trade-off, 1 = full style")
  p.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                 help="refuse input images with more pixels than this")
  p.add_argument("--vgg", help="VGG-16 weights (an Orbax dir from port-vgg16); default: the checkpoint's")
  p.set_defaults(func=run_stylize)

  p = subparsers.add_parser("stylize-video", help="stylize every frame of a clip with one style",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--input", required=True,
                 help="a directory of frames (natural order) or a video: GIF/WebP/APNG, or "
                      "MP4/MOV/... when PyAV or imageio-ffmpeg is installed")
  p.add_argument("--style", required=True, help="style image")
  p.add_argument("--output", required=True, help="output directory (frame_00000.png, ...) or video file")
  p.add_argument("--checkpoint", help="generator checkpoint directory")
  p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="short side of frames and style; 0 keeps it")
  p.add_argument("--alpha", type=float, default=1.0, help="content-style trade-off, 1 = full style")
  p.add_argument("--fps", type=float, help="output frame rate (default: the input's, else 10)")
  p.add_argument("--max-frames", type=int, help="stylize only the first N frames")
  p.add_argument("--vgg", help="VGG-16 weights (an Orbax dir from port-vgg16); default: the checkpoint's")
  p.set_defaults(func=run_stylize_video)

  p = subparsers.add_parser("init", help="write a randomly initialised generator checkpoint")
  p.add_argument("--output", required=True, help="checkpoint directory to write")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", help="a config file (configs/*.py) whose `model` group to use")
  p.add_argument("--overwrite", action="store_true", help=checkpoint.OVERWRITE_HELP)
  p.set_defaults(func=run_init)
