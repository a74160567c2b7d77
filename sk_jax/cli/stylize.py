"""`sk-jax stylize`, `sk-jax stylize-video` and `sk-jax init`."""

from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np
from tqdm import tqdm

from sk_jax.cli import common
from sk_jax.errors import InputError
from sk_jax.inference import bundled, compile_cache, controls
from sk_jax.inference.stylizer import DEFAULT_ATTENTION_MB, DEFAULT_SIZE, Stylizer
from sk_jax.io import artifacts, files, images, video
from sk_jax.nn.generator import ModelConfig, init_params


def output_name(
  content_path: str, style_path: str | tuple[str, ...], root: str | None = None
) -> str:
  """CONTENT_stylized_STYLE.png; with `root` (the content directory), the content's subdirectory
  under it is kept (a/x.png -> a/x_stylized_s.png), so that a/x.png and b/x.png do not collide."""
  stem = lambda p: os.path.splitext(
    os.path.basename(p.split(":", 1)[-1] if images.is_packaged(p) else p)
  )[0]
  styles = (style_path,) if isinstance(style_path, str) else style_path
  name = f"{stem(content_path)}_stylized_{'+'.join(stem(s) for s in styles)}.png"
  sub = os.path.dirname(os.path.relpath(content_path, root)) if root else ""
  return os.path.join(sub, name) if sub else name


def _plan_outputs(
  contents, styles, output: str, single: bool, root: str | None = None
) -> tuple[list[tuple[str, str, str]], files.Output]:
  """(content, style, output path) for every pair, and the Output to check; a single pair may
  name an output file. A style may be a tuple of styles mixed into one output."""
  if single and os.path.splitext(output)[1] and not os.path.isdir(output):
    return [(contents[0], styles[0], output)], files.image(output)
  if os.path.lexists(output) and not os.path.isdir(output):
    raise InputError(
      f"{output}: exists and is not a directory (several outputs go into a directory)"
    )
  pairs = [(c, s, output_name(c, s, root)) for c in contents for s in styles]
  plan = files.directory(
    output, [n for _, _, n in pairs], [f"{c} with {'+'.join(s)}" for c, s, _ in pairs]
  )
  return [(c, s, os.path.join(output, n)) for c, s, n in pairs], plan


def _style_list(spec: str) -> list[str]:
  """--style: a file, a directory, skimage:NAMES, or a comma-separated list of any of them."""
  if images.is_packaged(spec) or os.path.exists(spec) or "," not in spec:
    return images.list_images(spec)
  return [p for part in spec.split(",") if part.strip() for p in images.list_images(part.strip())]


def _check_generator_args(args) -> list[float]:
  """The --alpha and --style-size checks shared by `stylize` and `stylize-video`; returns the
  alphas (several make a strip)."""
  images.check_size_args(args.style_size, None, param="style_size")
  if not args.attention_memory > 0:
    raise InputError(f"--attention-memory must be positive (MB), got {args.attention_memory}")
  return [float(a) for a in controls.check_alphas(controls.parse_floats(args.alpha, "alpha"))]


