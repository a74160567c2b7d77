"""Stylizing images: the Python API and the `sk-jax stylize` and `sk-jax init` commands."""

from __future__ import annotations

import argparse
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sk_jax import checkpoint, images
from sk_jax.errors import InputError
from sk_jax.models import vgg
from sk_jax.models.generator import ModelConfig, init_params, stylize_images

DEFAULT_SIZE = 512


@functools.partial(jax.jit, static_argnums=(2,))
def _stylize_jit(params, vgg_params, config, content, style, alpha):
  return stylize_images(params, vgg_params, config, content, style, alpha)[0]


def _as_image(x, size, max_pixels) -> np.ndarray:
  if isinstance(x, (str, os.PathLike)):
    x = images.load_image(os.fspath(x), max_pixels)
  x = np.asarray(x, np.float32)
  if x.ndim != 3 or x.shape[-1] != 3:
    raise InputError(f"expected an (H, W, 3) image, got shape {x.shape}")
  return images.resize_short_side(x, size)


def stylize(content, style, params, config: ModelConfig, *, vgg_params=None, alpha: float = 1.0,
            size: int | None = DEFAULT_SIZE, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Stylizes one content image with one style image.

  Args:
    content, style: paths, or (H, W, 3) float arrays in [0, 1].
    params, config: the generator, e.g. from `sk_jax.checkpoint.load_generator(dir)`.
    vgg_params: encoder weights (default: those named by config.vgg_weights).
    alpha: content-style trade-off in [0, 1] (1: full style).
    size: short side both images are resized to (None or 0: as they are).

  Returns:
    (H, W, 3) float32 in [0, 1] at the (resized) content's size. Compiled once per
    shape and config.
  """
  if vgg_params is None:
    vgg_params = vgg.load_vgg16(config.vgg_weights)
  c = _as_image(content, size, max_pixels)
  s = _as_image(style, size, max_pixels)
  out = _stylize_jit(params, vgg_params, config, c[None], s[None], jnp.float32(alpha))
  return np.asarray(out[0])


def output_name(content_path: str, style_path: str) -> str:
  stem = lambda p: os.path.splitext(os.path.basename(p))[0]
  return f"{stem(content_path)}_stylized_{stem(style_path)}.png"


def _plan_outputs(contents, styles, output: str, single: bool) -> list[tuple[str, str, str]]:
  """(content, style, output path) for every pair; a single pair may name an output file."""
  if single and os.path.splitext(output)[1] and not os.path.isdir(output):
    return [(contents[0], styles[0], output)]
  if os.path.exists(output) and not os.path.isdir(output):
    raise InputError(f"{output}: exists and is not a directory (several outputs go into a directory)")
  return [(c, s, os.path.join(output, output_name(c, s))) for c in contents for s in styles]


def check_generator_args(args) -> None:
  """The --checkpoint and --alpha checks shared by `stylize` and `stylize-video`."""
  if not args.checkpoint:
    raise InputError("--checkpoint is required: train one (python train.py ...), or write a "
                     "random one to try the pipeline with `sk-jax init --output DIR`")
  if not 0.0 <= args.alpha <= 1.0:
    raise InputError(f"--alpha must be in [0, 1], got {args.alpha}")


def run_stylize(args) -> None:
  check_generator_args(args)
  contents, styles = images.list_images(args.content), images.list_images(args.style)
  jobs = _plan_outputs(contents, styles, args.output,
                       single=not os.path.isdir(args.content) and not os.path.isdir(args.style))
  params, config = checkpoint.load_generator(args.checkpoint)
  # On the device once, not copied from the host for every pair.
  params = jax.device_put(params)
  vgg_params = jax.device_put(vgg.load_vgg16(args.vgg or config.vgg_weights))
  # Read every input before writing anything: a bad file stops the run with no output.
  loaded = {p: _as_image(p, args.size, args.max_pixels) for p in dict.fromkeys(contents + styles)}
  for c, s, out in tqdm(jobs, desc="stylize", unit="pair", disable=len(jobs) < 2):
    result = stylize(loaded[c], loaded[s], params, config, vgg_params=vgg_params,
                     alpha=args.alpha, size=None)
    images.save_image(result, out)
    if len(jobs) < 2:
      print(out)


def run_init(args) -> None:
  model = {}
  if args.config:
    from sk_jax.config import load_config
    model = load_config(args.config).model.to_dict()
  config = ModelConfig.from_dict(model, source=args.config or "defaults")
  params = init_params(config, jax.random.key(args.seed))
  print(checkpoint.save_generator(args.output, params, config))


def add_commands(subparsers) -> None:
  p = subparsers.add_parser("stylize", help="stylize images with a generator checkpoint",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--content", required=True, help="content image or directory")
  p.add_argument("--style", required=True, help="style image or directory")
  p.add_argument("--output", required=True, help="output image, or directory for many pairs")
  p.add_argument("--checkpoint", help="generator checkpoint directory")
  p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="short side to resize to; 0 keeps it")
  p.add_argument("--alpha", type=float, default=1.0, help="content-style trade-off, 1 = full style")
  p.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                 help="refuse input images with more pixels than this")
  p.add_argument("--vgg", help="VGG-16 weights (an Orbax dir from port-vgg16); default: the checkpoint's")
  p.set_defaults(func=run_stylize)

  p = subparsers.add_parser("init", help="write a randomly initialised generator checkpoint")
  p.add_argument("--output", required=True, help="checkpoint directory to write")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", help="a config file (configs/*.py) whose `model` group to use")
  p.set_defaults(func=run_init)