def run_stylize(args) -> None:
  alphas = _check_generator_args(args)
  images.check_size_args(args.size, args.max_pixels)
  contents, styles = images.list_images(args.content), _style_list(args.style)
  weights = (
    None
    if args.style_weights is None
    else controls.parse_floats(args.style_weights, "style_weights")
  )
  mixed = weights is not None or args.mask is not None
  controls.check_mix(weights, args.mask)
  if weights is not None:
    controls.style_weights(weights, len(styles))
  groups = [tuple(styles)] if mixed else [(s,) for s in styles]
  single = (
    len(contents) == len(groups) == 1
    and not os.path.isdir(args.content)
    and (mixed or not os.path.isdir(args.style))
  )
  root = args.content if os.path.isdir(args.content) else None
  jobs, plan = _plan_outputs(contents, groups, args.output, single, root)
  inputs = [args.content, args.style, *contents, *styles] + ([args.mask] if args.mask else [])
  files.check_outputs([plan], inputs)
  # Read and check every input before writing anything: a bad file stops the run with no output.
  style_size = args.size if args.style_size is None else args.style_size
  loaded = {p: images.prepare(p, args.size, args.max_pixels) for p in dict.fromkeys(contents)}
  loaded_styles = {p: images.prepare(p, style_size, args.max_pixels) for p in dict.fromkeys(styles)}
  mask = None
  if args.mask is not None:
    mask = images.load_image(args.mask, args.max_pixels)
    for c in contents:
      controls.mask_weights(mask, loaded[c].shape[:2], len(styles), f"--mask {args.mask}")
  stylizer = Stylizer.load(
    args.checkpoint, args.vgg, args.attention_memory, args.compile_cache, not args.no_buckets
  )
  alpha = alphas[0] if len(alphas) == 1 else alphas
  if plan.kind == "dir":
    files.claim_directory(plan.path, plan.names)
  kept = []
  for c, group, out in tqdm(jobs, desc="stylize", unit="pair", disable=len(jobs) < 2):
    image, k = stylizer.stylize(
      loaded[c],
      [loaded_styles[s] for s in group] if mixed else loaded_styles[group[0]],
      size=None,
      alpha=alpha,
      style_weights=weights,
      mask=mask,
      preserve_color=args.preserve_color,
      return_kept=True,
    )
    kept.append(k)
    if image.ndim == 4:  # an alpha strip, left to right
      image = np.concatenate(list(image), axis=1)
    images.save_image(image, out)
    if len(jobs) < 2:
      print(out)
  _report_kept(stylizer.config, kept)


def _report_kept(config, kept) -> None:
  """One line on stderr: whether the CGM selects (docs/method.md, "The gate's equilibrium")."""
  if config.attention == "full":
    return
  what = "per pair, mean" if len(kept) > 1 else "of the style positions"
  span = f" ({min(kept):.3f}-{max(kept):.3f})" if len(kept) > 1 else ""
  print(f"{config.attention} kept fraction {what}: {np.mean(kept):.3f}{span}", file=sys.stderr)


def run_stylize_video(args) -> None:
  alphas = _check_generator_args(args)
  if len(alphas) != 1:
    raise InputError(f"--alpha: stylize-video takes one value, got {len(alphas)}")
  if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
    raise InputError(f"--fps must be a positive number, got {args.fps}")
  if not 0.0 <= args.smooth < 1.0:
    raise InputError(f"--smooth must be in [0, 1), got {args.smooth}")
  if args.max_frames is not None and args.max_frames < 1:
    raise InputError(
      f"--max-frames must be at least 1 (leave it out for every frame), got {args.max_frames}"
    )
  images.check_size_args(args.size, None)
  inputs = [args.input, args.style]
  # The directory itself first (new, empty or ours), then, once the frames are counted, each name.
  files.check_outputs([video.output_plan(args.output, 0)], inputs)
  # Everything is read and checked before anything is written.
  frames, fps = video.read_frames(args.input, args.size or None, args.max_frames)
  files.check_outputs([video.output_plan(args.output, len(frames))], inputs)
  style = images.prepare(
    args.style, (args.size if args.style_size is None else args.style_size) or None
  )
  fps = args.fps or fps
  if not (math.isfinite(fps) and fps > 0):
    raise InputError(f"{args.input}: frame rate {fps} is not a positive number; give --fps")
  stylizer = Stylizer.load(args.checkpoint, args.vgg, args.attention_memory, args.compile_cache)
  out, kept = video.stylize_frames(
    frames, style, stylizer, alphas[0], progress=True, smooth=args.smooth
  )
  written = video.write_frames(out, args.output, fps, inputs)
  print(args.output if len(written) == 1 else f"{args.output} ({len(written)} frames)")
  _report_kept(stylizer.config, list(kept))


def run_init(args) -> None:
  files.check_outputs(
    [files.checkpoint(args.output)], [args.config] if args.config else [], args.overwrite
  )
  # ml_collections only for this command
  from sk_jax.config import load_config

  model = load_config(args.config).model.to_dict() if args.config else {}
  config = ModelConfig.from_dict(model, source=args.config or "defaults")
  params = init_params(config, jax.random.key(args.seed))
  print(artifacts.save_generator(args.output, params, config, overwrite=args.overwrite))


def _add_generator_args(p, size_help: str, alpha_help: str) -> None:
  """The options `stylize` and `stylize-video` share: the generator, sizes, alpha, encoder, memory."""
  p.add_argument(
    "--checkpoint",
    default=bundled.BUNDLED,
    help=f"generator checkpoint directory; 'bundled' is the generator inside the package ({bundled.NAME})",
  )
  p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=size_help)
  p.add_argument(
    "--style-size", type=int, help="the style's short side (default: --size); 0 keeps it"
  )
  p.add_argument("--alpha", default="1", help=alpha_help)
  p.add_argument(
    "--vgg", help="VGG-16 weights (an Orbax dir from port-vgg16); default: the checkpoint's"
  )
  p.add_argument(
    "--attention-memory",
    type=float,
    default=DEFAULT_ATTENTION_MB,
    metavar="MB",
    help="memory the attention may take; above it, it runs in chunks of content positions "
    "(same result, bounded memory: how 4K images fit)",
  )
  p.add_argument(
    "--compile-cache",
    default=compile_cache.DEFAULT,
    metavar="DIR|off",
    help="where compiled programs are kept for later runs; 'default' is $SK_JAX_CACHE_DIR or "
    "$XDG_CACHE_HOME/sk-jax/xla (~/.cache/sk-jax/xla); 'off' compiles every time",
  )


def add_commands(subparsers) -> None:
  p = subparsers.add_parser(
    "stylize",
    help="stylize images (with the bundled generator or a checkpoint)",
    formatter_class=common.HelpFormatter,
  )
  p.add_argument(
    "--content", required=True, help="content image or directory (or skimage:NAME,...)"
  )
  p.add_argument("--style", required=True, help="style image or directory (or skimage:NAME,...)")
  p.add_argument("--output", required=True, help="output image, or directory for many pairs")
  _add_generator_args(
    p,
    "short side to resize to; 0 keeps it",
    "content-style trade-off, 1 = full style; a comma list (0,0.5,1) writes a strip, left to right",
  )
  p.add_argument(
    "--style-weights",
    help="mix the styles of --style (a,b or a dir) with these weights, e.g. 0.7,0.3",
  )
  p.add_argument(
    "--mask",
    help="an image with one flat colour per style (darkest = first style): "
    "each region of the content takes its style",
  )
  p.add_argument(
    "--preserve-color",
    action="store_true",
    help="keep the content's colours (luminance-only transfer in YIQ)",
  )
  p.add_argument(
    "--max-pixels",
    type=int,
    default=images.DEFAULT_MAX_PIXELS,
    help="refuse input images with more pixels than this",
  )
  p.add_argument(
    "--no-buckets",
    action="store_true",
    help="compile for every image size instead of padding images to size buckets "
    "(the same result; buckets compile once for many sizes)",
  )
  p.set_defaults(func=run_stylize)

  p = subparsers.add_parser(
    "stylize-video",
    help="stylize every frame of a clip with one style",
    formatter_class=common.HelpFormatter,
  )
  p.add_argument(
    "--input",
    required=True,
    help="a directory of frames (natural order) or a video: GIF/WebP/APNG, or "
    "MP4/MOV/... when PyAV or imageio-ffmpeg is installed",
  )
  p.add_argument("--style", required=True, help="style image")
  p.add_argument(
    "--output", required=True, help="output directory (frame_00000.png, ...) or video file"
  )
  _add_generator_args(
    p, "short side of frames and style; 0 keeps it", "content-style trade-off, 1 = full style"
  )
  p.add_argument(
    "--smooth",
    type=float,
    default=0.0,
    help="temporal smoothing in [0, 1): each frame's style kernels are averaged as "
    "smooth * previous + (1 - smooth) * its own; 0 is off",
  )
  p.add_argument("--fps", type=float, help="output frame rate (default: the input's, else 10)")
  p.add_argument(
    "--max-frames", type=int, help="stylize only the first N frames (N >= 1; default: all)"
  )
  p.set_defaults(func=run_stylize_video)

  p = subparsers.add_parser("init", help="write a randomly initialised generator checkpoint")
  p.add_argument("--output", required=True, help="checkpoint directory to write")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--config", help="a config file (configs/*.py) whose `model` group to use")
  p.add_argument("--overwrite", action="store_true", help=common.OVERWRITE_HELP)
  p.set_defaults(func=run_init)
